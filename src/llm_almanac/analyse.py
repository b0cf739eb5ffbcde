"""Per-cell analysis: SLO-bounded throughput with its 95% interval (the `slo` table).

The curve's points are the cell's phases (sequential, every sweep step, burst) with their
statistics and intervals (curve.py: with repeats, a point pools the requests of all repeats);
each SLO's answer and interval come from slo.answer, through answers.slo_answer, the same
function every other surface uses, so the `slo` and `answers` tables agree to the bit.

With two or more repeats, `repeat_cv` is the between-repeat coefficient of variation of the
answer (each repeat's own curve answered alone): run-to-run drift of the machine or the engine
shows there and lowers the answer's trust grade (trust.py, docs/methodology.md) instead of
hiding in pooled requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from . import curve, tables, trust
from .answers import SLO, Curve, curves_by_measurement, slo_answer
from .config import defaults
from .curve import statistic  # noqa: F401 - kept importable from here
from .files import read_json, replacing
from .slo import SLOAnswer

_STATS = set(curve.STATS)


def parse_metric(metric: str) -> tuple[str, str]:
    """'ttft_p95_ms' -> ('ttft', 'p95'), with a message naming what is allowed."""
    parts = metric.split("_")
    if len(parts) != 3 or parts[0] not in {"ttft", "tpot", "itl", "e2e"} or parts[1] not in _STATS or parts[2] != "ms":
        raise ValueError(
            f"SLO metric {metric!r} is not of the form <ttft|tpot|itl|e2e>_<mean|p50|p90|p95|p99|min|max>_ms"
        )
    return parts[0], parts[1]


def _only_curve(points: pl.DataFrame) -> Curve | None:
    """The curve of one measurement's points (analyse reads one cell's files: one measurement)."""
    curves = curves_by_measurement(points)
    if len(curves) > 1:
        raise ValueError(f"analyse reads one measurement at a time, got {sorted(curves)}")
    return next(iter(curves.values()), None)


def _repeat_cv(requests: pl.DataFrame, phases: pl.DataFrame, slo: SLO) -> float | None:
    """Between-repeat coefficient of variation of the answer: each repeat's curve alone."""
    answers = []
    for r in sorted(phases["repeat"].unique().to_list()):
        ph = phases.filter(pl.col("repeat") == r)
        crv = _only_curve(curve.points(requests.filter(pl.col("repeat") == r), ph))
        res = slo_answer(crv, slo) if crv else None
        if res is not None and res.max_rps is not None:
            answers.append(res.max_rps)
    if len(answers) < 2 or not np.mean(answers):
        return None
    return float(np.std(answers, ddof=1) / np.mean(answers))


def _answer_trust(crv: Curve, slo: SLO, res: SLOAnswer, phases: pl.DataFrame,
                  repeat_cv: float | None) -> tuple[str, str | None]:
    """The answer's trust grade and its reasons (trust.py): its phases' grades, the interval's
    width, a non-monotone curve and the spread between repeats."""
    grades = []
    if "trust_grade" in phases.columns:
        grades = [(g, why) for g, why in phases.select("trust_grade", "trust_reasons").iter_rows() if g]
    dips = any(trust.nonmonotone(crv.column(metric)) for metric, _ in slo.conditions)
    reasons = trust.answer_reasons(grades, res.max_rps, (res.ci_low_rps, res.ci_high_rps), dips, repeat_cv)
    return trust.grade(reasons), trust.fmt(reasons)


