"""The report at Almanac scale: its size, and how long headless Chromium takes to make it interactive.

Builds a synthetic result set the size of config/grids/almanac.yaml (its 468 cells, their real
models, engines, quantizations, shapes and GPU counts; 12 points per cell: sequential, 10 sweep
steps, burst; synthetic latencies), aggregates it with the pipeline's own aggregate, builds the
report, then opens it in Debian's chromium (a fresh profile per run) and reads
`data-interactive-ms`: performance.now() when the explorer's first view is drawn and its
pickers are wired (answers, answer panel, table and the current view's curves drawn, not merely
scheduled), i.e. from navigation start, through parsing the page (plotly.js included), to
interactive; `data-complete-ms` when the cross-shape chart below the fold is drawn too; and, for
scale, the same for a page that holds the report's plotly.js bundle alone. Nothing is committed:
the data go to a temporary directory (or --out).

    .venv/bin/python benchmarks/report_scale.py [--runs 5] [--requests 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm_almanac import metrics, plotlyjs, tables  # noqa: E402
from llm_almanac.aggregate import aggregate  # noqa: E402
from llm_almanac.analyse import analyse  # noqa: E402
from llm_almanac.config import load_cells  # noqa: E402
from llm_almanac.report import build_report  # noqa: E402

SIZE_LIMIT_MB = 10.0
TTI_LIMIT_MS = 2000.0
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def synthetic_cell(root: Path, cell, rng: np.random.Generator, n_points: int, n_req: int) -> Path:
    """One cell's files as bench_cell and analyse_cell write them, with a plausible curve: TTFT
    and TPOT rising faster and faster towards the burst rate."""
    d = root / cell.cell_id
    d.mkdir(parents=True)
    seq = rng.uniform(0.3, 3.0) * 1024 / (cell.isl + 4 * cell.osl) * 8
    burst = seq * rng.uniform(5, 40)
    rates = np.linspace(seq, burst, n_points)
    base_ttft = 20 + cell.isl / rng.uniform(20, 60)
    base_tpot = rng.uniform(4, 25)
    names = [("sequential", 0)] + [("sweep", i) for i in range(n_points - 2)] + [("burst", 0)]
    rows, rid = [], 0
    for (phase, step), r in zip(names, rates):
        load = (r - seq) / (burst - seq)
        ttft, tpot = base_ttft * (1 + 30 * load ** 3), base_tpot * (1 + 3 * load ** 2)
        for t, p in zip(rng.lognormal(np.log(ttft), 0.15, n_req), rng.lognormal(np.log(tpot), 0.08, n_req)):
            rows.append({"cell_id": cell.cell_id, "repeat": 0, "phase": phase, "step": step,
                         "target_rps": float(r) if phase == "sweep" else None, "request_id": rid,
                         "scheduled_s": 0.0, "sent_s": 0.0, "end_s": n_req / float(r), "send_lag_ms": 0.1,
                         "ttft_ms": float(t), "tpot_ms": float(p), "e2e_ms": float(t + p * (cell.osl - 1)),
                         "itl_ms": [float(p)] * 4, "n_token_events": cell.osl, "prompt_tokens": cell.isl,
                         "completion_tokens": cell.osl, "requested_isl": cell.isl, "requested_osl": cell.osl,
                         "token_mismatch": False, "status": "ok", "error": None})
            rid += 1
    req = tables.frame(tables.REQUESTS, rows)
    ph = metrics.summarize(req)
    req.write_parquet(d / "requests.parquet")
    ph.write_parquet(d / "phases.parquet")
    analyse(req, ph).write_parquet(d / "slo.parquet")
    n = max(1, cell.n_gpus)
    (d / "cell.json").write_text(json.dumps({
        "cell_id": cell.cell_id, "model": cell.model, "engine": cell.engine,
        "engine_version": {"vllm": "0.32.0", "sglang": "0.5.23", "tensorrt-llm": "1.2.1"}.get(cell.engine, "1"),
        "quantization": cell.quantization, "isl": cell.isl, "osl": cell.osl, "status": "ok", "error": None,
        "hardware": f"{n}x NVIDIA H100 80GB HBM3 (driver 570.86.15)", "n_gpus": n, "startup_s": 60.0,
        "server_command": f"python -m vllm.entrypoints.openai.api_server --model {cell.model} --port 8000",
        "notes": []}))
    return d


def chromium_ms(page: Path, work: Path, runs: int, need_answers: bool = True) -> list[dict[str, float]]:
    """Per run: `interactive` (the page's performance.now() when ready), `script` (when the
    explorer's script started: the page and plotly.js parsed), `wall` (the chromium process), `cpu`
    (user + system seconds of the whole chromium process tree: what the page costs whatever else
    the machine is doing, start-up included)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    out = []
    for i in range(runs):
        prof = work / f"profile-{i}"
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        dom = subprocess.run([exe, *FLAGS, f"--user-data-dir={prof}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=300).stdout
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        shutil.rmtree(prof, ignore_errors=True)
        m = re.search(r'data-interactive-ms="(\d+)"', dom)
        if not m or (need_answers and 'data-cell-id="' not in dom):
            raise SystemExit("the page did not become interactive:\n" + dom[-2000:])
        extra = {k: re.search(rf'data-{k}-ms="(\d+)"', dom) for k in ("script", "complete")}
        out.append({"interactive": float(m.group(1)), "wall": wall,
                    "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
                    **{k: float(v.group(1)) if v else math.nan for k, v in extra.items()}})
    return out


def blank(work: Path) -> Path:
    page = work / "blank.html"
    page.write_text("<!doctype html><html><body><script>document.documentElement.dataset.interactiveMs = "
                    "performance.now().toFixed(0)</script></body></html>")
    return page


def plotly_only(work: Path) -> Path:
    """The baseline: a page holding nothing but the plotly.js the report inlines, stamped when it has run."""
    page = work / "plotly_only.html"
    page.write_text(f"<!doctype html><html><head><script>{plotlyjs.script().text}</script></head><body>"
                    "<script>document.documentElement.dataset.interactiveMs = performance.now().toFixed(0)"
                    "</script></body></html>")
    return page


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="keep the synthetic results here (default: a temporary directory)")
    ap.add_argument("--points", type=int, default=12, help="points per cell (sequential, sweep steps, burst)")
    ap.add_argument("--requests", type=int, default=30, help="requests per point")
    ap.add_argument("--runs", type=int, default=5, help="chromium runs (fresh profile each)")
    ap.add_argument("--reuse", action="store_true", help="measure the report already in --out (no rebuild)")
    a = ap.parse_args()
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="report-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    db, report = work / "almanac.duckdb", work / "report.html"
    if a.reuse and report.exists():
        con = duckdb.connect(str(db), read_only=True)
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("cells", "phases", "requests", "slo")}
        con.close()
        t_cells = t_agg = t_report = math.nan
    else:
        cells = load_cells(yaml.safe_load((ROOT / "config/grids/almanac.yaml").read_text()))
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        dirs = [synthetic_cell(work / "cells", c, rng, a.points, a.requests) for c in cells]
        t_cells = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = aggregate(dirs, db, {c.cell_id: f"snakemake --cores all --forcerun results/cells/{c.cell_id}/cell.json"
                                      for c in cells})
        t_agg = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_report(db, report)
        t_report = time.perf_counter() - t0
    size_mb = report.stat().st_size / 1e6
    empty = chromium_ms(blank(work), work, a.runs, need_answers=False)
    plotly_runs = chromium_ms(plotly_only(work), work, a.runs, need_answers=False)
    base = [r["interactive"] for r in plotly_runs]
    runs = chromium_ms(report, work, a.runs)
    ms = [r["interactive"] for r in runs]
    med = statistics.median
    print(f"synthetic Almanac grid: {counts['cells']} cells, {counts['phases']} phases "
          f"({counts['phases'] / counts['cells']:.0f} per cell), {counts['requests']} requests, {counts['slo']} slo rows")
    print(f"build: cells {t_cells:.1f} s, aggregate {t_agg:.1f} s, report {t_report:.1f} s")
    bundle = re.search(r'<script id="plotly-js" data-bundle="(\w+)" data-version="([^"]+)"', report.read_text())
    print(f"report.html: {size_mb:.2f} MB (limit {SIZE_LIMIT_MB:g} MB; plotly.js, "
          f"{bundle.group(1) + ' bundle ' + bundle.group(2) if bundle else 'bundle unknown'}, is "
          f"{len(plotly_only(work).read_bytes()) / 1e6:.2f} MB of it): {'ok' if size_mb < SIZE_LIMIT_MB else 'OVER'}")
    print(f"time to interactive in headless Chromium, median of {a.runs} runs (min-max): "
          f"{med(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}), limit {TTI_LIMIT_MS:.0f} ms: "
          f"{'ok' if med(ms) < TTI_LIMIT_MS else 'OVER'}")
    print(f"  every chart drawn (the cross-shape chart below the fold follows the first view): "
          f"{med([r['complete'] for r in runs]):.0f} ms")
    print(f"  of which the page and plotly.js parsed: {med([r['script'] for r in runs]):.0f} ms; "
          f"a page of plotly.js alone: {med(base):.0f} ms ({min(base):.0f}-{max(base):.0f})")
    print(f"  chromium process wall (start-up and exit included): {med([r['wall'] for r in runs]):.1f} s; "
          f"load average {load_average()} on {os.cpu_count()} CPUs")
    print(f"CPU seconds of the chromium process tree, median (start-up included): blank page "
          f"{med([r['cpu'] for r in empty]):.2f}, plotly.js alone {med([r['cpu'] for r in plotly_runs]):.2f}, "
          f"the report {med([r['cpu'] for r in runs]):.2f}")
    print(f"data: {work}")
    return 0 if size_mb < SIZE_LIMIT_MB and med(ms) < TTI_LIMIT_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
