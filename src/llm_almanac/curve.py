"""A measurement's latency-throughput curve (one run of a cell on one hardware kind: identity.py):
its measured points, each with its statistics and their 95% intervals. Every SLO answer (the
`slo` and `answers` tables, `almanac slo|plan|summary`, the report's in-browser answers) is read
from these points, so they are computed in one place.

A point is one phase or sweep step: the sequential phase, each sweep step, the burst. With
repeats it pools the successful requests of every repeat (percentiles of the pooled requests,
not a median of percentiles) and its rates are means over the repeats (`math.fsum`, so the
result does not depend on row order: the aggregate and the per-cell analysis get the same bits).

Intervals (why not a bootstrap: the report answers any threshold in the browser, and it cannot
carry every request to resample; these need two numbers per point and statistic):
- percentiles: distribution-free, from order statistics. The number of observations at or below
  the true q-quantile is Binomial(n, q); with its normal approximation the 95% interval is
  [X_(r), X_(s)] with r = floor(nq - z*sd), s = ceil(nq + z*sd) + 1 (1-based ranks,
  sd = sqrt(nq(1-q)), z = 1.96), clamped to the sample, so with few requests an end is the
  sample's minimum or maximum and the interval is narrower than 95% (e.g. p95 of 8 requests).
- mean: mean +- z * s / sqrt(n) (s with n - 1; none below two observations).
- min, max: none (None): an extreme has no distribution-free interval.
ITL statistics pool every gap of every request and treat the gaps as independent, which they
are not within one request: their intervals are too narrow.

With two or more repeats the interval also holds the drift between them: each repeat's own
statistic s_1..s_R gives the interval pooled +- z * sd(s) / sqrt(R) (clamped at 0), and the
point's interval is the union of that and the requests' own. sd(s)^2 / R estimates the variance
of the pooled statistic under resampling repeats and then requests within them (the repeats'
spread holds both the drift and each repeat's own sampling noise); z, not Student's t, is that
resampling's normal approximation, so two repeats that agree within their noise do not blow the
interval up twelvefold (t(1) = 12.7). Few repeats under-cover: `repeat_cv` and the trust grade
(trust.py) carry that warning. Repeats that agree leave the requests' interval about as it is;
a machine or engine that drifted between repeats widens every answer read from the point.

Latency statistics and their bounds are kept to the microsecond (rounded to 0.001 ms): far below
the client's own timing error (docs/benchmarks.md) and what lets the report carry every point of
an Almanac-sized grid in a few megabytes. Every surface reads these rounded values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from numpy.lib._function_base_impl import _lerp  # type: ignore[attr-defined]  # numpy is pinned

Z95 = 1.959963984540054
METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99", "min", "max")
INTERVAL_STATS = ("mean", "p50", "p90", "p95", "p99")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = {
        "measurement_id": pl.String, "cell_id": pl.String, "phase": pl.String, "step": pl.Int64, "rps": pl.Float64,
        "output_tok_s": pl.Float64, "input_tok_s": pl.Float64, "n_ok": pl.Int64, "n_repeats": pl.Int64,
    }
    for m in METRICS:
        for s in STATS:
            schema[f"{m}_{s}_ms"] = pl.Float64
            if s in INTERVAL_STATS:
                schema[f"{m}_{s}_lo_ms"] = pl.Float64
                schema[f"{m}_{s}_hi_ms"] = pl.Float64
    return schema


CURVE_SCHEMA = _schema()


def statistic(values: np.ndarray, stat: str) -> float | None:
    """mean, min, max or pNN of the values (numpy's linear interpolation between closest ranks,
    as the phases table and `vllm bench serve` use); None without values."""
    if values.size == 0:
        return None
    if stat == "mean":
        return float(values.mean())
    if stat == "min":
        return float(values.min())
    if stat == "max":
        return float(values.max())
    return float(np.percentile(values, float(stat[1:]), method="linear"))


def interval(values: np.ndarray, stat: str, ordered: np.ndarray | None = None,
             est: float | None = None) -> tuple[float | None, float | None]:
    """The 95% interval of `statistic(values, stat)` (module docstring); (None, None) if none.
    `ordered` (the values sorted) and `est` (the statistic) save recomputing them."""
    n = values.size
    if n == 0 or stat in ("min", "max"):
        return None, None
    est = statistic(values, stat) if est is None else est
    assert est is not None  # values is not empty
    if stat == "mean":
        if n < 2:
            return None, None
        half = Z95 * float(values.std(ddof=1)) / math.sqrt(n)
        return est - half, est + half
    q = float(stat[1:]) / 100
    sd = math.sqrt(n * q * (1 - q))
    r = min(n, max(1, math.floor(n * q - Z95 * sd)))
    s = min(n, max(1, math.ceil(n * q + Z95 * sd) + 1))
    ordered = np.sort(values) if ordered is None else ordered
    return min(float(ordered[r - 1]), est), max(float(ordered[s - 1]), est)


def _percentiles(ordered: np.ndarray, qs: list[float]) -> list[float]:
    """np.percentile(values, qs, method="linear") read off the already sorted values: numpy's own
    steps (virtual index (n - 1) q, its floor and the next rank, numpy's _lerp), so the same bits
    without numpy partitioning the array again (tests/test_answers.py checks it against numpy)."""
    n = ordered.size
    if np.isnan(ordered[-1]):  # numpy's answer with NaNs among the values: NaN
        return [float(v) for v in np.percentile(ordered, qs, method="linear")]
    virtual = (n - 1) * np.true_divide(np.asarray(qs, dtype=float), 100)
    prev = np.floor(virtual)
    gamma = np.asanyarray(virtual - prev, dtype=virtual.dtype)
    lo = prev.astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    above = virtual >= n - 1
    lo[above], hi[above] = n - 1, n - 1
    return [float(v) for v in _lerp(ordered[lo], ordered[hi], gamma)]


def _point_stats(values: np.ndarray) -> dict[str, tuple[float | None, float | None, float | None]]:
    """stat -> (value, low, high) for every stat, sorting once and reading every percentile and
    order statistic off the sorted values (the same numbers as `statistic`, a hundred times
    faster)."""
    if values.size == 0:
        return {s: (None, None, None) for s in STATS}
    ordered = np.sort(values)
    pct = _percentiles(ordered, [float(s[1:]) for s in STATS if s.startswith("p")])
    est = {"mean": float(values.mean()), "min": float(ordered[0]), "max": float(ordered[-1]),
           **{s: float(v) for s, v in zip([s for s in STATS if s.startswith("p")], pct)}}
    return {s: (est[s], *interval(values, s, ordered, est[s])) for s in STATS}


def repeat_halfwidth(per_repeat: list[float | None]) -> float | None:
    """Half-width of the 95 % interval the repeats' own statistics give the pooled one (module
    docstring); None below two repeats with a value."""
    vals = np.asarray([v for v in per_repeat if v is not None], dtype=float)
    if vals.size < 2:
        return None
    return Z95 * float(vals.std(ddof=1)) / math.sqrt(vals.size)


def _widen(stats: dict[str, tuple[float | None, float | None, float | None]],
           per_repeat: list[dict[str, np.ndarray]], metric: str) -> None:
    """Widen each interval of `stats` (one metric of one point) to hold the drift between the
    point's repeats (module docstring), in place."""
    by_rep = [_point_stats(r.get(metric, _NONE)) for r in per_repeat]
    for s in INTERVAL_STATS:
        v, lo, hi = stats[s]
        half = repeat_halfwidth([r[s][0] for r in by_rep])
        if v is None or half is None:
            continue
        low = max(0.0, v - half)  # a latency is never negative, however far the repeats drifted
        stats[s] = (v, low if lo is None else min(lo, low), v + half if hi is None else max(hi, v + half))


