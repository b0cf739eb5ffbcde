"""`almanac`: the command-line entry point.

  almanac slo --ttft-ms 300 [--tpot-ms 100] [--model M --engine E --isl N --osl N]
                 max requests/s under an SLO, per cell (from results/almanac.duckdb)
  almanac show CELL     a cell's status and phases
  almanac query "SQL"   any SQL on the database
  almanac export --format parquet|csv|jsonl --out DIR   every table, for analysis elsewhere
  almanac rerun-failed [--configfile F] [-- SNAKEMAKE ARGS]   rerun exactly the failed cells, keeping
                 their measured phases (on SLURM: -- --workflow-profile profiles/slurm)

  almanac bench  --base-url http://127.0.0.1:8000 --model NAME --tokenizer PATH --isl N --osl N ...
                 the phases of a cell against an already running OpenAI-compatible server
  almanac sim [--port N --ttft-ms X ...]   a simulated streaming server (a test instrument,
                 never an engine); `almanac sim --help` lists its options
  almanac cells  the cells of a config, as Snakemake will run them
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from . import loadgen, logs, phases
from .config import defaults
from .db import DB_PATH, frame
from .files import write_parquet
from .loadgen import ARRIVALS, ENDPOINTS, TRANSPORTS, LoadGenerator
from .phases import PHASES, CellFailure, Plan

BENCH_DEFAULTS = defaults("bench")


def _tokenizer_file(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise SystemExit(f"almanac bench: --tokenizer {path}: no tokenizer.json there")
    return p


def print_phases(phases: pl.DataFrame, console: Console | None = None) -> None:
    t = Table(title="phases", caption="rps counts successful requests only: read it beside failed %, "
                                      "the share of the phase's requests that failed")
    for col in ("phase", "step", "target rps", "rps (ok only)", "failed %", "out tok/s", "ok", "failed", "mismatch",
                "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95", "E2E p50", "client CPU"):
        t.add_column(col, justify="right")

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    for r in phases.iter_rows(named=True):
        fail = r.get("fail_rate")
        t.add_row(r["phase"], str(r["step"]), f(r["target_rps"], 3), f(r["rps"], 3),
                  "-" if fail is None else f"{fail:.0%}",
                  f(r["output_tok_s"]), str(r["n_ok"]), str(r["n_failed"]), str(r["n_token_mismatch"]),
                  f(r["ttft_p50_ms"]), f(r["ttft_p95_ms"]), f(r["tpot_p50_ms"], 2),
                  f(r["tpot_p95_ms"], 2), f(r["e2e_p50_ms"]),
                  ("-" if r["client_cpu_util"] is None else f"{r['client_cpu_util']:.0%}")
                  + (" SATURATED" if r["client_saturated"] else ""))
    (console or Console(width=200)).print(t)


#: `almanac bench` options that are bench settings of the config (checked against its schema).
BENCH_OPTIONS = {
    "warmup_requests": "--warmup-requests", "sequential_requests": "--sequential-requests",
    "burst_requests": "--burst-requests", "max_concurrency": "--max-concurrency",
    "sweep_rates": "--sweep-rates", "sweep_duration_s": "--sweep-duration", "arrival": "--arrival",
    "request_timeout_s": "--request-timeout", "endpoint": "--endpoint", "seed": "--seed",
    "transport": "--transport", "max_response_bytes": "--max-response-bytes",
}


def _bench_settings(a: argparse.Namespace) -> dict:
    """The bench settings of the options, every one checked before anything is sent."""
    from .config import bench_problems

    bench = {**BENCH_DEFAULTS, **{k: getattr(a, flag[2:].replace("-", "_")) for k, flag in BENCH_OPTIONS.items()}}
    for key, problem in bench_problems(bench):
        raise SystemExit(f"almanac bench: {BENCH_OPTIONS.get(key, key)} {bench.get(key)}: {problem}")
    if a.isl < 4:
        raise SystemExit(f"almanac bench: --isl {a.isl}: must be at least 4 (a prompt unique per request)")
    if a.osl < 1:
        raise SystemExit(f"almanac bench: --osl {a.osl}: must be at least 1")
    return bench


def _check_base_url(url: str, transport: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SystemExit(f"almanac bench: --base-url {url}: not an http(s) URL such as http://127.0.0.1:8000")
    if u.scheme == "https" and transport == "fast":
        raise SystemExit(f"almanac bench: --base-url {url}: the fast transport speaks plain http; "
                         "add --transport httpx for https")
    try:
        u.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise SystemExit(f"almanac bench: --base-url {url}: {exc}") from None
    return url.rstrip("/")


def _out_dir(out: Path) -> None:
    """--out must be a folder we can write in, known before the first request is sent."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise SystemExit(f"almanac bench: --out {out} is a file, not a folder; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".almanac-write-check-"):
            pass
    except OSError as exc:
        raise SystemExit(f"almanac bench: --out {out}: cannot write there ({exc.strerror or exc})") from None


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old} -> {new}"]


