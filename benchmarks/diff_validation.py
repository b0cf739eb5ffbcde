"""Does `almanac diff` flag what it should, and only that? Validated against the simulator.

The simulator (TTFT 50 ms, 10 ms per output token, at most 4 requests at a time so the burst
queues and the SLO curve is crossed) is measured by `almanac bench` once as the base and
--reruns more times unchanged; then a simulator whose decode is 20 % slower (12 ms per token) is
measured --slow-runs times. Every rerun is diffed against the base at the default threshold:

  false positives  no-change reruns with any metric flagged `regressed` (goal: at most 1 in 20)
  detections       slower-decode runs flagged `regressed` (goal: every one)

    python benchmarks/diff_validation.py [--reruns 20] [--slow-runs 5] [--tokenizer DIR]

Each run is a few seconds (sequential 16 requests, burst 32, a two-rate sweep of 2 s each);
the whole benchmark takes a few minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_almanac import tables  # noqa: E402
from llm_almanac.aggregate import aggregate  # noqa: E402
from llm_almanac.analyse import analyse  # noqa: E402
from llm_almanac.diff import diff, gate  # noqa: E402

import harness as h  # noqa: E402

ISL, OSL, TTFT_MS, TPOT_MS, CONC = 128, 16, 50, 10.0, 4


def bench(sim: h.Sim, tok: Path, out: Path, label: str) -> Path:
    """One `almanac bench` run as a result set (cell files + database) of one cell."""
    cell = out / "cells" / label
    subprocess.run([h.PY, "-m", "llm_almanac.cli", "bench", "--base-url", sim.url, "--model", "sim",
                    "--tokenizer", str(tok), "--isl", str(ISL), "--osl", str(OSL), "--label", label,
                    "--warmup-requests", "2", "--sequential-requests", "16", "--burst-requests", "32",
                    "--sweep-rates", "2", "--sweep-duration", "2", "--out", str(cell)],
                   check=True, capture_output=True, text=True)
    req, ph = pl.read_parquet(cell / "requests.parquet"), pl.read_parquet(cell / "phases.parquet")
    analyse(req, ph, bootstrap=0).write_parquet(cell / "slo.parquet")
    (cell / "cell.json").write_text(json.dumps(tables.new_cell_record(
        cell_id=label, model="sim", engine="sim", engine_version="0", quantization="none", isl=ISL, osl=OSL,
        status="ok", hardware="simulator", hardware_kind="simulator", run_id=out.name, host="localhost")))
    db = out / "almanac.duckdb"
    aggregate([cell], db)
    return db


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reruns", type=int, default=20)
    ap.add_argument("--slow-runs", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--tokenizer", type=Path, help="tokenizer dir (default: the bundled SmolLM2's)")
    ap.add_argument("--reuse", type=Path, help="diff the runs kept in this folder by an earlier run instead")
    a = ap.parse_args()
    t0 = time.monotonic()
    if a.reuse:
        def runs(prefix: str) -> list[Path]:
            found = a.reuse.glob(f"{prefix}-run*/almanac.duckdb")
            return sorted(found, key=lambda p: int(p.parent.name.rsplit("run", 1)[1]))
        same, slow = runs(f"tpot{TPOT_MS:g}"), runs(f"tpot{TPOT_MS * 1.2:g}")
    else:
        same, slow = measure(a)
    return compare(same, slow, a.threshold, t0)


def measure(a: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    tok = a.tokenizer or h.tokenizer_dir()
    work = Path(tempfile.mkdtemp(prefix="diff-validation-"))
    label = f"sim__sim__none__{ISL}-{OSL}"
    same: list[Path] = []
    slow: list[Path] = []
    for tpot, n, into in ((TPOT_MS, 1 + a.reruns, same), (TPOT_MS * 1.2, a.slow_runs, slow)):
        sim = h.Sim(work, "--ttft-ms", str(TTFT_MS), "--tpot-ms", str(tpot), "--max-concurrency", str(CONC),
                    "--prompt-tokens", str(ISL))
        try:
            for i in range(n):
                into.append(bench(sim, tok, work / f"tpot{tpot:g}-run{i}", label))
                h.log(f"tpot {tpot:g} ms: run {i + 1}/{n}")
        finally:
            sim.stop()
    return same, slow


def compare(same: list[Path], slow: list[Path], threshold: float, t0: float) -> int:
    base, reruns = same[0], same[1:]
    flagged: dict[str, list[str]] = {"no-change": [], "slower decode": []}
    for kind, runs in (("no-change", reruns), ("slower decode", slow)):
        for run in runs:
            res = diff(str(base), str(run), threshold)
            if gate(res):
                flagged[kind].append(", ".join(res.filter(pl.col("status") == "regressed")["metric"]))
            worst = res.filter(pl.col("change_pct").is_not_null()).sort("change_pct")
            h.log(f"{kind} {run.parent.name}: {'REGRESSED' if gate(res) else 'ok'}; changes % "
                  + ", ".join(f"{m} {c:+.1f} [{_f(lo)}, {_f(hi)}] {st}" for m, c, lo, hi, st in
                              worst.select("metric", "change_pct", "ci_low_pct", "ci_high_pct", "status")
                              .iter_rows()))
    fp, det = len(flagged["no-change"]), len(flagged["slower decode"])
    print(f"threshold {threshold:.0%}: no-change reruns flagged {fp}/{len(reruns)} "
          f"(goal <= {len(reruns) / 20:.0f}); 20 % slower decode flagged {det}/{len(slow)} (goal {len(slow)})")
    for kind, metrics in flagged.items():
        for m in metrics:
            print(f"  {kind} flagged on: {m}")
    print(f"({time.monotonic() - t0:.0f} s; runs in {base.parent.parent})")
    return int(fp > len(reruns) / 20 or det < len(slow))


if __name__ == "__main__":
    raise SystemExit(main())
