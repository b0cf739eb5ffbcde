"""`almanac`: the command-line entry point.

  almanac bench  --base-url http://127.0.0.1:8000 --model NAME --tokenizer PATH --isl N --osl N ...
                 the phases of a cell against an already running OpenAI-compatible server
  almanac sim    a simulated streaming server (a test instrument, never an engine)
  almanac cells  the cells of a config, as Snakemake will run them
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import polars as pl
import yaml
from rich.console import Console
from rich.table import Table

from . import logs, metrics
from .cell import BENCH_DEFAULTS, PHASES, CellFailure, check_prompt_tokens, run_phases
from .io import write_parquet
from .loadgen import ENDPOINTS, LoadGenerator


def _tokenizer_file(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise SystemExit(f"almanac bench: --tokenizer {path}: no tokenizer.json there")
    return p


def print_phases(phases: pl.DataFrame, console: Console | None = None) -> None:
    t = Table(title="phases")
    for col in ("phase", "step", "target rps", "rps", "out tok/s", "ok", "failed", "mismatch",
                "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95", "E2E p50"):
        t.add_column(col, justify="right")

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    for r in phases.iter_rows(named=True):
        t.add_row(r["phase"], str(r["step"]), f(r["target_rps"], 3), f(r["rps"], 3),
                  f(r["output_tok_s"]), str(r["n_ok"]), str(r["n_failed"]), str(r["n_token_mismatch"]),
                  f(r["ttft_p50_ms"]), f(r["ttft_p95_ms"]), f(r["tpot_p50_ms"], 2),
                  f(r["tpot_p95_ms"], 2), f(r["e2e_p50_ms"]))
    (console or Console()).print(t)


def cmd_bench(a: argparse.Namespace) -> int:
    from .prompts import PromptFactory

    logs.setup(None)
    phases = tuple(p.strip() for p in a.phases.split(",") if p.strip())
    bench = {**BENCH_DEFAULTS, "warmup_requests": a.warmup_requests,
             "sequential_requests": a.sequential_requests, "burst_requests": a.burst_requests,
             "max_concurrency": a.max_concurrency, "sweep_rates": a.sweep_rates,
             "sweep_duration_s": a.sweep_duration, "arrival": a.arrival,
             "request_timeout_s": a.request_timeout, "endpoint": a.endpoint, "seed": a.seed}
    prompts = PromptFactory.from_file(_tokenizer_file(a.tokenizer), a.isl, a.seed)
    base = a.base_url.rstrip("/")
    if a.check_tokenize:
        check_prompt_tokens(base, "/tokenize", a.model, prompts.make(10**9), a.isl)
    extras = {"ignore_eos": True}
    if a.min_tokens:
        extras["min_tokens"] = a.osl
    gen = LoadGenerator(base, a.model, a.isl, a.osl, prompts.make, endpoint=a.endpoint,
                        extras=extras, request_timeout_s=a.request_timeout)
    notes: list[str] = []
    try:
        requests = asyncio.run(run_phases(gen, bench, notes, phases))
    except (CellFailure, ValueError) as exc:
        print(f"almanac bench: {exc}", file=sys.stderr)
        return 2
    requests = requests.with_columns(pl.lit(a.label).alias("cell_id"), pl.lit(0, pl.Int32).alias("repeat"))
    summary = metrics.summarize(requests)
    out = Path(a.out)
    write_parquet(out / "requests.parquet", requests.select(list(metrics.REQUEST_SCHEMA)))
    write_parquet(out / "phases.parquet", summary)
    print_phases(summary)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {out / 'requests.parquet'} and {out / 'phases.parquet'}")
    return 0


def cmd_sim(a: argparse.Namespace) -> int:
    from . import sim

    sim.main(a.sim_args)
    return 0


def cmd_cells(a: argparse.Namespace) -> int:
    from .config import load_cells
    from .grid import ConfigError

    try:
        cells = load_cells(yaml.safe_load(Path(a.configfile).read_text()))
    except ConfigError as exc:
        print(f"invalid config {a.configfile}: {exc}", file=sys.stderr)
        return 2
    for c in cells:
        print(c.cell_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="almanac", description="LLM engine benchmarks, the Almanac way.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="run the phases of a cell against a running server")
    b.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    b.add_argument("--model", required=True, help="model name the server serves")
    b.add_argument("--tokenizer", required=True, help="tokenizer.json (or its directory)")
    b.add_argument("--isl", type=int, required=True)
    b.add_argument("--osl", type=int, required=True)
    b.add_argument("--phases", default=",".join(PHASES))
    b.add_argument("--warmup-requests", type=int, default=BENCH_DEFAULTS["warmup_requests"])
    b.add_argument("--sequential-requests", type=int, default=BENCH_DEFAULTS["sequential_requests"])
    b.add_argument("--burst-requests", type=int, default=BENCH_DEFAULTS["burst_requests"])
    b.add_argument("--max-concurrency", type=int, default=0, help="0 = unlimited")
    b.add_argument("--sweep-rates", type=int, default=BENCH_DEFAULTS["sweep_rates"])
    b.add_argument("--sweep-duration", type=float, default=BENCH_DEFAULTS["sweep_duration_s"])
    b.add_argument("--arrival", choices=["constant", "poisson"], default="constant")
    b.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="completions")
    b.add_argument("--request-timeout", type=float, default=BENCH_DEFAULTS["request_timeout_s"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--min-tokens", action="store_true", help="also send min_tokens=OSL (vLLM)")
    b.add_argument("--check-tokenize", action="store_true",
                   help="check prompt length with the server's /tokenize (vLLM, llama.cpp)")
    b.add_argument("--label", default="bench", help="cell_id written in the output rows")
    b.add_argument("--out", required=True, help="directory for requests.parquet and phases.parquet")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("sim", help="run the simulated server (a test instrument)", add_help=False)
    s.add_argument("sim_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sim)

    c = sub.add_parser("cells", help="list the cells a config expands to")
    c.add_argument("--configfile", default="config/config.yaml")
    c.set_defaults(func=cmd_cells)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
