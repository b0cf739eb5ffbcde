"""Does the store hold up at the Almanac's size? Synthetic cell files, timed.

Generates --cells cells (default 468, the Almanac's grid) with --rows request rows in all, each
row with a 128-value ITL list, plus their phases, SLO rows and curve points (curve.parquet, as
rule analyse_cell writes it per cell), in a temporary folder (never in the repository), and
times, each step in a fresh process (peak RSS of that process):

  aggregate        cell files -> almanac.duckdb            target <= 30 s, <= 4 GB (at 10 M rows)
  aggregate again  the same inputs: a no-op                target <= 5 s
  SLO query        the best cells under one SLO            target <= 100 ms
  merge            two such sets (another hardware kind)   target <= 60 s
  requests read    every request through the view: TTFT p95 and mean ITL per measurement

    python benchmarks/store_scale.py --rows 1000000 [--rows 10000000] [--keep]

Several --rows values give the growth figure (each is generated, measured and deleted in turn).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from llm_almanac import curve, tables
from llm_almanac.analyse import curve_inputs, write_curve

ITL_LEN = 128
#: Seconds spent writing the cells' curve.parquet (what rule analyse_cell adds per cell).
CURVE_SECONDS = [0.0]
TARGETS = {"aggregate": 30.0, "aggregate again (no-op)": 5.0, "SLO query": 0.1, "merge of two sets": 60.0,
           "requests read (view)": None}


def generate(root: Path, n_cells: int, n_rows: int, kind: str, seed: int = 0) -> list[Path]:
    """The cell folders of one synthetic result set. Vectorised: the ITL values of every cell are
    slices (at random offsets) of one pool of rounded normal draws, so 10 M rows take minutes."""
    rng = np.random.default_rng(seed)
    per = max(1, n_rows // n_cells)
    pool = np.round(rng.normal(10, 1, per * ITL_LEN + 2**20), 2)
    phase = pl.Series(np.where(np.arange(per) < per // 10, "sequential", "sweep"))
    step = pl.Series(np.minimum(np.arange(per) * 4 // per, 3), dtype=pl.Int32)
    dirs = []
    for i in range(n_cells):
        cid = f"model-{i // 36}__eng-{i % 3}__bf16__{128 * (1 + (i // 3) % 12)}-128"
        d = root / "cells" / cid
        d.mkdir(parents=True)
        start = int(rng.integers(0, 2**20))
        itl = pool[start:start + per * ITL_LEN].reshape(per, ITL_LEN)
        ttft = np.round(rng.gamma(4, 25, per), 3)
        req = pl.DataFrame({
            "cell_id": pl.repeat(cid, per, eager=True), "repeat": pl.repeat(0, per, dtype=pl.Int32, eager=True),
            "phase": phase, "step": step, "request_id": np.arange(per, dtype=np.int64), "ttft_ms": ttft,
            "tpot_ms": itl.mean(axis=1), "e2e_ms": ttft + itl.sum(axis=1),
            "itl_ms": pl.Series(itl).cast(pl.List(pl.Float64)),
            "n_token_events": pl.repeat(ITL_LEN + 1, per, dtype=pl.Int32, eager=True),
            "prompt_tokens": pl.repeat(128, per, eager=True), "completion_tokens": pl.repeat(ITL_LEN + 1, per, eager=True),
            "status": pl.repeat("ok", per, eager=True),
        })
        req = tables.conform(tables.REQUESTS, req)
        req.write_parquet(d / "requests.parquet")
        _small_files(d, cid, rng)
        t = time.perf_counter()  # rule analyse_cell's share: the cell's curve points, once per cell
        write_curve(d / "curve.parquet", curve.points(req, pl.read_parquet(d / "phases.parquet")),
                    curve_inputs(d / "requests.parquet", d / "phases.parquet"))
        CURVE_SECONDS[0] += time.perf_counter() - t
        _cell_json(d, cid, kind)
        dirs.append(d)
    return dirs


def _small_files(d: Path, cid: str, rng: np.random.Generator) -> None:
    ph = pl.DataFrame({"cell_id": cid, "repeat": pl.Series([0] * 4, dtype=pl.Int32),
                       "phase": ["sequential", "sweep", "sweep", "sweep"],
                       "step": pl.Series([0, 0, 1, 2], dtype=pl.Int32), "rps": [1.0, 4.0, 8.0, 16.0]})
    tables.conform(tables.PHASES, ph).write_parquet(d / "phases.parquet")
    slo = pl.DataFrame({"cell_id": cid, "slo": ["ttft_p95<=300ms", "ttft_p95<=1000ms"],
                        "metric": "ttft_p95_ms", "threshold_ms": [300.0, 1000.0],
                        "max_rps": rng.uniform(1, 16, 2), "basis": "interpolated"})
    tables.conform(tables.SLO, slo).write_parquet(d / "slo.parquet")


def _cell_json(d: Path, cid: str, kind: str) -> None:
    (d / "cell.json").write_text(json.dumps(tables.new_cell_record(
        cell_id=cid, model=cid.split("__")[0], engine=cid.split("__")[1], quantization="bf16", isl=128, osl=128,
        status="ok", hardware=kind, hardware_kind=kind, run_id="synthetic", host="synthetic")))


def same_files_other_hardware(dirs: list[Path], root: Path, kind: str) -> list[Path]:
    """A second set: the same Parquet files (linked), measured on another hardware kind."""
    out = []
    for d in dirs:
        e = root / "cells" / d.name
        e.mkdir(parents=True)
        for f in ("requests.parquet", "phases.parquet", "slo.parquet", "curve.parquet"):
            os.link(d / f, e / f)
        _cell_json(e, d.name, kind)
        out.append(e)
    return out


def timed(code: str) -> tuple[float, float, str]:
    """Run `code` in a fresh interpreter; (seconds it reports, peak RSS GB of the process, output).
    Prints the step's CPU seconds and the load average after it: on a shared machine the wall
    time is an upper bound, the CPU seconds what the work costs."""
    p = subprocess.run([sys.executable, "-c", "import resource, time\n" + code +
                        "\nru = resource.getrusage(resource.RUSAGE_SELF)\nprint('CPU', ru.ru_utime + ru.ru_stime)"
                        "\nprint('RSS', ru.ru_maxrss)"],
                       capture_output=True, text=True, check=True)
    lines = p.stdout.strip().splitlines()
    secs = float(next(x for x in lines if x.startswith("SECS")).split()[1])
    cpu = float(next(x for x in lines if x.startswith("CPU")).split()[1])
    rss = int(lines[-1].split()[1]) / 2**20
    print(f"  {secs:9.3f} s wall, {cpu:7.1f} s CPU (process), peak RSS {rss:.2f} GB; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    return secs, rss, p.stdout


def measure(n_rows: int, n_cells: int, keep: bool) -> dict[str, tuple[float, float]]:
    work = Path(tempfile.mkdtemp(prefix="store-scale-"))
    try:
        t0 = time.monotonic()
        a = generate(work / "a", n_cells, n_rows, "h100-80gb-hbm3-x1")
        same_files_other_hardware(a, work / "b", "h200-141gb-hbm3e-x1")
        print(f"[{n_rows:,} rows] generated {n_cells} cells in {time.monotonic() - t0:.0f} s "
              f"({sum(f.stat().st_size for f in (work / 'a').rglob('*.parquet')) / 2**30:.2f} GiB of Parquet; "
              f"{CURVE_SECONDS[0]:.1f} s of it the cells' curve points, rule analyse_cell's share)", flush=True)
        CURVE_SECONDS[0] = 0.0
        agg = ("from pathlib import Path\nfrom llm_almanac.aggregate import aggregate\n"
               "dirs = sorted(Path({root!r}).glob('cells/*'))\nt = time.perf_counter()\n"
               "c = aggregate(dirs, Path({db!r}))\nprint('SECS', time.perf_counter() - t)\nprint(c)")
        res = {}
        res["aggregate"] = timed(agg.format(root=str(work / "a"), db=str(work / "a.duckdb")))[:2]
        res["aggregate again (no-op)"] = timed(agg.format(root=str(work / "a"), db=str(work / "a.duckdb")))[:2]
        res["SLO query"] = timed(
            f"import duckdb\ncon = duckdb.connect({str(work / 'a.duckdb')!r}, read_only=True)\n"
            "q = \"SELECT c.model, c.engine, c.isl, c.hardware_kind, s.max_rps FROM slo s JOIN cells c "
            "USING (measurement_id) WHERE s.slo = 'ttft_p95<=300ms' ORDER BY s.max_rps DESC LIMIT 10\"\n"
            "con.execute(q).fetchall()\nt = time.perf_counter()\nr = con.execute(q).fetchall()\n"
            "print('SECS', time.perf_counter() - t)")[:2]
        res["requests read (view)"] = timed(
            f"from llm_almanac.reqstore import connect\ncon = connect({str(work / 'a.duckdb')!r})\n"
            "t = time.perf_counter()\nr = con.execute(\"SELECT measurement_id, quantile_cont(ttft_ms, 0.95), "
            "avg(list_avg(itl_ms)) FROM requests GROUP BY ALL\").fetchall()\n"
            "print('SECS', time.perf_counter() - t)")[:2]
        timed(agg.format(root=str(work / "b"), db=str(work / "b.duckdb")))
        res["merge of two sets"] = timed(
            "from pathlib import Path\nfrom llm_almanac.merge import merge\nt = time.perf_counter()\n"
            f"c = merge([{str(work / 'a.duckdb')!r}, {str(work / 'b.duckdb')!r}], Path({str(work / 'ab.duckdb')!r}))\n"
            "print('SECS', time.perf_counter() - t)\nprint(c)")[:2]
        print(f"[{n_rows:,} rows] database {(work / 'a.duckdb').stat().st_size / 2**30:.2f} GiB, "
              f"merged {(work / 'ab.duckdb').stat().st_size / 2**30:.2f} GiB", flush=True)
        return res
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="request rows in all (repeatable)")
    ap.add_argument("--cells", type=int, default=468)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    a = ap.parse_args()
    results = {n: measure(n, a.cells, a.keep) for n in (a.rows or [1_000_000])}
    print(f"\n{'step':26s}" + "".join(f"{n:>22,} rows" for n in results) + "      target")
    for step, target in TARGETS.items():
        cells = "".join(f"{results[n][step][0]:>14.3f} s {results[n][step][1]:5.2f} GB" for n in results)
        print(f"{step:26s}{cells}   " + (f"<= {target:g} s" if target else "(no target)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
