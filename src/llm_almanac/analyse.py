"""Per-cell analysis: SLO-bounded throughput with a bootstrap confidence interval.

The curve's points are the cell's phases (sequential, every sweep step, burst): achieved rps
against a latency statistic such as `ttft_p95_ms`. With repeats, a point pools the requests of
all repeats of that phase/step (percentiles of the pooled requests, not a median of
percentiles) and its rate is the mean achieved rate across repeats.

The confidence interval resamples requests with replacement within each point (rates held at
their measured values), recomputes the statistic of every point and the interpolated max rps,
and reports the 2.5th and 97.5th percentiles of those answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from . import tables
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
    """One entry per (phase, step): mean achieved rps and the ok requests' latency arrays."""
    ok = requests.filter(pl.col("status") == "ok")
    rates = phases.group_by(["phase", "step"]).agg(pl.col("rps").mean(), pl.col("repeat").n_unique().alias("n"))
    out = []
    for row in rates.sort("rps").iter_rows(named=True):
        sel = ok.filter((pl.col("phase") == row["phase"]) & (pl.col("step") == row["step"]))
        itl = [np.asarray(x if x is not None else [], dtype=float) for x in sel["itl_ms"].to_list()]
        out.append({
            "phase": row["phase"], "step": row["step"], "rps": row["rps"],
            "ttft": sel["ttft_ms"].drop_nulls().to_numpy(),
            "tpot": sel["tpot_ms"].drop_nulls().to_numpy(),
            "e2e": sel["e2e_ms"].drop_nulls().to_numpy(),
            "itl": itl,
        })
    return out


def _value(point: dict[str, Any], metric: str, idx: np.ndarray | None = None) -> float | None:
    name, stat = parse_metric(metric)
    if name == "itl":
        lists = point["itl"] if idx is None else [point["itl"][i] for i in idx]
        vals = np.concatenate(lists) if lists else np.empty(0)
    else:
        vals = point[name] if idx is None else point[name][idx[idx < point[name].size]]
    return statistic(vals, stat)


def _answer(points: list[dict[str, Any]], conditions: list[dict[str, Any]], idxs=None):
    """The SLO's answer: the lowest max-rps over its conditions (all must hold)."""
    best = None
    for cond in conditions:
        pts = [(p["rps"], _value(p, cond["metric"], None if idxs is None else idxs[i]))
               for i, p in enumerate(points)]
        res = max_rps_under(pts, float(cond["threshold_ms"]))
        if res.max_rps is None:
            return res
        if best is None or best.max_rps is None or res.max_rps < best.max_rps:
            best = res
    return best


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
    rng = np.random.default_rng(seed)
    rows = []
    for slo in slos:
        conds = slo["conditions"]
        res = _answer(points, conds)
        boots = []
        for _ in range(bootstrap if res.max_rps is not None else 0):
            # resample each point's requests (ITL lists move with their request)
            idxs = [rng.integers(0, max(1, len(p["itl"])), len(p["itl"])) for p in points]
            b = _answer(points, conds, idxs)
            if b.max_rps is not None:
                boots.append(b.max_rps)
        lo, hi = (np.percentile(boots, [2.5, 97.5]).tolist() if boots else (None, None))
        rows.append({
            "cell_id": cell,
            "slo": slo.get("name") or "+".join(f"{c['metric']}<={c['threshold_ms']:g}" for c in conds),
            "metric": "+".join(c["metric"] for c in conds),
            "threshold_ms": float(conds[0]["threshold_ms"]) if len(conds) == 1 else None,
            "max_rps": res.max_rps, "basis": res.basis,
            "ci_low_rps": lo, "ci_high_rps": hi,
            "n_points": len(points), "n_repeats": n_rep,
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