def _checkpoint(out: Path, settings: dict, force: bool) -> phases.Checkpoint:
    """The folder's checkpoint of measured phases: resumed when its settings are these, refused
    when they are not (unless --force, which discards it)."""
    fingerprint = json.dumps(settings, sort_keys=True)
    partial = out / "partial"
    recorded = partial / "fingerprint"
    if force:
        phases.Checkpoint(partial, fingerprint).clear()
        for name in ("requests.parquet", "phases.parquet"):
            (out / name).unlink(missing_ok=True)
    elif recorded.exists() and recorded.read_text() != fingerprint:
        try:
            diff = _differences(json.loads(recorded.read_text()), settings)
        except ValueError:
            diff = []
        raise SystemExit(
            f"almanac bench: {out} holds phases measured with other settings"
            + (f" ({'; '.join(diff[:6])})" if diff else "")
            + "; use another --out, or add --force to discard them and measure again")
    return phases.Checkpoint(partial, fingerprint)


def _write_bench(out: Path, store: phases.PhaseStore, label: str) -> tuple[pl.DataFrame, list[str]]:
    requests, summary, notes = phases.results(store, label)
    write_parquet(out / "requests.parquet", requests)
    write_parquet(out / "phases.parquet", summary)
    return summary, notes


def cmd_bench(a: argparse.Namespace) -> int:
    import hashlib

    from tokenizers import Tokenizer

    from .cell import check_prompt_tokens
    from .config import GUARD_RAILS
    from .engines import get_engine
    from .prompts import PromptError, PromptFactory
    from .server import signals_raise

    # every argument is checked before the first request: nothing measured can be lost to a typo
    bench = _bench_settings(a)
    plan = Plan(bench, tuple(p.strip() for p in a.phases.split(",") if p.strip()))
    try:
        plan.validate()
    except ValueError as exc:
        raise SystemExit(f"almanac bench: --phases {a.phases}: {exc}") from None
    base = _check_base_url(a.base_url, a.transport)
    tok_file = _tokenizer_file(a.tokenizer)
    try:
        prompts = PromptFactory(Tokenizer.from_file(str(tok_file)), a.isl, a.seed)
    except (PromptError, Exception) as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise SystemExit(f"almanac bench: --tokenizer {a.tokenizer}: {exc}") from None
    out = Path(a.out)
    _out_dir(out)
    extras: dict[str, object] = {"ignore_eos": True}
    if a.min_tokens:
        extras["min_tokens"] = a.osl
    settings = {"base_url": base, "model": a.model, "isl": a.isl, "osl": a.osl, "label": a.label,
                "extras": extras, "tokenizer_sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
                "bench": {k: v for k, v in bench.items() if k not in GUARD_RAILS}}
    store = _checkpoint(out, settings, a.force)
    logs.setup(None)
    if store.units:
        print(f"almanac bench: resuming in {out}: kept from an earlier run: {', '.join(sorted(store.units))} "
              "(--force measures everything again)", file=sys.stderr)
    if a.check_tokenize:
        import httpx

        try:
            check_prompt_tokens(base, get_engine(a.tokenize_style), a.model, prompts.make(10**9), a.isl)
        except (CellFailure, httpx.HTTPError, ValueError) as exc:
            raise SystemExit(f"almanac bench: --check-tokenize: {exc}") from None
    gen = LoadGenerator(base, a.model, a.isl, a.osl, prompts.make, endpoint=a.endpoint,
                        extras=extras, request_timeout_s=a.request_timeout, transport=a.transport,
                        max_response_bytes=bench["max_response_bytes"])
    gen.skip_ids_to(store.max_request_id() + 1)  # prompts stay unique across resumes
    notes: list[str] = []
    stopped: str | None = None
    code = 0
    try:
        with signals_raise():
            loadgen.run(phases.run_phases(gen, plan, store, notes, a.label))
    except KeyboardInterrupt as exc:
        stopped = str(exc) or "received SIGINT"
        code = 143 if "SIGTERM" in stopped else 130
    except CellFailure as exc:
        stopped = f"failed: {exc}"
        code = 1
    summary, more = _write_bench(out, store, a.label)
    if len(summary):
        print_phases(summary)
    for n in notes + more:
        print(f"note: {n}", file=sys.stderr)
    if stopped is not None:
        kept = ", ".join(sorted(store.units)) or "nothing (no phase had finished)"
        print(f"almanac bench: stopped ({stopped}); kept what was measured: {kept}, in {out} "
              f"(partial/ and the parquet files); run the same command again to measure the rest",
              file=sys.stderr)
        return code
    print(f"wrote {out / 'requests.parquet'} and {out / 'phases.parquet'}")
    return 0


