"""`almanac diff BASE NEW`: what changed between two result sets, with statistics, as a gate.

Cells are matched by what they mean and where they ran (identity.MATCH_KEY: model, engine,
quantization, shape, hardware kind) — engine versions and flags may differ, that is the point.
Where one side holds several measurements of a cell, the latest (by finish time) is compared.
`--base-engine A --new-engine B` compares two engine entries instead (two versions of an engine,
or tuned against default flags: docs/recipes.md), from two result sets or from one.

Per matched cell it reports the relative change (new / base − 1) of
  - max req/s under every SLO of the base (analyse.py's rule, recomputed from the requests), and
  - TTFT and TPOT p50 / p95 of the sequential phase (one request at a time: the same load on
    both sides, so the change is the engine's and not the load's),
with a bootstrap confidence interval of the change (simultaneous over every metric compared in
the diff, see `conclude`): the requests of both sides are resampled
with replacement (within each phase point, achieved rates held at their measured values) and
the change recomputed; the CI is the 2.5th–97.5th percentile. A point's achieved rate is itself
a measurement of n requests, so each resample also draws it as rate × Poisson(n) / n (the count
noise of a rate measured from n events); holding rates fixed gave CIs of max req/s far narrower
than the spread between reruns of the same simulator, and false alarms.
A percentile needs samples beyond it: p95 is compared only with at least 5 requests above it
(100 sequential requests) on both sides, otherwise it is *too-few-samples* (shown, never gated):
the bootstrap cannot say how far a p95 of 16 requests — their maximum — may move.

A metric *regressed* when it got worse by more than the threshold and its CI excludes zero;
*improved* likewise the other way; otherwise *unchanged*. A max req/s that is a bound on either
side (above-range: every point met the SLO) is *not-comparable*, except that an answer lost
(below-range on the new side) is a regression and one gained an improvement. Cells on one side
only are *only-in-base* / *only-in-new*. The gate fails (exit 1) on any regression.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from . import identity, reqstore
from .analyse import parse_metric
from .config import defaults
from .curve import statistic
from .db import frame
from .merge import merge
from .slo import SLOResult, lowest

LATENCY = (("ttft", "p50"), ("ttft", "p95"), ("tpot", "p50"), ("tpot", "p95"))
MIN_TAIL = 5  # samples beyond a percentile needed to compare it
COLUMNS: dict[str, Any] = {
    **{k: pl.Int64 if k in ("isl", "osl") else pl.String for k in identity.MATCH_KEY},
    "metric": pl.String, "base": pl.Float64, "new": pl.Float64, "change_pct": pl.Float64,
    "ci_low_pct": pl.Float64, "ci_high_pct": pl.Float64, "status": pl.String,
    "base_measurement": pl.String, "new_measurement": pl.String,
}

# -- the diff's own resampling: each point's requests, drawn with replacement -----------------
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


def _answer(points: list[dict[str, Any]], conditions: list[dict[str, Any]],
            idxs: list[np.ndarray] | None = None) -> SLOResult:
    """The SLO's answer (slo.lowest: every condition must hold), on `idxs` (a resample of each
    point's requests) when given."""
    return lowest([p["rps"] for p in points],
                  [([_value(p, c["metric"], None if idxs is None else idxs[i]) for i, p in enumerate(points)],
                    float(c["threshold_ms"])) for c in conditions])



def _load(src: str, tmp: Path) -> duckdb.DuckDBPyConnection:
    """Any merge source, validated and in today's schema (merge refuses what it cannot read)."""
    db = tmp / f"{len(list(tmp.iterdir()))}.duckdb"
    merge([src], db)
    return reqstore.connect(db)


