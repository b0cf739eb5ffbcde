"""'Any engine': under one SLO, the best engine + quantization for a model x shape x price key
(the GPU model, or cpu: cost.price_key), its runner-up, and whether the two are told apart by their 95% intervals.

Rank by max_rps (higher first; configurations without an answer do not rank). The winner is
clear only when the two intervals do not overlap; an interval's missing low end counts as 0 (not
even the pessimistic reading meets the SLO anywhere) and a missing high end as unbounded (the
optimistic reading meets it at every measured rate). So a lower-bound answer ("≥ 1.63") that
ranks second is never beaten clearly: it may be higher than it says. The report's JavaScript
(web/explorer.js, `verdict`) follows the same rule and wording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GROUP = ("model", "isl", "osl", "price_key")
NO_CLEAR_WINNER = "no clear winner"
CLEAR_WINNER = "clear winner"


@dataclass(frozen=True)
class Verdict:
    best: dict[str, Any] | None
    runner_up: dict[str, Any] | None
    overlap: bool | None  # None: fewer than two configurations meet the SLO
    text: str


def label(row: dict[str, Any]) -> str:
    return f"{row['engine']} {row['quantization']}"


def _interval(row: dict[str, Any]) -> tuple[float, float]:
    lo = row.get("ci_low_rps")
    hi = row.get("ci_high_rps")
    return (0.0 if lo is None else lo), (math.inf if hi is None else hi)


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    (alo, ahi), (blo, bhi) = _interval(a), _interval(b)
    return alo <= bhi and blo <= ahi


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with an answer, highest max_rps first (ties keep their order)."""
    return sorted((r for r in rows if r.get("max_rps") is not None), key=lambda r: -r["max_rps"])


def verdict(rows: list[dict[str, Any]]) -> Verdict:
    """The best of `rows` (one SLO, one model x shape x price key) and how clearly it wins."""
    ranked = rank(rows)
    if not ranked:
        return Verdict(None, None, None, "no configuration meets it")
    if len(ranked) == 1:
        return Verdict(ranked[0], None, None, f"only {label(ranked[0])} meets it")
    a, b = ranked[0], ranked[1]
    o = overlap(a, b)
    text = (f"{NO_CLEAR_WINNER}: the 95% intervals of {label(a)} and {label(b)} overlap" if o
            else f"{CLEAR_WINNER}: {label(a)}")
    return Verdict(a, b, o, text)


def margin_pct(best: dict[str, Any], runner_up: dict[str, Any]) -> float:
    """How much more the best holds than the runner-up, in percent of the runner-up."""
    return (best["max_rps"] / runner_up["max_rps"] - 1) * 100


def by_group(rows: list[dict[str, Any]], keys: tuple[str, ...] = GROUP) -> dict[tuple, Verdict]:
    """One verdict per group of rows (in the rows' order of first appearance)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return {k: verdict(g) for k, g in groups.items()}


def table(rows: list[dict[str, Any]], keys: tuple[str, ...] = GROUP) -> list[dict[str, Any]]:
    """`by_group` as records: the group's keys, best, runner_up (answer rows), overlap, verdict."""
    return [{**dict(zip(keys, k)), "best": v.best, "runner_up": v.runner_up, "overlap": v.overlap,
             "verdict": v.text} for k, v in by_group(rows, keys).items()]