def cmd_sim(a: argparse.Namespace) -> int:
    from . import sim

    sim.serve(a)
    return 0


def cmd_cells(a: argparse.Namespace) -> int:
    from .config import load_cells, load_yaml
    from .grid import ConfigError

    try:
        config = load_yaml(a.configfile)
    except ConfigError as exc:
        print(f"almanac cells: {exc}", file=sys.stderr)
        return 2
    try:
        cells = load_cells(config)
    except ConfigError as exc:
        print(f"almanac cells: invalid config {a.configfile}: {exc}", file=sys.stderr)
        return 2
    for c in cells:
        print(c.cell_id)
    return 0


def _connect(path: str, tables: tuple[str, ...] = ("cells", "phases", "requests", "slo")):
    """The database, read-only; one line (never a traceback) when it is missing, not a DuckDB
    file, or not this project's database."""
    import duckdb

    if not Path(path).exists():
        raise SystemExit(f"almanac: no database at {path}; run `snakemake --cores N` first (or pass --db)")
    try:
        con = duckdb.connect(path, read_only=True)
        have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    except duckdb.Error as exc:
        raise SystemExit(f"almanac: {path} is not a readable DuckDB database ({str(exc).splitlines()[0]}); "
                         "rebuild it with `snakemake --cores N`") from None
    missing = [t for t in tables if t not in have]
    if missing:
        con.close()
        raise SystemExit(f"almanac: {path} is not an almanac database (no table {', '.join(missing)})")
    return con


