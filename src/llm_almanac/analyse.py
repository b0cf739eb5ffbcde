"""Per-cell analysis: SLO-bounded throughput with a bootstrap confidence interval.

The curve's points are the cell's phases (sequential, every sweep step, burst): achieved rps
against a latency statistic such as `ttft_p95_ms`. With repeats, a point pools the requests of
all repeats of that phase/step (percentiles of the pooled requests, not a median of
percentiles) and its rate is the mean achieved rate across repeats.

The confidence interval resamples requests with replacement within each point (rates held at
their measured values), recomputes the statistic of every point and the interpolated max rps,
and reports the 2.5th and 97.5th percentiles of those answers. With two or more repeats it is a
two-level bootstrap: each draw first resamples the repeats (with replacement), then requests
within each drawn repeat, and a point's rate is the mean of the drawn repeats' rates; so
run-to-run drift of the machine or the engine widens the interval instead of hiding in it.
`repeat_cv` is the between-repeat coefficient of variation of the answer (each repeat's curve
answered alone). Every answer carries a trust grade (trust.py, docs/methodology.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from . import tables, trust
from .config import defaults
from .files import read_json
from .slo import max_rps_under

_STATS = {"mean", "p50", "p90", "p95", "p99", "min", "max"}


def parse_metric(metric: str) -> tuple[str, str]:
    """'ttft_p95_ms' -> ('ttft', 'p95'), with a message naming what is allowed."""
    parts = metric.split("_")
    if len(parts) != 3 or parts[0] not in {"ttft", "tpot", "itl", "e2e"} or parts[1] not in _STATS or parts[2] != "ms":
        raise ValueError(
            f"SLO metric {metric!r} is not of the form <ttft|tpot|itl|e2e>_<mean|p50|p90|p95|p99|min|max>_ms"
        )
    return parts[0], parts[1]


def statistic(values: np.ndarray, stat: str) -> float | None:
    if values.size == 0:
        return None
    if stat == "mean":
        return float(values.mean())
    if stat == "min":
        return float(values.min())
    if stat == "max":
        return float(values.max())
    return float(np.percentile(values, float(stat[1:]), method="linear"))


def _points(requests: pl.DataFrame, phases: pl.DataFrame) -> list[dict[str, Any]]:
    """One entry per (phase, step): mean achieved rps, the ok requests' latency arrays (aligned
    per request; NaN where undefined), each request's repeat and each repeat's own rate."""
    ok = requests.filter(pl.col("status") == "ok")
    rates = phases.group_by(["phase", "step"]).agg(pl.col("rps").mean(), pl.col("repeat").n_unique().alias("n"))
    out = []
    for row in rates.sort("rps").iter_rows(named=True):
        sel = ok.filter((pl.col("phase") == row["phase"]) & (pl.col("step") == row["step"]))
        itl = [np.asarray(x if x is not None else [], dtype=float) for x in sel["itl_ms"].to_list()]
        per = phases.filter((pl.col("phase") == row["phase"]) & (pl.col("step") == row["step"]))
        out.append({
            "phase": row["phase"], "step": row["step"], "rps": row["rps"],
            "ttft": sel["ttft_ms"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            "tpot": sel["tpot_ms"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            "e2e": sel["e2e_ms"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            "itl": itl,
            "repeat": sel["repeat"].to_numpy(),
            "repeat_rps": dict(zip(per["repeat"].to_list(), per["rps"].to_list(), strict=True)),
        })
    return out


def _value(point: dict[str, Any], metric: str, idx: np.ndarray | None = None) -> float | None:
    name, stat = parse_metric(metric)
    if name == "itl":
        lists = point["itl"] if idx is None else [point["itl"][i] for i in idx]
        vals = np.concatenate(lists) if lists else np.empty(0)
    else:
        vals = point[name] if idx is None else point[name][idx[idx < point[name].size]]
        vals = vals[~np.isnan(vals)]
    return statistic(vals, stat)


def _answer(points: list[dict[str, Any]], conditions: list[dict[str, Any]], idxs=None, rates=None):
    """The SLO's answer: the lowest max-rps over its conditions (all must hold). `idxs`: per
    point, the requests to use (a resample); `rates`: per point, the rate to use."""
    best = None
    for cond in conditions:
        pts = [(p["rps"] if rates is None else rates[i], _value(p, cond["metric"], None if idxs is None else idxs[i]))
               for i, p in enumerate(points)]
        res = max_rps_under(pts, float(cond["threshold_ms"]))
        if res.max_rps is None:
            return res
        if best is None or best.max_rps is None or res.max_rps < best.max_rps:
            best = res
    return best


def _two_level_draw(points: list[dict[str, Any]], repeats: list[int], rng: np.random.Generator):
    """One draw of the two-level bootstrap: repeats with replacement, then requests within each
    drawn repeat; a point's rate is the mean of the drawn repeats' rates."""
    drawn = rng.choice(repeats, size=len(repeats), replace=True)
    idxs, rates = [], []
    for p in points:
        parts = []
        for r in drawn:
            own = np.flatnonzero(p["repeat"] == r)
            if own.size:
                parts.append(own[rng.integers(0, own.size, own.size)])
        idxs.append(np.concatenate(parts) if parts else np.empty(0, dtype=int))
        rs = [p["repeat_rps"][r] for r in drawn if p["repeat_rps"].get(r) is not None]
        rates.append(float(np.mean(rs)) if rs else p["rps"])
    return idxs, rates


def _repeat_cv(points: list[dict[str, Any]], conds: list[dict[str, Any]], repeats: list[int]) -> float | None:
    """Between-repeat coefficient of variation of the answer (each repeat's curve alone)."""
    answers = []
    for r in repeats:
        idxs = [np.flatnonzero(p["repeat"] == r) for p in points]
        rates = [p["repeat_rps"].get(r) for p in points]
        if any(x is None for x in rates):
            continue
        res = _answer(points, conds, idxs, rates)
        if res.max_rps is not None:
            answers.append(res.max_rps)
    if len(answers) < 2 or not np.mean(answers):
        return None
    return float(np.std(answers, ddof=1) / np.mean(answers))


def _answer_trust(points, conds, res, ci, phases: pl.DataFrame, repeat_cv: float | None) -> tuple[str, str | None]:
    grades = []
    if "trust_grade" in phases.columns:
        grades = [(g, why) for g, why in phases.select("trust_grade", "trust_reasons").iter_rows() if g]
    dips = any(trust.nonmonotone([_value(p, c["metric"]) for p in points]) for c in conds)
    reasons = trust.answer_reasons(grades, res.max_rps, ci, dips, repeat_cv)
    return trust.grade(reasons), trust.fmt(reasons)


def analyse(requests: pl.DataFrame, phases: pl.DataFrame, slos: list[dict[str, Any]] | None = None,
            bootstrap: int | None = None, seed: int = 0) -> pl.DataFrame:
    """One row per SLO of the cell (empty for a cell without measurements)."""
    slos = slos or defaults("analysis")["slos"]
    bootstrap = int(defaults("analysis")["bootstrap"]) if bootstrap is None else bootstrap
    if phases.is_empty():
        return tables.empty(tables.SLO)
    cell = phases["cell_id"][0]
    points = _points(requests, phases)
    n_rep = int(phases["repeat"].n_unique())
    repeats = sorted(phases["repeat"].unique().to_list())
    rng = np.random.default_rng(seed)
    rows = []
    for slo in slos:
        conds = slo["conditions"]
        res = _answer(points, conds)
        boots = []
        for _ in range(bootstrap if res.max_rps is not None else 0):
            if n_rep >= 2:  # repeats first, then requests within them
                idxs, rates = _two_level_draw(points, repeats, rng)
                b = _answer(points, conds, idxs, rates)
            else:  # resample each point's requests (ITL lists move with their request)
                idxs = [rng.integers(0, max(1, len(p["itl"])), len(p["itl"])) for p in points]
                b = _answer(points, conds, idxs)
            if b.max_rps is not None:
                boots.append(b.max_rps)
        lo, hi = (np.percentile(boots, [2.5, 97.5]).tolist() if boots else (None, None))
        cv = _repeat_cv(points, conds, repeats) if n_rep >= 2 else None
        grade, why = _answer_trust(points, conds, res, (lo, hi), phases, cv)
        rows.append({
            "cell_id": cell,
            "slo": slo.get("name") or "+".join(f"{c['metric']}<={c['threshold_ms']:g}" for c in conds),
            "metric": "+".join(c["metric"] for c in conds),
            "threshold_ms": float(conds[0]["threshold_ms"]) if len(conds) == 1 else None,
            "max_rps": res.max_rps, "basis": res.basis,
            "ci_low_rps": lo, "ci_high_rps": hi,
            "n_points": len(points), "n_repeats": n_rep,
            "repeat_cv": cv, "trust_grade": grade, "trust_reasons": why,
        })
    return tables.frame(tables.SLO, rows)


def analyse_cell(cell_json: str, requests_path: str, phases_path: str,
                 analysis: dict[str, Any] | None = None) -> pl.DataFrame:
    """The `slo` rows of one cell's files. A failed cell may keep some phases, but not a whole
    curve, so no SLO answer is read from it (no rows)."""
    analysis = {**defaults("analysis"), **(analysis or {})}
    ok = read_json(cell_json)["status"] == "ok"
    phases = pl.read_parquet(phases_path)
    return analyse(pl.read_parquet(requests_path), phases if ok else phases.clear(),
                   analysis.get("slos"), int(analysis["bootstrap"]))