def _latest(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    key = ", ".join(identity.MATCH_KEY)
    return frame(con, f"SELECT {key}, measurement_id FROM cells WHERE status = 'ok' "
                      f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY finished_at DESC NULLS LAST, "
                      "measurement_id DESC) = 1")


def _side(con: duckdb.DuckDBPyConnection, mid: str) -> dict[str, Any]:
    req = frame(con, "SELECT * FROM requests WHERE measurement_id = ?", [mid])
    ph = frame(con, "SELECT * FROM phases WHERE measurement_id = ?", [mid])
    seq = req.filter((pl.col("status") == "ok") & (pl.col("phase") == "sequential"))
    return {"points": _points(req, ph),
            "ttft": seq["ttft_ms"].drop_nulls().to_numpy(), "tpot": seq["tpot_ms"].drop_nulls().to_numpy()}


def _slos(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The SLOs the base was analysed with: the configured definitions by name, or rebuilt from
    a single-condition row."""
    known = {s["name"]: s for s in defaults("analysis")["slos"]}
    out = []
    for name, metric, thr in con.execute("SELECT DISTINCT slo, metric, threshold_ms FROM slo ORDER BY 1").fetchall():
        if name in known:
            out.append(known[name])
        elif thr is not None and "+" not in metric:
            out.append({"name": name, "conditions": [{"metric": metric, "threshold_ms": thr}]})
    return out


def _pct(side: dict[str, Any], name: str, stat: str, idx: np.ndarray | None = None) -> float | None:
    v = side[name] if idx is None else side[name][idx]
    return float(np.percentile(v, float(stat[1:]))) if v.size else None


def _classify(change: float | None, lo: float | None, hi: float | None, worse_if_up: bool,
              threshold: float) -> str:
    if change is None or lo is None or hi is None:
        return "not-comparable"
    bad, bad_lo = (change, lo) if worse_if_up else (-change, -hi)
    good, good_lo = (-change, -hi) if worse_if_up else (change, lo)
    if bad > threshold and bad_lo > 0:
        return "regressed"
    if good > threshold and good_lo > 0:
        return "improved"
    return "unchanged"


def _ratio(b: float | None, n: float | None) -> float | None:
    return None if b is None or n is None or b == 0 else n / b - 1


def compare_cell(base: dict[str, Any], new: dict[str, Any], slos: list[dict[str, Any]], threshold: float,
                 n_boot: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One row per metric: change, CI and status."""
    rows = []
    for slo in slos:
        b, n = _answer(base["points"], slo["conditions"]), _answer(new["points"], slo["conditions"])
        metric = f"max_rps[{slo['name']}]"
        if b.basis == "above-range" or n.basis == "above-range" or (b.max_rps is None and n.max_rps is None):
            rows.append({"metric": metric, "base": b.max_rps, "new": n.max_rps, "change_pct": None,
                         "ci_low_pct": None, "ci_high_pct": None, "status": "not-comparable"})
            continue
        if b.max_rps is None or n.max_rps is None:
            rows.append({"metric": metric, "base": b.max_rps, "new": n.max_rps,
                         "change_pct": -100.0 if n.max_rps is None else None, "ci_low_pct": None,
                         "ci_high_pct": None, "status": "regressed" if n.max_rps is None else "improved"})
            continue
        boots = []
        for _ in range(n_boot):
            bi = [rng.integers(0, max(1, len(p["itl"])), len(p["itl"])) for p in base["points"]]
            ni = [rng.integers(0, max(1, len(p["itl"])), len(p["itl"])) for p in new["points"]]
            r = _ratio(_answer(_rates_drawn(base["points"], rng), slo["conditions"], bi).max_rps,
                       _answer(_rates_drawn(new["points"], rng), slo["conditions"], ni).max_rps)
            boots.append(-1.0 if r is None else r)  # an answer lost in a resample: as bad as it gets
        rows.append(_row(metric, b.max_rps, n.max_rps, boots, False, threshold))
    for name, stat in LATENCY:
        if not (base[name].size and new[name].size):
            continue
        if min(base[name].size, new[name].size) * (1 - float(stat[1:]) / 100) < MIN_TAIL:
            rows.append({"metric": f"{name}_{stat}_ms", "base": _pct(base, name, stat), "new": _pct(new, name, stat),
                         "change_pct": 100 * (_ratio(_pct(base, name, stat), _pct(new, name, stat)) or 0.0),
                         "ci_low_pct": None, "ci_high_pct": None, "status": "too-few-samples"})
            continue
        boots = []
        for _ in range(n_boot):
            r = _ratio(_pct(base, name, stat, rng.integers(0, base[name].size, base[name].size)),
                       _pct(new, name, stat, rng.integers(0, new[name].size, new[name].size)))
            if r is not None:
                boots.append(r)
        rows.append(_row(f"{name}_{stat}_ms", _pct(base, name, stat), _pct(new, name, stat), boots, True,
                         threshold))
    return rows


def _rates_drawn(points: list[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
    """The points with each achieved rate redrawn as rate × Poisson(n) / n (n: its requests)."""
    out = []
    for p in points:
        n = max(1, len(p["itl"]))
        out.append({**p, "rps": p["rps"] * max(1, rng.poisson(n)) / n})
    return out


def _row(metric: str, b: float | None, n: float | None, boots: list[float], worse_if_up: bool,
         threshold: float) -> dict[str, Any]:
    """A compared metric; its CI and status are set by `conclude`, once the number of compared
    metrics (the family the intervals must hold for together) is known."""
    change = _ratio(b, n)
    return {"metric": metric, "base": b, "new": n, "change_pct": None if change is None else 100 * change,
            "_boots": boots, "_worse_if_up": worse_if_up, "_change": change}


def conclude(rows: list[dict[str, Any]], threshold: float, level: float = 0.95) -> list[dict[str, Any]]:
    """Simultaneous intervals: with m compared metrics in the whole diff, each interval is taken
    at 1 − (1 − level)/m (Bonferroni), so that a diff of unchanged results flags anything at
    most (1 − level) of the time — not once per metric."""
    m = max(1, sum(1 for r in rows if r.get("_boots")))
    alpha = (1 - level) / m
    for r in rows:
        if "_boots" not in r:
            continue
        boots = r.pop("_boots")
        lo, hi = (np.percentile(boots, [50 * alpha, 100 - 50 * alpha]).tolist() if boots else (None, None))
        r["ci_low_pct"] = None if lo is None else 100 * lo
        r["ci_high_pct"] = None if hi is None else 100 * hi
        r["status"] = _classify(r.pop("_change"), lo, hi, r.pop("_worse_if_up"), threshold)
    return rows


def _one_engine(cells: pl.DataFrame, engine: str, label: str, side: str, src: str) -> pl.DataFrame:
    """The cells of one engine entry, under a shared label so that two entries (two versions,
    or tuned against default flags) match cell by cell."""
    if engine not in set(cells["engine"]):
        have = ", ".join(sorted(set(cells["engine"]))) or "none"
        raise ValueError(f"--{side}-engine {engine}: no ok cell of that engine in {src} (engines there: {have})")
    return cells.filter(pl.col("engine") == engine).with_columns(engine=pl.lit(label))


def diff(base_src: str, new_src: str, threshold: float = 0.05, n_boot: int = 1000, seed: int = 0,
         engines: tuple[str, str] | None = None) -> pl.DataFrame:
    """The change table (COLUMNS) of NEW against BASE; with `engines` (base entry, new entry),
    only those two engine entries, matched with each other (BASE and NEW may be one result set)."""
    rng = np.random.default_rng(seed)
    key = list(identity.MATCH_KEY)
    with tempfile.TemporaryDirectory(prefix="almanac-diff-") as td:
        bcon, ncon = _load(base_src, Path(td)), _load(new_src, Path(td))
        try:
            b, n = _latest(bcon), _latest(ncon)
            if engines:
                label = f"{engines[0]} -> {engines[1]}"
                b = _one_engine(b, engines[0], label, "base", base_src)
                n = _one_engine(n, engines[1], label, "new", new_src)
            slos = _slos(bcon)
            joined = b.join(n, on=key, how="full", suffix="_new", coalesce=True, nulls_equal=True).sort(key)
            rows = []
            for r in joined.iter_rows(named=True):
                ident = {k: r[k] for k in key} | {"base_measurement": r["measurement_id"],
                                                  "new_measurement": r["measurement_id_new"]}
                if r["measurement_id"] is None or r["measurement_id_new"] is None:
                    where = "only-in-new" if r["measurement_id"] is None else "only-in-base"
                    rows.append(ident | {"metric": "-", "status": where})
                    continue
                bs, ns = _side(bcon, r["measurement_id"]), _side(ncon, r["measurement_id_new"])
                rows += [ident | row for row in compare_cell(bs, ns, slos, threshold, n_boot, rng)]
        finally:
            bcon.close()
            ncon.close()
    rows = conclude(rows, threshold)
    return pl.DataFrame([{c: row.get(c) for c in COLUMNS} for row in rows], schema=COLUMNS)


def gate(result: pl.DataFrame) -> int:
    """The exit status: 1 when anything regressed (beyond the threshold, CI excluding zero)."""
    return int((result["status"] == "regressed").any())