def _print_frame(df: pl.DataFrame, title: str | None = None, digits: int = 3) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, justify="right" if df[c].dtype.is_numeric() else "left")
    for row in df.iter_rows():
        t.add_row(*["-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=max(120, Console().width)).print(t)


def _filters(a: argparse.Namespace) -> tuple[str, list]:
    where, args = [], []
    for col in ("model", "engine", "quantization", "isl", "osl"):
        v = getattr(a, col, None)
        if v is not None:
            where.append(f"c.{col} = ?")
            args.append(v)
    return (" AND " + " AND ".join(where)) if where else "", args


def cmd_slo(a: argparse.Namespace) -> int:
    from .analyse import analyse  # the same definitions as the pipeline

    if a.ttft_ms is None and a.tpot_ms is None:
        raise SystemExit("almanac slo: give --ttft-ms and/or --tpot-ms")
    conds = []
    if a.ttft_ms is not None:
        conds.append({"metric": f"ttft_{a.percentile}_ms", "threshold_ms": a.ttft_ms})
    if a.tpot_ms is not None:
        conds.append({"metric": f"tpot_{a.percentile}_ms", "threshold_ms": a.tpot_ms})
    con = _connect(a.db)
    where, args = _filters(a)
    cells = con.execute(f"SELECT c.cell_id, c.model, c.engine, c.quantization, c.isl, c.osl FROM cells c "
                        f"WHERE c.status = 'ok'{where} ORDER BY c.model, c.isl, c.osl, c.engine", args).fetchall()
    rows = []
    for cid, model, engine, quant, isl, osl in cells:
        req = frame(con, "SELECT * FROM requests WHERE cell_id = ?", [cid])
        ph = frame(con, "SELECT * FROM phases WHERE cell_id = ?", [cid])
        r = analyse(req, ph, [{"name": "slo", "conditions": conds}], bootstrap=a.bootstrap).row(0, named=True)
        rows.append({"model": model, "engine": engine, "quantization": quant, "shape": f"{isl}/{osl}",
                     "max_rps": r["max_rps"], "ci_low": r["ci_low_rps"], "ci_high": r["ci_high_rps"],
                     "basis": r["basis"]})
    con.close()
    title = " and ".join(f"{c['metric']} <= {c['threshold_ms']:g} ms" for c in conds)
    _print_frame(pl.DataFrame(rows, schema={"model": pl.String, "engine": pl.String, "quantization": pl.String,
                                            "shape": pl.String, "max_rps": pl.Float64, "ci_low": pl.Float64,
                                            "ci_high": pl.Float64, "basis": pl.String}),
                 f"max requests/s with {title}")
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

    con = _connect(a.db, tables=())
    try:
        df = frame(con, a.sql)
    except duckdb.Error as exc:
        raise SystemExit(f"almanac query: {exc}") from None
    _print_frame(df, digits=a.digits)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    con = _connect(a.db)
    out = Path(a.out)
    try:
        _export(con, out, a.format)
    except OSError as exc:
        raise SystemExit(f"almanac export: --out {a.out}: cannot write there "
                         f"({exc.strerror or exc}{': ' + exc.filename if exc.filename else ''})") from None
    finally:
        con.close()
    return 0


def _export(con, out: Path, fmt: str) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(20, "a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
        df = frame(con, f'SELECT * FROM "{table}"')
        path = out / f"{table}.{fmt}"
        if fmt == "parquet":
            write_parquet(path, df)
        elif fmt == "csv":
            # CSV has no list type: ITL gap lists become JSON arrays in one text column.
            lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
            df.with_columns(pl.col(c).map_elements(lambda v: json.dumps(list(v)), return_dtype=pl.String)
                            for c in lists).write_csv(path)
        else:
            df.write_ndjson(path)
        print(f"{path}: {len(df)} rows")


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

    from .config import load_yaml
    from .grid import ConfigError

    workdir = Path(a.directory)
    if not workdir.is_dir():
        raise SystemExit(f"almanac rerun-failed: --directory {a.directory}: no such folder")
    for cf in a.configfile or []:  # Snakemake would answer a missing or malformed file with a traceback
        try:
            load_yaml(cf if Path(cf).is_absolute() else Path(cf))
        except ConfigError as exc:
            raise SystemExit(f"almanac rerun-failed: --configfile {exc}") from None
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
    b.add_argument("--max-concurrency", type=int, default=BENCH_DEFAULTS["max_concurrency"], help="0 = unlimited")
    b.add_argument("--sweep-rates", type=int, default=BENCH_DEFAULTS["sweep_rates"])
    b.add_argument("--sweep-duration", type=float, default=BENCH_DEFAULTS["sweep_duration_s"])
    b.add_argument("--arrival", choices=list(ARRIVALS), default=BENCH_DEFAULTS["arrival"])
    b.add_argument("--endpoint", choices=sorted(ENDPOINTS), default=BENCH_DEFAULTS["endpoint"])
    b.add_argument("--request-timeout", type=float, default=BENCH_DEFAULTS["request_timeout_s"])
    b.add_argument("--seed", type=int, default=BENCH_DEFAULTS["seed"])
    b.add_argument("--min-tokens", action="store_true", help="also send min_tokens=OSL (vLLM)")
    b.add_argument("--check-tokenize", action="store_true",
                   help="check prompt length with the server's /tokenize")
    b.add_argument("--tokenize-style", choices=["vllm", "llamacpp"], default="vllm",
                   help="request/response shape of that /tokenize")
    b.add_argument("--transport", choices=list(TRANSPORTS), default=BENCH_DEFAULTS["transport"],
                   help="HTTP client: fast (asyncio + llhttp, default) or httpx")
    b.add_argument("--max-response-bytes", type=int, default=BENCH_DEFAULTS["max_response_bytes"],
                   help="a response larger than this is cut and counted as failed (bounds memory)")
    b.add_argument("--label", default="bench", help="cell_id written in the output rows")
    b.add_argument("--out", required=True,
                   help="folder for requests.parquet and phases.parquet; each phase is kept in its partial/ "
                        "as soon as it is measured, and a rerun with the same --out measures only what is missing")
    b.add_argument("--force", action="store_true",
                   help="discard what --out holds from an earlier run and measure everything again")
    b.set_defaults(func=cmd_bench)

    from . import sim

    s = sub.add_parser("sim", help="run the simulated server (a test instrument)",
                       description=(sim.__doc__ or "").strip().splitlines()[0])
    sim.add_arguments(s)
    s.set_defaults(func=cmd_sim)

    sl = sub.add_parser("slo", help="max requests/s per cell under a latency SLO")
    sl.add_argument("--ttft-ms", type=float)
    sl.add_argument("--tpot-ms", type=float)
    sl.add_argument("--percentile", default="p95", choices=["p50", "p90", "p95", "p99", "mean"])
    sl.add_argument("--bootstrap", type=int, default=defaults("analysis")["bootstrap"])
    for col, typ in (("model", str), ("engine", str), ("quantization", str), ("isl", int), ("osl", int)):
        sl.add_argument(f"--{col}", type=typ)
    sl.add_argument("--db", default=DB_PATH)
    sl.set_defaults(func=cmd_slo)

    sh = sub.add_parser("show", help="a cell's status, phases and SLOs")
    sh.add_argument("cell")
    sh.add_argument("--db", default=DB_PATH)
    sh.set_defaults(func=cmd_show)

    q = sub.add_parser("query", help="run SQL on the database")
    q.add_argument("sql")
    q.add_argument("--digits", type=int, default=3)
    q.add_argument("--db", default=DB_PATH)
    q.set_defaults(func=cmd_query)

    ex = sub.add_parser("export", help="write every table as parquet, csv or jsonl")
    ex.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet")
    ex.add_argument("--out", default="results/export")
    ex.add_argument("--db", default=DB_PATH)
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
    """Run a command; every failure is one line on stderr, never a traceback (set
    ALMANAC_TRACEBACK=1 to see one for an unexpected error)."""
    import os

    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print(f"almanac {a.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - an unexpected error is still one line
        if os.environ.get("ALMANAC_TRACEBACK"):
            raise
        print(f"almanac {a.cmd}: {type(exc).__name__}: {exc} (ALMANAC_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
