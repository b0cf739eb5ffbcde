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

  almanac bench  [--base-url http://127.0.0.1:8000 --isl 1024 --osl 128 --model NAME --tokenizer DIR|HUB_ID --out DIR]
                 the phases of a cell against an already running OpenAI-compatible server (model:
                 the server's only one; tokenizer: the model's; out: a new bench-results/ folder)
  almanac sim [--port N --ttft-ms X ...]   a simulated streaming server (a test instrument,
                 never an engine); `almanac sim --help` lists its options
  almanac cells  the cells of a config, as Snakemake will run them

  almanac merge SRC... --out DB   result sets (DuckDB files, results/ or published folders) into one
  almanac diff BASE NEW [--threshold 0.05] [--format table|json|csv|markdown] [--base-engine A --new-engine B]
                 per cell and SLO what changed, with bootstrap CIs; exit 1 on a regression; with
                 --base-engine/--new-engine: two engine entries (versions, flags), even of one set
  almanac publish DIR [--db DB]   report, tables as Parquet, methodology and a checksummed manifest
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, bench, enginemetrics, logs, reqstore
from .config import choices, defaults
from .db import DB_PATH, frame
from .files import write_parquet
from .tables import PHASE_NAMES

if TYPE_CHECKING:  # the measuring modules load only for `almanac bench`: every other command (and
    # every test that runs one in a process of its own) starts in about half the time
    from . import phases
    from .phases import Plan
    from .prompts import LoadedTokenizer, PromptFactory

BENCH_DEFAULTS = defaults("bench")


def print_phases(phases: pl.DataFrame, console: Console | None = None) -> None:
    t = Table(title="phases", caption="rps counts successful requests only: read it beside failed %, "
                                      "the share of the phase's requests that failed")
    for col in ("phase", "step", "target rps", "rps (ok only)", "failed %", "out tok/s", "ok", "failed", "mismatch",
                "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95", "E2E p50", "client CPU",
                "client-engine TTFT", "client-engine TPOT", "trust"):
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
                  + (" SATURATED" if r["client_saturated"] else ""),
                  f(r.get("client_minus_engine_ttft_ms")), f(r.get("client_minus_engine_tpot_ms"), 2),
                  r.get("trust_grade") or "-")
    (console or Console(width=240)).print(t)
    for r in phases.iter_rows(named=True):  # why a phase is not graded A (trust.py)
        if r.get("trust_reasons"):
            (console or Console(width=240)).print(f"trust {r['trust_grade']} {r['phase']}[{r['step']}] "
                                                  f"(repeat {r['repeat']}): {r['trust_reasons']}")


#: `almanac bench` options that are bench settings of the config (checked against its schema).
BENCH_OPTIONS = {
    "warmup_requests": "--warmup-requests", "sequential_requests": "--sequential-requests",
    "burst_requests": "--burst-requests", "max_concurrency": "--max-concurrency",
    "sweep_rates": "--sweep-rates", "sweep_duration_s": "--sweep-duration", "arrival": "--arrival",
    "request_timeout_s": "--request-timeout", "endpoint": "--endpoint", "seed": "--seed",
    "transport": "--transport", "max_response_bytes": "--max-response-bytes",
    "read_pacing_ms": "--read-pacing-ms",
}


def _bench_settings(a: argparse.Namespace) -> dict:
    """The bench settings of the options, every one checked before anything is sent."""
    from .config import bench_problems

    cfg = {**BENCH_DEFAULTS, **{k: getattr(a, flag[2:].replace("-", "_")) for k, flag in BENCH_OPTIONS.items()}}
    for key, problem in bench_problems(cfg):
        raise SystemExit(f"almanac bench: {BENCH_OPTIONS.get(key, key)} {cfg.get(key)}: {problem}")
    if a.isl < 4:
        raise SystemExit(f"almanac bench: --isl {a.isl}: must be at least 4 (a prompt unique per request)")
    if a.osl < 1:
        raise SystemExit(f"almanac bench: --osl {a.osl}: must be at least 1")
    return cfg