def _us(ms: float | None) -> float | None:
    """Milliseconds kept to the microsecond (module docstring)."""
    return None if ms is None else round(ms, 3)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return math.fsum(vals) / len(vals) if vals else None


def _measured(df: pl.DataFrame) -> pl.DataFrame:
    """`df` with a measurement_id on every row: a database's own, or, in one cell's frames that
    carry none yet (analyse, before the aggregate names the measurement), the cell_id."""
    mid = pl.col("measurement_id") if "measurement_id" in df.columns else pl.lit(None, pl.String)
    return df.with_columns(pl.coalesce(mid.cast(pl.String), pl.col("cell_id")).alias("measurement_id"))


_NONE = np.empty(0)


def _runs(df: pl.DataFrame, point: list[str]) -> np.ndarray:
    """Where each run of equal points starts."""
    return np.flatnonzero(df.select(pl.struct(point).rle_id()).to_series().diff().fill_null(1).to_numpy())


def _latency_values(ok: pl.DataFrame, point: list[str]) -> dict[tuple[Any, ...], dict[str, np.ndarray]]:
    """point -> metric -> its non-null values (ITL: every gap of every request), in row order,
    as numpy arrays: sliced out of whole columns, never a Python list per value. Rows are
    sorted by point only when a point's rows are not already together (a cell's file has them
    in phase order), since sorting moves every ITL list."""
    ok = ok.select(*point, *(pl.col(f"{m}_ms").cast(pl.List(pl.Float64) if m == "itl" else pl.Float64)
                             for m in METRICS))
    if ok.is_empty():
        return {}
    starts = _runs(ok, point)
    if starts.size != ok.select(point).n_unique():
        ok = ok.sort(point, maintain_order=True, nulls_last=True)
        starts = _runs(ok, point)
    bounds = [*starts.tolist(), ok.height]
    keys = ok.select(point)[starts.tolist()].rows()
    cols: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
    for m in METRICS:
        col = ok[f"{m}_ms"]
        lens = col.list.len().fill_null(0).to_numpy() if m == "itl" else np.ones(ok.height, dtype=np.int64)
        flat = col.explode(empty_as_null=False, keep_nulls=False) if m == "itl" else col
        ends = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
        cols[m] = (flat.to_numpy(), flat.is_not_null().to_numpy() if flat.null_count() else None, ends)
    out = {}
    for key, a, b in zip(keys, bounds, bounds[1:], strict=False):
        out[key] = {m: v[e[a]:e[b]] if valid is None else v[e[a]:e[b]][valid[e[a]:e[b]]]
                    for m, (v, valid, e) in cols.items()}
    return out


