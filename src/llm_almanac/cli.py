"""`almanac`: the command-line entry point.

  almanac slo --ttft-ms 300 [--tpot-ms 100] [--model M --engine E --isl N --osl N] [--best]
                 max requests/s under an SLO, per cell (from results/almanac.duckdb), with the latency,
                 tokens/s and cost at that load; --best: the best engine per model and shape
  almanac plan --qps 400 --ttft-ms 300 --isl 1024 --osl 128 [--model M] [--price h100=2.5]
                 replicas and $/hour, $/month for a target load under an SLO, per configuration
  almanac summary       the executive summary (markdown), written from the data
  almanac show CELL     a cell's status and phases
  almanac query "SQL"   any SQL on the database
  almanac export --format parquet|csv|jsonl --out DIR   every table, for analysis elsewhere
  almanac rerun-failed [--configfile F] [-- SNAKEMAKE ARGS]   rerun exactly the failed cells, keeping
                 their measured phases (on SLURM: -- --workflow-profile profiles/slurm)

  almanac bench  --base-url http://127.0.0.1:8000 --model NAME --tokenizer PATH --isl N --osl N ...
                 the phases of a cell against an already running OpenAI-compatible server
  almanac sim    a simulated streaming server (a test instrument, never an engine)
  almanac cells  the cells of a config, as Snakemake will run them
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
import yaml
from rich.console import Console
from rich.table import Table

from . import loadgen, logs, metrics
from .db import frame
from .cell import (BENCH_DEFAULTS, PHASES, CellFailure, PhaseStore, check_prompt_tokens, run_phases,
                   saturation_notes)
from .files import write_parquet
from .loadgen import ENDPOINTS, TRANSPORTS, LoadGenerator


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
                "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95", "E2E p50", "client CPU"):
        t.add_column(col, justify="right")

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    for r in phases.iter_rows(named=True):
        t.add_row(r["phase"], str(r["step"]), f(r["target_rps"], 3), f(r["rps"], 3),
                  f(r["output_tok_s"]), str(r["n_ok"]), str(r["n_failed"]), str(r["n_token_mismatch"]),
                  f(r["ttft_p50_ms"]), f(r["ttft_p95_ms"]), f(r["tpot_p50_ms"], 2),
                  f(r["tpot_p95_ms"], 2), f(r["e2e_p50_ms"]),
                  ("-" if r["client_cpu_util"] is None else f"{r['client_cpu_util']:.0%}")
                  + (" SATURATED" if r["client_saturated"] else ""))
    (console or Console(width=200)).print(t)


def cmd_bench(a: argparse.Namespace) -> int:
    from .prompts import PromptFactory

    logs.setup(None)
    phases = tuple(p.strip() for p in a.phases.split(",") if p.strip())
    bench = {**BENCH_DEFAULTS, "warmup_requests": a.warmup_requests,
             "sequential_requests": a.sequential_requests, "burst_requests": a.burst_requests,
             "max_concurrency": a.max_concurrency, "sweep_rates": a.sweep_rates,
             "sweep_duration_s": a.sweep_duration, "arrival": a.arrival,
             "request_timeout_s": a.request_timeout, "endpoint": a.endpoint, "seed": a.seed,
             "transport": a.transport}
    prompts = PromptFactory.from_file(_tokenizer_file(a.tokenizer), a.isl, a.seed)
    base = a.base_url.rstrip("/")
    if a.check_tokenize:
        from .engines import get_engine

        check_prompt_tokens(base, get_engine(a.tokenize_style), a.model, prompts.make(10**9), a.isl)
    extras = {"ignore_eos": True}
    if a.min_tokens:
        extras["min_tokens"] = a.osl
    gen = LoadGenerator(base, a.model, a.isl, a.osl, prompts.make, endpoint=a.endpoint,
                        extras=extras, request_timeout_s=a.request_timeout, transport=a.transport)
    notes: list[str] = []
    store = PhaseStore()
    try:
        requests, _ = loadgen.run(run_phases(gen, bench, notes, phases, store=store))
    except (CellFailure, ValueError) as exc:
        print(f"almanac bench: {exc}", file=sys.stderr)
        return 2
    requests = requests.with_columns(pl.lit(a.label).alias("cell_id"), pl.lit(0, pl.Int32).alias("repeat"))
    summary = metrics.summarize(requests, store.client_frame(a.label))
    notes += saturation_notes(summary)
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


DB_DEFAULT = "results/almanac.duckdb"


def _connect(path: str):
    import duckdb

    if not Path(path).exists():
        raise SystemExit(f"almanac: no database at {path}; run `snakemake --cores N` first (or pass --db)")
    return duckdb.connect(path, read_only=True)


def _print_frame(df: pl.DataFrame, title: str | None = None, digits: int = 3) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, justify="right" if df[c].dtype.is_numeric() else "left")
    for row in df.iter_rows():
        t.add_row(*["-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=max(120, Console().width)).print(t)


def _emit(rows: list[dict], fmt: str, table: list[tuple[str, str]], title: str) -> None:
    """Rows as JSON (every field, full precision), CSV (the same) or a table of `table`
    (header, key) whose values are already text."""
    if fmt == "json":
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    elif fmt == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [h for h, _ in table])
        w.writeheader()
        w.writerows(rows)
    else:
        t = Table(title=title)
        for header, _ in table:
            t.add_column(header)
        for r in rows:
            t.add_row(*[str(r.get(k, "")) for _, k in table])
        Console(width=max(160, Console().width)).print(t)


def _slo_args(a: argparse.Namespace):
    from .answers import SLO
    from .cost import parse_overrides

    if a.ttft_ms is None and a.tpot_ms is None:
        raise SystemExit(f"almanac {a.cmd}: give --ttft-ms and/or --tpot-ms")
    try:
        return SLO.from_limits(a.ttft_ms, a.tpot_ms, a.percentile), parse_overrides(a.price)
    except ValueError as exc:
        raise SystemExit(f"almanac {a.cmd}: {exc}") from None


def _f(v, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def cmd_slo(a: argparse.Namespace) -> int:
    from . import answers, best
    from .summary import ci_range, fmt_usd

    slo, prices = _slo_args(a)
    con = _connect(a.db)
    where = {c: getattr(a, c) for c in ("model", "engine", "quantization", "isl", "osl")}
    rows = answers.compute(con, [slo], prices, where).to_dicts()
    con.close()
    if a.best:
        out = best.table(rows)
        if a.format != "table":
            if a.format == "csv":  # one line per group: the two configurations' key numbers
                out = [{"model": o["model"], "isl": o["isl"], "osl": o["osl"], "hardware_kind": o["hardware_kind"],
                        **{f"{w}_{k}": (o[w] or {}).get(k) for w in ("best", "runner_up")
                           for k in ("cell_id", "max_rps", "basis", "ci_low_rps", "ci_high_rps")},
                        "overlap": o["overlap"], "verdict": o["verdict"]} for o in out]
            _emit(out, a.format, [], "")
            return 0
        shown = []
        for o in out:
            b, r = o["best"] or {}, o["runner_up"] or {}
            shown.append({"model": o["model"], "shape": f"{o['isl']}/{o['osl']}", "hw": o["hardware_kind"],
                          "best": best.label(b) if b else "-", "b_rps": b.get("answer", "-"),
                          "b_ci": ci_range(b) if b else "-", "runner": best.label(r) if r else "-",
                          "r_rps": r.get("answer", "-"), "r_ci": ci_range(r) if r else "-", "verdict": o["verdict"]})
        _emit(shown, "table", [("model", "model"), ("ISL/OSL", "shape"), ("hardware", "hw"), ("best", "best"),
                               ("max req/s", "b_rps"), ("95% CI", "b_ci"), ("runner-up", "runner"),
                               ("max req/s", "r_rps"), ("95% CI", "r_ci"), ("verdict", "verdict")],
              f"any engine: the best under {slo.text()}")
        return 0
    if a.format != "table":
        _emit(rows, a.format, [], "")
        return 0
    for r in rows:
        r["shape"] = f"{r['isl']}/{r['osl']}"
        r["ci"] = ci_range(r) if r["max_rps"] is not None else "-"
        r["ttft"], r["tpot"] = _f(r["ttft_p95_ms"], 1), _f(r["tpot_p95_ms"])
        r["tok"] = _f(r["output_tok_s"], 1)
        r["usd"] = ("≤ " if r["lower_bound"] and r["usd_per_1m_output_tokens"] else "") + fmt_usd(r["usd_per_1m_output_tokens"])
    _emit(rows, "table", [("model", "model"), ("engine", "engine"), ("version", "engine_version"),
                          ("quant", "quantization"), ("ISL/OSL", "shape"), ("hardware", "hardware_kind"),
                          ("max req/s", "answer"), ("95% CI", "ci"), ("basis", "basis"),
                          ("TTFT p95 ms @", "ttft"), ("TPOT p95 ms @", "tpot"), ("out tok/s @", "tok"),
                          ("$/1M out tok", "usd")],
          f"max requests/s with {slo.text()} (latency and cost at that load)")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from . import answers
    from .plan import PLAN_COLUMNS, plan
    from .summary import fmt_usd

    slo, prices = _slo_args(a)
    con = _connect(a.db)
    rows = answers.compute(con, [slo], prices).to_dicts()
    con.close()
    try:
        p = plan(rows, a.qps, slo, a.isl, a.osl, a.model)
    except ValueError as exc:
        raise SystemExit(f"almanac plan: {exc}") from None
    if not p.rows:
        print(f"almanac plan: {p.message}", file=sys.stderr)
        return 1
    if a.format != "table":
        _emit([{k: r[k] for k in PLAN_COLUMNS} for r in p.rows], a.format, [], "")
    else:
        shown = []
        for r in p.rows:
            le = "≤ " if r["upper_bound"] else ""
            shown.append({**r, "reps": f"{le}{r['replicas']}",
                          "cons": "-" if r["replicas_conservative"] is None else f"{le}{r['replicas_conservative']}",
                          "gpus_t": "-" if not r["gpus"] else f"{le}{r['gpus']}",
                          "usd_h": ("" if r["usd_per_hour"] is None else le) + fmt_usd(r["usd_per_hour"]),
                          "usd_m": ("" if r["usd_per_month"] is None else le) + fmt_usd(r["usd_per_month"]),
                          "usd_mc": ("" if r["usd_per_month_conservative"] is None else le)
                          + fmt_usd(r["usd_per_month_conservative"])})
        _emit(shown, "table", [("model", "model"), ("engine", "engine"), ("version", "engine_version"),
                               ("quant", "quantization"), ("hardware", "hardware_kind"),
                               ("max req/s", "answer"), ("replicas", "reps"), ("conservative", "cons"),
                               ("GPUs", "gpus_t"), ("$/hour", "usd_h"), ("$/month", "usd_m"),
                               ("$/month conservative", "usd_mc"), ("price", "price")],
              f"{a.qps:g} req/s of ISL {a.isl} / OSL {a.osl} with {slo.text()}")
    if p.message:
        print(f"note: {p.message}", file=sys.stderr)
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    from . import answers, summary
    from .cost import parse_overrides

    try:
        prices = parse_overrides(a.price)
    except ValueError as exc:
        raise SystemExit(f"almanac summary: {exc}") from None
    con = _connect(a.db)
    slos = answers.load_slos(con)
    rows = answers.compute(con, slos, prices).to_dicts()
    cells = answers.load_cells(con)
    con.close()
    failed = cells.filter(pl.col("status") != "ok").to_dicts()
    text = summary.to_markdown(summary.blocks(rows, slos, len(cells), len(failed), failed))
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    else:
        print(text, end="")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    con = _connect(a.db)
    cell = frame(con, "SELECT * FROM cells WHERE cell_id = ?", [a.cell])
    if cell.is_empty():
        ids = [r[0] for r in con.execute("SELECT cell_id FROM cells ORDER BY 1").fetchall()]
        raise SystemExit(f"almanac show: no cell {a.cell!r}; cells: {', '.join(ids)}")
    c = cell.row(0, named=True)
    Console().print(f"[bold]{c['cell_id']}[/]  status={c['status']}  engine {c['engine']} {c['engine_version']}"
                    f"  hardware: {c['hardware']}  startup {c['startup_s']} s")
    if c["error"]:
        Console().print(f"[red]error:[/] {c['error']}")
    Console().print(f"server: {c['server_command']}\nreproduce: {c['reproduce']}")
    ph = frame(con, "SELECT * FROM phases WHERE cell_id = ? ORDER BY rps", [a.cell])
    print_phases(ph)
    slo = frame(con, "SELECT slo, max_rps, ci_low_rps, ci_high_rps, basis FROM slo WHERE cell_id = ?", [a.cell])
    if not slo.is_empty():
        _print_frame(slo, "SLOs")
    con.close()
    return 0


def cmd_query(a: argparse.Namespace) -> int:
    import duckdb

    con = _connect(a.db)
    try:
        df = frame(con, a.sql)
    except duckdb.Error as exc:
        raise SystemExit(f"almanac query: {exc}") from None
    _print_frame(df, digits=a.digits)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    con = _connect(a.db)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
        df = frame(con, f'SELECT * FROM "{table}"')
        path = out / f"{table}.{a.format}"
        if a.format == "parquet":
            write_parquet(path, df)
        elif a.format == "csv":
            # CSV has no list type: ITL gap lists become JSON arrays in one text column.
            lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
            df.with_columns(pl.col(c).map_elements(lambda v: json.dumps(list(v)), return_dtype=pl.String)
                            for c in lists).write_csv(path)
        else:
            df.write_ndjson(path)
        print(f"{path}: {len(df)} rows")
    con.close()
    return 0


def failed_cells(workdir: Path) -> list[str]:
    out = []
    for f in sorted((workdir / "results" / "cells").glob("*/cell.json")):
        try:
            if json.loads(f.read_text()).get("status") == "failed":
                out.append(f.parent.name)
        except (OSError, ValueError):
            out.append(f.parent.name)  # an unreadable cell file is as good as failed
    return out


def cmd_rerun_failed(a: argparse.Namespace) -> int:
    import shlex
    import subprocess

    workdir = Path(a.directory)
    failed = failed_cells(workdir)
    if not failed:
        print("no failed cells under", workdir / "results" / "cells")
        return 0
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(a.cores), "--directory", str(workdir)]
    if a.snakefile:
        cmd += ["-s", a.snakefile]
    for cf in a.configfile or []:
        cmd += ["--configfile", cf]
    extra = a.snakemake_args[1:] if a.snakemake_args[:1] == ["--"] else a.snakemake_args  # argparse keeps the --
    cmd += ["--forcerun", *[f"results/cells/{c}/cell.json" for c in failed], *extra]
    print(f"rerunning {len(failed)} failed cell(s): {', '.join(failed)}")
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.call(cmd)


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
                   help="check prompt length with the server's /tokenize")
    b.add_argument("--tokenize-style", choices=["vllm", "llamacpp"], default="vllm",
                   help="request/response shape of that /tokenize")
    b.add_argument("--transport", choices=list(TRANSPORTS), default="fast",
                   help="HTTP client: fast (asyncio + llhttp, default) or httpx")
    b.add_argument("--label", default="bench", help="cell_id written in the output rows")
    b.add_argument("--out", required=True, help="directory for requests.parquet and phases.parquet")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("sim", help="run the simulated server (a test instrument)", add_help=False)
    s.add_argument("sim_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sim)

    sl = sub.add_parser("slo", help="max requests/s per cell under a latency SLO")
    sl.add_argument("--ttft-ms", type=float)
    sl.add_argument("--tpot-ms", type=float)
    sl.add_argument("--percentile", default="p95", choices=["p50", "p90", "p95", "p99", "mean"])
    sl.add_argument("--bootstrap", type=int, default=200, help=argparse.SUPPRESS)  # ignored since intervals stopped resampling
    for col, typ in (("model", str), ("engine", str), ("quantization", str), ("isl", int), ("osl", int)):
        sl.add_argument(f"--{col}", type=typ)
    sl.add_argument("--best", action="store_true",
                    help="per model x shape x hardware: the best engine+quantization, its runner-up, and "
                         "whether their 95%% intervals overlap")
    sl.add_argument("--price", action="append", metavar="KIND=USD", help="$/hour per GPU (per machine for cpu)")
    sl.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sl.add_argument("--db", default=DB_DEFAULT)
    sl.set_defaults(func=cmd_slo)

    pl_ = sub.add_parser("plan", help="replicas and cost for a target load under an SLO")
    pl_.add_argument("--qps", type=float, required=True, help="target requests per second")
    pl_.add_argument("--ttft-ms", type=float)
    pl_.add_argument("--tpot-ms", type=float)
    pl_.add_argument("--percentile", default="p95", choices=["p50", "p90", "p95", "p99", "mean"])
    pl_.add_argument("--isl", type=int, required=True)
    pl_.add_argument("--osl", type=int, required=True)
    pl_.add_argument("--model")
    pl_.add_argument("--price", action="append", metavar="KIND=USD", help="$/hour per GPU (per machine for cpu)")
    pl_.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pl_.add_argument("--db", default=DB_DEFAULT)
    pl_.set_defaults(func=cmd_plan)

    su = sub.add_parser("summary", help="the executive summary, in markdown, written from the data")
    su.add_argument("--price", action="append", metavar="KIND=USD", help="$/hour per GPU (per machine for cpu)")
    su.add_argument("--out", help="write it to this file instead of printing it")
    su.add_argument("--db", default=DB_DEFAULT)
    su.set_defaults(func=cmd_summary)

    sh = sub.add_parser("show", help="a cell's status, phases and SLOs")
    sh.add_argument("cell")
    sh.add_argument("--db", default=DB_DEFAULT)
    sh.set_defaults(func=cmd_show)

    q = sub.add_parser("query", help="run SQL on the database")
    q.add_argument("sql")
    q.add_argument("--digits", type=int, default=3)
    q.add_argument("--db", default=DB_DEFAULT)
    q.set_defaults(func=cmd_query)

    ex = sub.add_parser("export", help="write every table as parquet, csv or jsonl")
    ex.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet")
    ex.add_argument("--out", default="results/export")
    ex.add_argument("--db", default=DB_DEFAULT)
    ex.set_defaults(func=cmd_export)

    rf = sub.add_parser("rerun-failed", help="rerun exactly the failed cells (then the database and report)")
    rf.add_argument("--cores", default="all")
    rf.add_argument("--configfile", action="append", help="the config the grid was run with (repeatable)")
    rf.add_argument("--directory", default=".", help="the workflow's working directory")
    rf.add_argument("--snakefile", "-s", help="Snakefile (default: the one in --directory)")
    rf.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed on to snakemake (after --)")
    rf.set_defaults(func=cmd_rerun_failed)

    c = sub.add_parser("cells", help="list the cells a config expands to")
    c.add_argument("--configfile", default="config/config.yaml")
    c.set_defaults(func=cmd_cells)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