def _bench_inputs(a: argparse.Namespace) -> tuple[dict, Plan, str]:
    """The bench settings, the plan and the server's URL (and an explicit --out), each checked
    before anything is sent: nothing measured can be lost to a typo."""
    from .phases import Plan

    cfg = _bench_settings(a)
    plan = Plan(cfg, tuple(p.strip() for p in a.phases.split(",") if p.strip()))
    try:
        plan.validate()
    except ValueError as exc:
        raise SystemExit(f"almanac bench: --phases {a.phases}: {exc}") from None
    base = bench.check_base_url(a.base_url, a.transport)
    if a.out:
        bench.check_out(Path(a.out))
    return cfg, plan, base


def _bench_tokenizer(spec: str, isl: int, seed: int, defaulted: bool) -> tuple[LoadedTokenizer, PromptFactory]:
    from .prompts import PromptError, PromptFactory, TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(spec)
        return tok, PromptFactory(tok.tokenizer, isl, seed)
    except (TokenizerError, PromptError) as exc:
        what = "--tokenizer (default: --model)" if defaulted else "--tokenizer"
        raise SystemExit(f"almanac bench: {what} {spec}: {exc}") from None


def _bench_target(a: argparse.Namespace, base: str) -> tuple[str, LoadedTokenizer, PromptFactory, Path]:
    """The model, its tokenizer and prompts, and the output folder: the options', or their defaults
    (the server's only model, the model's tokenizer, a new folder under bench-results/)."""
    given = _bench_tokenizer(a.tokenizer, a.isl, a.seed, False) if a.tokenizer else None
    model = a.model
    if not model:
        model = bench.default_model(base)
        print(f"almanac bench: --model {model} (the server's only model)", file=sys.stderr)
    tok, prompts = given or _bench_tokenizer(model, a.isl, a.seed, True)
    out = Path(a.out) if a.out else bench.new_out(model, a.isl, a.osl)
    return model, tok, prompts, out


def cmd_bench(a: argparse.Namespace) -> int:
    from .config import GUARD_RAILS
    from .loadgen import LoadGenerator

    logs.setup(None)
    try:
        cfg, plan, base = _bench_inputs(a)
        model, tok, prompts, out = _bench_target(a, base)
        extras: dict[str, object] = {"ignore_eos": True, **({"min_tokens": a.osl} if a.min_tokens else {})}
        settings = {"base_url": base, "model": model, "isl": a.isl, "osl": a.osl, "label": a.label,
                    "extras": extras, "tokenizer_sha256": tok.sha256,
                    "bench": {k: v for k, v in cfg.items() if k not in GUARD_RAILS}}
        store = bench.checkpoint(out, settings, a.force)
    except bench.BenchError as exc:
        raise SystemExit(f"almanac bench: {exc}") from None
    if store.units:
        print(f"almanac bench: resuming in {out}: kept from an earlier run: {', '.join(sorted(store.units))} "
              "(--force measures everything again)", file=sys.stderr)
    if a.check_tokenize:
        _check_tokenize(a, base, model, prompts)
    gen = LoadGenerator(base, model, a.isl, a.osl, prompts.make, endpoint=a.endpoint,
                        extras=extras, request_timeout_s=a.request_timeout, transport=a.transport,
                        max_response_bytes=cfg["max_response_bytes"], read_pacing_ms=cfg["read_pacing_ms"])
    gen.skip_ids_to(store.max_request_id() + 1)  # prompts stay unique across resumes
    names = enginemetrics.names_for(a.engine_metrics) if a.engine_metrics else None
    scraper = enginemetrics.Scraper(base, names) if names else None
    notes: list[str] = []
    with bench.progress(gen, a.progress):
        stopped, code = bench.run(gen, plan, store, notes, a.label, scraper)
    about = {"model": model, "base_url": base, "tokenizer": tok.source, "isl": a.isl, "osl": a.osl,
             "label": a.label, "endpoint": a.endpoint, "out": str(out), "complete": stopped is None,
             "stopped": stopped, "bench": settings["bench"]}
    rows, doc, more = bench.write_results(out, store, a.label, a.max_concurrency or None, scraper is not None, about)
    return _bench_report(a, out, store, rows, doc, notes + more, stopped, code)