def points(requests: pl.DataFrame, phases: pl.DataFrame) -> pl.DataFrame:
    """One row per (measurement, phase, step) of `phases` (CURVE_SCHEMA), ordered by measurement
    and rate. A measurement (identity.py), not a cell: a merged database can hold one cell
    measured twice (two hosts, two versions), and their requests are never pooled.

    rps and output_tok_s are the phases' own (means over repeats); input_tok_s is the ok
    requests' server-reported prompt tokens over the same window (phases.duration_s)."""
    if phases.is_empty():
        return pl.DataFrame(schema=CURVE_SCHEMA)
    requests, phases = _measured(requests), _measured(phases)
    point = ["measurement_id", "cell_id", "phase", "step"]
    keys = ["measurement_id", "cell_id", "repeat", "phase", "step"]
    ok = requests.filter(pl.col("status") == "ok")
    prompt = ok.group_by(keys).agg(pl.col("prompt_tokens").sum().alias("prompt_tokens"))
    per_rep = phases.select([*keys, "rps", "output_tok_s", "duration_s"]).join(prompt, on=keys, how="left")
    per_rep = per_rep.with_columns(
        (pl.col("prompt_tokens").fill_null(0) / pl.col("duration_s")).alias("input_tok_s"))
    reps = per_rep.group_by(point).agg(
        pl.col("rps"), pl.col("output_tok_s"), pl.col("input_tok_s"), pl.col("repeat").n_unique().alias("n"))
    rows = []
    lat_by_key = _latency_values(ok, point)
    by_repeat: dict[tuple[Any, ...], list[dict[str, np.ndarray]]] = {}
    if phases["repeat"].n_unique() > 1:
        for key, vals in _latency_values(ok, [*point, "repeat"]).items():
            by_repeat.setdefault(key[:-1], []).append(vals)
    for rep in reps.iter_rows(named=True):
        key = tuple(rep[k] for k in point)
        got = lat_by_key.get(key, {})
        row: dict[str, Any] = {
            **dict(zip(point, key)),
            "rps": _mean(rep["rps"]), "output_tok_s": _mean(rep["output_tok_s"]),
            "input_tok_s": _mean(rep["input_tok_s"]), "n_ok": got.get("ttft", _NONE).size,
            "n_repeats": rep["n"],
        }
        for m in METRICS:
            stats = _point_stats(got.get(m, _NONE))
            if len(by_repeat.get(key, ())) > 1:
                _widen(stats, by_repeat[key], m)
            for s, (v, lo, hi) in stats.items():
                row[f"{m}_{s}_ms"] = _us(v)
                if s in INTERVAL_STATS:
                    row[f"{m}_{s}_lo_ms"], row[f"{m}_{s}_hi_ms"] = _us(lo), _us(hi)
        rows.append(row)
    out = pl.DataFrame(rows, schema=CURVE_SCHEMA)
    return out.sort(["measurement_id", "rps", "phase", "step"], nulls_last=True)