def analyse(requests: pl.DataFrame, phases: pl.DataFrame, slos: list[dict[str, Any]] | None = None,
            bootstrap: int | None = None, seed: int | None = None) -> pl.DataFrame:
    """One row per SLO of the cell (empty for a cell without measurements). `bootstrap` and
    `seed` are ignored: intervals no longer resample (curve.py says why and how instead)."""
    slos = slos or defaults("analysis")["slos"]
    if phases.is_empty():
        return tables.empty(tables.SLO)
    for s in slos:
        for c in s["conditions"]:
            parse_metric(c["metric"])
    cell = phases["cell_id"][0]
    points = curve.points(requests, phases)
    crv = _only_curve(points)
    assert crv is not None  # phases is not empty
    n_rep = int(phases["repeat"].n_unique())
    rows = []
    for spec in slos:
        slo = SLO.from_config(spec)
        res = slo_answer(crv, slo)
        conds = spec["conditions"]
        cv = _repeat_cv(requests, phases, slo) if n_rep >= 2 else None
        grade, why = _answer_trust(crv, slo, res, phases, cv)
        rows.append({
            "cell_id": cell, "slo": slo.name,
            "metric": "+".join(c["metric"] for c in conds),
            "threshold_ms": float(conds[0]["threshold_ms"]) if len(conds) == 1 else None,
            "max_rps": res.max_rps, "basis": res.basis,
            "ci_low_rps": res.ci_low_rps, "ci_high_rps": res.ci_high_rps,
            "n_points": len(points), "n_repeats": n_rep,
            "repeat_cv": cv, "trust_grade": grade, "trust_reasons": why,
        })
    return tables.frame(tables.SLO, rows)


def analyse_cell(cell_json: str, requests_path: str, phases_path: str,
                 analysis: dict[str, Any] | None = None) -> pl.DataFrame:
    """The `slo` rows of one cell's files. A failed cell may keep some phases, but not a whole
    curve, so no SLO answer is read from it (no rows)."""
    return analyse_cell_files(cell_json, requests_path, phases_path, analysis)[0]


def analyse_cell_files(cell_json: str, requests_path: str, phases_path: str,
                       analysis: dict[str, Any] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the `slo` rows, the curve points) of one cell's files, reading its requests once. The
    points are those of every phase, a failed cell's too, as the aggregate's `curve` table has
    them (curve.points; measurement_id is the file's, the aggregate sets its own)."""
    analysis = analysis or {}
    ok = read_json(cell_json)["status"] == "ok"
    phases = pl.read_parquet(phases_path)
    requests = pl.read_parquet(requests_path)
    slo = analyse(requests, phases if ok else phases.clear(), analysis.get("slos"))
    return slo, curve.points(requests, phases)


#: The key of curve.parquet's metadata that names the files its points were computed from.
CURVE_INPUTS_KEY = "almanac_curve_inputs"


def curve_inputs(requests_path: str | Path, phases_path: str | Path) -> str:
    """What a cell's curve.parquet was computed from (the size and mtime of its requests and
    phases files): the aggregate uses the file only while this still holds, and otherwise
    computes the points itself."""
    out = {}
    for name, p in (("requests", Path(requests_path)), ("phases", Path(phases_path))):
        st = p.stat() if p.exists() else None
        out[name] = [st.st_size, st.st_mtime_ns] if st else None
    return json.dumps(out, sort_keys=True)


def write_curve(path: str | Path, points: pl.DataFrame, inputs: str) -> None:
    """A cell's curve points (curve.CURVE_SCHEMA), naming their inputs (curve_inputs)."""
    with replacing(path) as tmp:
        points.select(list(curve.CURVE_SCHEMA)).cast(pl.Schema(curve.CURVE_SCHEMA)).write_parquet(
            tmp, metadata={CURVE_INPUTS_KEY: inputs})


def fresh_curve(cell_dir: Path) -> bool:
    """Whether cell_dir's curve.parquet was computed from its requests and phases files as
    they are now (curve_inputs)."""
    f = cell_dir / "curve.parquet"
    if not f.exists():
        return False
    try:
        meta = pl.read_parquet_metadata(f)
    except Exception:  # noqa: BLE001 - polars raises several kinds for a bad file: compute instead
        return False
    return meta.get(CURVE_INPUTS_KEY) == curve_inputs(cell_dir / "requests.parquet", cell_dir / "phases.parquet")