def _check_tokenize(a: argparse.Namespace, base: str, model: str, prompts: PromptFactory) -> None:
    import httpx

    from .cell import check_prompt_tokens
    from .engines import get_engine
    from .phases import CellFailure

    try:
        check_prompt_tokens(base, get_engine(a.tokenize_style), model, prompts.make(10**9), a.isl)
    except (CellFailure, httpx.HTTPError, ValueError) as exc:
        raise SystemExit(f"almanac bench: --check-tokenize: {exc}") from None


def _bench_report(a: argparse.Namespace, out: Path, store: phases.PhaseStore, rows: pl.DataFrame, doc: dict,
                  notes: list[str], stopped: str | None, code: int) -> int:
    """The phases (a table, or summary.json's content with --format json), the notes, and where
    the files are (or, stopped early, what was kept)."""
    if a.format == "json":
        print(json.dumps(doc, indent=1))
    elif len(rows):
        print_phases(rows)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if stopped is not None:
        kept = ", ".join(sorted(store.units)) or "nothing (no phase had finished)"
        print(f"almanac bench: stopped ({stopped}); kept what was measured: {kept}, in {out} "
              f"(partial/, the parquet files and summary.json); run the same command again to measure the rest",
              file=sys.stderr)
        return code
    print(f"wrote {', '.join(bench.FILES)} in {out}", file=sys.stderr if a.format == "json" else sys.stdout)
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
        from .reqstore import connect

        con = connect(path)
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
        # escape: text such as an SLO name "max_rps[ttft_p95<=300ms]" is not rich markup
        t.add_row(*["-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else escape(str(v))
                    for v in row])
    _table_console(120).print(t)


def _table_console(least: int) -> Console:
    """A console for a table: the terminal's width (at least `least`), or, into a pipe or a
    file, as wide as the table needs, so that no value is cut to an ellipsis."""
    return Console(width=max(least, Console().width) if sys.stdout.isatty() else 100_000)


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
        _table_console(160).print(t)


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
                out = [{"model": o["model"], "isl": o["isl"], "osl": o["osl"], "price_key": o["price_key"],
                        **{f"{w}_{k}": (o[w] or {}).get(k) for w in ("best", "runner_up")
                           for k in ("measurement_id", "cell_id", "max_rps", "basis", "ci_low_rps", "ci_high_rps")},
                        "overlap": o["overlap"], "verdict": o["verdict"]} for o in out]
            _emit(out, a.format, [], "")
            return 0
        shown = []
        for o in out:
            b, r = o["best"] or {}, o["runner_up"] or {}
            shown.append({"model": o["model"], "shape": f"{o['isl']}/{o['osl']}", "hw": o["price_key"],
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
                          ("quant", "quantization"), ("ISL/OSL", "shape"), ("hardware", "price_key"),
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
                               ("quant", "quantization"), ("hardware", "price_key"),
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
    # a cell id (every measurement of it: a merged database may hold several) or one measurement id
    cell = frame(con, "SELECT * FROM cells WHERE cell_id = ? OR measurement_id = ? ORDER BY measurement_id",
                 [a.cell, a.cell])
    if cell.is_empty():
        ids = [r[0] for r in con.execute("SELECT DISTINCT cell_id FROM cells ORDER BY 1").fetchall()]
        raise SystemExit(f"almanac show: no cell {a.cell!r}; cells: {', '.join(ids)}")
    for c in cell.iter_rows(named=True):
        Console().print(f"[bold]{c['cell_id']}[/]  status={c['status']}  engine {c['engine']} {c['engine_version']}"
                        f"  hardware: {c['hardware']}  startup {c['startup_s']} s")
        Console().print(f"measurement: {c['measurement_id']}")
        if c["error"]:
            Console().print(f"[red]error:[/] {c['error']}")
        Console().print(f"server: {c['server_command']}\nreproduce: {c['reproduce']}")
        ph = frame(con, "SELECT * FROM phases WHERE measurement_id = ? ORDER BY rps", [c["measurement_id"]])
        print_phases(ph)
        slo = frame(con, "SELECT slo, max_rps, ci_low_rps, ci_high_rps, basis, repeat_cv, trust_grade, trust_reasons "
                         "FROM slo WHERE measurement_id = ?", [c["measurement_id"]])
        if not slo.is_empty():
            _print_frame(slo, "SLOs")
    con.close()
    return 0


def write_frame(df: pl.DataFrame, fmt: str, digits: int = 3, title: str | None = None) -> None:
    """A result on stdout: a table for a person (the default in a terminal), CSV (the default
    into a pipe) or JSON records (lists stay lists)."""
    if fmt == "auto":
        fmt = "table" if sys.stdout.isatty() else "csv"
    if fmt == "table":
        _print_frame(df, title, digits)
    elif fmt == "json":
        sys.stdout.write(json.dumps(df.to_dicts(), default=str, indent=1) + "\n")
    else:
        lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
        sys.stdout.write(df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(";") for c in lists)
                         .write_csv())


def cmd_query(a: argparse.Namespace) -> int:
    import duckdb

    con = _connect(a.db, tables=())
    try:
        df = frame(con, a.sql)
    except duckdb.Error as exc:
        raise SystemExit(f"almanac query: {exc}") from None
    write_frame(df, a.format, a.digits)
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
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_name <> ? "
                                "ORDER BY 1", [reqstore.FILES_TABLE]).fetchall():  # its rows are `requests`
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


def cmd_merge(a: argparse.Namespace) -> int:
    from .merge import RefusedInput, merge

    try:
        counts = merge(a.src, Path(a.out))
    except RefusedInput as exc:
        print(f"almanac merge: refused: {exc}; {a.out} is unchanged", file=sys.stderr)
        return 2
    dup = counts.pop("duplicates")
    print(f"wrote {a.out}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + f"; {dup} measurement(s) found again with the same content, stored once")
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    from .diff import diff, gate
    from .merge import RefusedInput

    if (a.base_engine is None) != (a.new_engine is None):
        raise SystemExit("almanac diff: --base-engine and --new-engine go together (the two entries to compare)")
    engines = (a.base_engine, a.new_engine) if a.base_engine else None
    try:
        result = diff(a.base, a.new, a.threshold, a.bootstrap, a.seed, engines)
    except RefusedInput as exc:
        print(f"almanac diff: refused: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an engine entry that is not there: 2, never mistaken for a regression
        print(f"almanac diff: {exc}", file=sys.stderr)
        return 2
    if a.format == "json":
        print(json.dumps(result.to_dicts(), indent=1))
    elif a.format == "csv":
        print(result.write_csv(), end="")
    else:
        shown = result.drop("base_measurement", "new_measurement").with_columns(
            pl.col(pl.Float64).round(3))
        if a.format == "markdown":
            cols = shown.columns
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            for row in shown.iter_rows():
                print("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
        else:
            _print_frame(shown, digits=3)
    counts = result.group_by("status").len().sort("status").iter_rows()
    print("; ".join(f"{n} {s}" for s, n in counts) + f" (threshold {a.threshold:.0%}, simultaneous 95% CIs)", file=sys.stderr)
    if result.height and result["status"].is_in(["only-in-base", "only-in-new"]).all():
        # a gate that compared nothing must not pass
        print("almanac diff: no cell of NEW matches one of BASE (model, engine, quantization, shape and hardware "
              "kind); nothing was compared", file=sys.stderr)
        return 2
    return gate(result)


def cmd_publish(a: argparse.Namespace) -> int:
    from .publish import publish

    summaries = sorted(Path(a.db).parent.glob("summary.*"))
    try:
        manifest = publish(Path(a.db), Path(a.dir), report=Path(a.report), summaries=summaries)
    except ValueError as exc:
        print(f"almanac publish: {exc}", file=sys.stderr)
        return 2
    print(f"published {a.dir}: schema version {manifest['schema_version']}, "
          + ", ".join(f"{t['rows']} {n}" for n, t in manifest["tables"].items())
          + f"; {len(manifest['files'])} files with checksums in manifest.json")
    return 0


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, or "(required)"; a help text that already says
    its default (one computed at run time, such as the server's model) is left as it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (required)" if action.required else f"{text} (default: %(default)s)"


def _bench_load_arguments(b: argparse.ArgumentParser) -> None:
    """The load `almanac bench` sends: its phases and their settings (the config schema's defaults)."""
    b.add_argument("--phases", default=",".join(PHASE_NAMES), help="comma-separated phases to run")
    b.add_argument("--warmup-requests", type=int, default=BENCH_DEFAULTS["warmup_requests"],
                   help="requests before the first phase, excluded from all metrics")
    b.add_argument("--sequential-requests", type=int, default=BENCH_DEFAULTS["sequential_requests"],
                   help="requests of the sequential phase, one at a time")
    b.add_argument("--burst-requests", type=int, default=BENCH_DEFAULTS["burst_requests"],
                   help="requests of the burst phase, all sent at once")
    b.add_argument("--max-concurrency", type=int, default=BENCH_DEFAULTS["max_concurrency"],
                   help="client-side limit on requests in flight in burst and sweep; 0 = unlimited")
    b.add_argument("--sweep-rates", type=int, default=BENCH_DEFAULTS["sweep_rates"],
                   help="request rates of the sweep, evenly between the sequential and burst rates")
    b.add_argument("--sweep-duration", type=float, default=BENCH_DEFAULTS["sweep_duration_s"],
                   help="seconds of traffic per sweep rate")
    b.add_argument("--arrival", choices=choices("bench", "arrival"), default=BENCH_DEFAULTS["arrival"],
                   help="arrival process of the sweep")
    b.add_argument("--endpoint", choices=choices("bench", "endpoint"), default=BENCH_DEFAULTS["endpoint"],
                   help="completions: /v1/completions; chat: /v1/chat/completions")
    b.add_argument("--request-timeout", type=float, default=BENCH_DEFAULTS["request_timeout_s"],
                   help="seconds for one whole response; a slower one counts as failed")
    b.add_argument("--seed", type=int, default=BENCH_DEFAULTS["seed"], help="seed of prompts and Poisson arrivals")


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    """`almanac bench`: every flag with its help and its default (the schema's)."""
    b = sub.add_parser("bench", help="run the phases of a cell against a running server",
                       formatter_class=HelpWithDefaults,
                       description="The phases of a cell (warm-up, sequential, burst, sweep) against an already "
                                   "running OpenAI-compatible server; writes requests.parquet, phases.parquet "
                                   "and summary.json, and prints the phases.")
    b.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="server root (where `vllm serve` listens unless told otherwise)")
    b.add_argument("--model", help="model name sent in each request (default: the server's only "
                                    "GET /v1/models entry; an error lists them when it serves several)")
    b.add_argument("--tokenizer", help="tokenizer that counts prompt tokens: a tokenizer.json, a folder holding one, "
                                       "or a Hugging Face Hub id (fetched with HF_TOKEN if set; cache only under "
                                       "HF_HUB_OFFLINE=1) (default: the --model value)")
    # vllm bench serve's random dataset defaults, so that the same bare command measures the same shape
    b.add_argument("--isl", type=int, default=1024, help="input sequence length: prompt tokens per request")
    b.add_argument("--osl", type=int, default=128, help="output sequence length: tokens generated per request")
    _bench_load_arguments(b)
    b.add_argument("--min-tokens", action="store_true", help="also send min_tokens=OSL (vLLM)")
    b.add_argument("--check-tokenize", action="store_true",
                   help="check the prompt length with the server's /tokenize before measuring")
    b.add_argument("--tokenize-style", choices=["vllm", "llamacpp"], default="vllm",
                   help="request/response shape of that /tokenize")
    b.add_argument("--transport", choices=choices("bench", "transport"), default=BENCH_DEFAULTS["transport"],
                   help="HTTP client: fast (asyncio + llhttp, plain http) or httpx (also https)")
    b.add_argument("--read-pacing-ms", type=float, default=BENCH_DEFAULTS["read_pacing_ms"],
                   help="fast transport: a connection that reads twice within this many ms stops reading "
                        "for as long, and while the client's reads come closer than this its event loop "
                        "polls at most once per this many ms (the server is not made to wake the client "
                        "per chunk; chunks held are stamped up to this late; a stream's first token is "
                        "never held by its own pace); 0 = read at once")
    b.add_argument("--engine-metrics", choices=list(enginemetrics.ENGINES), default=None,
                   help="scrape this engine's Prometheus metrics around and during each phase "
                        "(writes engine_metrics.parquet; adds the engine columns to phases) (default: off)")
    b.add_argument("--max-response-bytes", type=int, default=BENCH_DEFAULTS["max_response_bytes"],
                   help="a response larger than this is cut and counted as failed (bounds memory)")
    b.add_argument("--label", default="bench", help="cell_id written in the output rows")
    b.add_argument("--out", help="folder for requests.parquet, phases.parquet and summary.json; each phase is kept "
                                 "in its partial/ as soon as it is measured, and a rerun with the same --out "
                                 "measures only what is missing (default: a new folder "
                                 f"{bench.RESULTS_ROOT}/MODEL-ISL-OSL-YYYYmmdd-HHMMSS, printed at the end)")
    b.add_argument("--force", action="store_true",
                   help="discard what --out holds from an earlier run and measure everything again")
    b.add_argument("--format", choices=["table", "json"], default="table",
                   help="what is printed: the phases as a table, or summary.json's content")
    b.add_argument("--progress", choices=list(bench.PROGRESS), default="auto",
                   help="bar: live progress bars on stderr; log: a log line per phase every 5 s; "
                        "auto: bars when stderr is a terminal, log lines otherwise")
    b.set_defaults(func=cmd_bench)


def _answer_parsers(sub: argparse._SubParsersAction) -> None:
    """The answers: `slo`, `plan`, `summary`."""
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
    sl.add_argument("--price", action="append", metavar="PRICE_KEY=USD",
                    help="$/hour per GPU (per machine for cpu); price keys: h100, a100, cpu, ...")
    sl.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sl.add_argument("--db", default=DB_PATH)
    sl.set_defaults(func=cmd_slo)

    pl_ = sub.add_parser("plan", help="replicas and cost for a target load under an SLO")
    pl_.add_argument("--qps", type=float, required=True, help="target requests per second")
    pl_.add_argument("--ttft-ms", type=float)
    pl_.add_argument("--tpot-ms", type=float)
    pl_.add_argument("--percentile", default="p95", choices=["p50", "p90", "p95", "p99", "mean"])
    pl_.add_argument("--isl", type=int, required=True)
    pl_.add_argument("--osl", type=int, required=True)
    pl_.add_argument("--model")
    pl_.add_argument("--price", action="append", metavar="PRICE_KEY=USD",
                    help="$/hour per GPU (per machine for cpu); price keys: h100, a100, cpu, ...")
    pl_.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pl_.add_argument("--db", default=DB_PATH)
    pl_.set_defaults(func=cmd_plan)

    su = sub.add_parser("summary", help="the executive summary, in markdown, written from the data")
    su.add_argument("--price", action="append", metavar="PRICE_KEY=USD",
                    help="$/hour per GPU (per machine for cpu); price keys: h100, a100, cpu, ...")
    su.add_argument("--out", help="write it to this file instead of printing it")
    su.add_argument("--db", default=DB_PATH)
    su.set_defaults(func=cmd_summary)


def _database_parsers(sub: argparse._SubParsersAction) -> None:
    """Reading one database: `show`, `query`, `export`."""
    sh = sub.add_parser("show", help="a cell's status, phases and SLOs (each of its measurements)")
    sh.add_argument("cell", help="a cell id (every measurement of it) or a measurement id")
    sh.add_argument("--db", default=DB_PATH)
    sh.set_defaults(func=cmd_show)

    q = sub.add_parser("query", help="run SQL on the database")
    q.add_argument("sql")
    q.add_argument("--digits", type=int, default=3, help="decimals in the table format (default: %(default)s)")
    q.add_argument("--format", choices=["auto", "table", "csv", "json"], default="auto",
                   help="auto: a table in a terminal, CSV into a pipe (default: %(default)s)")
    q.add_argument("--db", default=DB_PATH)
    q.set_defaults(func=cmd_query)

    ex = sub.add_parser("export", help="write every table as parquet, csv or jsonl")
    ex.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet")
    ex.add_argument("--out", default="results/export")
    ex.add_argument("--db", default=DB_PATH)
    ex.set_defaults(func=cmd_export)


def _result_set_parsers(sub: argparse._SubParsersAction) -> None:
    """Across result sets: `merge`, `diff`, `publish`."""
    mg = sub.add_parser("merge", help="combine result sets (DuckDB files, results/ or published folders)",
                        formatter_class=HelpWithDefaults)
    mg.add_argument("src", nargs="+", help="result sets: an almanac.duckdb, a results/ folder or a published folder")
    mg.add_argument("--out", required=True, help="the merged DuckDB file (replaced only when whole)")
    mg.set_defaults(func=cmd_merge)

    df = sub.add_parser("diff", help="what changed between two result sets; exit 1 on a regression",
                        formatter_class=HelpWithDefaults)
    df.add_argument("base", help="the result set to compare against (a DuckDB file, results/ or published folder)")
    df.add_argument("new", help="the result set that may have regressed (the same kinds)")
    df.add_argument("--threshold", type=float, default=0.05, help="relative change that counts (0.05 = 5%%)")
    df.add_argument("--format", choices=["table", "json", "csv", "markdown"], default="table", help="output format")
    df.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    df.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (the same seed, the same CIs)")
    df.add_argument("--base-engine", help="compare this engine entry of BASE ... (default: each engine with itself)")
    df.add_argument("--new-engine", help="... with this one of NEW, cell by cell (BASE and NEW may be the same set; "
                                         "default: each engine with itself)")
    df.set_defaults(func=cmd_diff)

    pb = sub.add_parser("publish", help="a folder to serve or download: report, Parquet tables, manifest",
                        formatter_class=HelpWithDefaults)
    pb.add_argument("dir", help="the folder to write (new, or one that an earlier publish wrote)")
    pb.add_argument("--db", default=DB_PATH, help="the database to publish")
    pb.add_argument("--report", default="results/report.html", help="copied when it exists")
    pb.set_defaults(func=cmd_publish)


def _workflow_parsers(sub: argparse._SubParsersAction) -> None:
    """The workflow and its instruments: `sim`, `rerun-failed`, `cells`."""
    from . import sim

    s = sub.add_parser("sim", help="run the simulated server (a test instrument)", formatter_class=HelpWithDefaults,
                       description=(sim.__doc__ or "").strip().splitlines()[0])
    sim.add_arguments(s)
    s.set_defaults(func=cmd_sim)

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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="almanac", description="LLM engine benchmarks, the Almanac way.")
    ap.add_argument("--version", action="version", version=f"almanac (llm-almanac) {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (_bench_parser, _answer_parsers, _database_parsers, _result_set_parsers, _workflow_parsers):
        add(sub)
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
