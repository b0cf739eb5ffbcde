"""The most requests per second one replica holds under a latency SLO.

A cell's latency-throughput curve is its measured points (achieved rps, latency statistic):
the sequential phase, every sweep step and the burst. For an SLO "statistic <= threshold":

  above-range   every point meets it: the answer is the highest measured rate (the burst's)
  below-range   no point meets it, not even the sequential rate: no answer (max_rps is null)
  measured      the highest point that meets it has nothing above it that fails... or sits
                exactly on the threshold
  interpolated  the SLO is crossed between two adjacent points: linear interpolation of rps
                where the statistic reaches the threshold

Non-monotone curves (noise makes latency dip at a higher rate) are read from the top: the
answer comes from the highest-rate point that meets the SLO and its failing neighbour above it,
so a lucky dip below a failing point never inflates the answer beyond a measured failure.

An SLO with several conditions holds where all hold: its answer is the lowest of its
conditions' answers. Its 95% interval is the same rule read twice more, with every point's
statistic at the high (pessimistic) and at the low (optimistic) end of that statistic's own 95%
interval (curve.py): a higher latency never raises the answer, so the two readings bracket it.
When the optimistic reading is above-range the true capacity may be anywhere above the highest
measured rate, so the interval has no upper end (None).

The report carries a JavaScript port of `max_rps_under` and `answer` (web/slo.js): any change here
must be made there too (tests/test_answers_browser.py checks that both give identical numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SLOResult:
    max_rps: float | None
    basis: str  # interpolated | measured | below-range | above-range | no-data


@dataclass(frozen=True)
class Condition:
    """One condition of an SLO, on one curve: the statistic at each point (aligned with the
    rates given to `answer`), the low and high ends of its 95% interval (None where it has
    none: the value is used), and the threshold it must not exceed."""
    values: Sequence[float | None]
    lo: Sequence[float | None]
    hi: Sequence[float | None]
    threshold: float


@dataclass(frozen=True)
class SLOAnswer:
    max_rps: float | None
    basis: str
    ci_low_rps: float | None  # None: not even the pessimistic reading meets it anywhere
    ci_high_rps: float | None  # None: unbounded above (the optimistic reading is above-range)

    @property
    def lower_bound(self) -> bool:
        """above-range: every measured rate meets the SLO, so the true capacity is higher."""
        return self.basis == "above-range"


def max_rps_under(points: Sequence[tuple[float | None, float | None]], threshold: float) -> SLOResult:
    """points: (achieved rps, statistic) pairs; None statistics (no successful request) fail.
    Points are ordered by rate (a stable sort: equal rates keep their given order)."""
    pts = sorted(((r, v) for r, v in points if r is not None and r > 0), key=lambda p: p[0])
    if not pts:
        return SLOResult(None, "no-data")

    def ok(v: float | None) -> bool:
        return v is not None and v <= threshold

    meeting = [i for i, (_, v) in enumerate(pts) if ok(v)]
    if not meeting:
        return SLOResult(None, "below-range")
    i = meeting[-1]
    if i == len(pts) - 1:
        return SLOResult(pts[i][0], "above-range")
    (r1, v1), (r2, v2) = pts[i], pts[i + 1]
    assert v1 is not None  # it meets the SLO
    if v1 == threshold or v2 is None or v2 == v1:
        return SLOResult(r1, "measured")
    rps = r1 + (threshold - v1) * (r2 - r1) / (v2 - v1)
    return SLOResult(min(max(rps, r1), r2), "interpolated")


def lowest(rps: Sequence[float | None], conds: Sequence[tuple[Sequence[float | None], float]]) -> SLOResult:
    """All conditions must hold: the first condition met nowhere decides (no answer), otherwise
    the lowest answer wins (the first of equal ones)."""
    best: SLOResult | None = None
    for values, threshold in conds:
        res = max_rps_under(list(zip(rps, values)), threshold)
        if res.max_rps is None:
            return res
        if best is None or best.max_rps is None or res.max_rps < best.max_rps:
            best = res
    assert best is not None, "an SLO has at least one condition"
    return best


def answer(rps: Sequence[float | None], conditions: Sequence[Condition]) -> SLOAnswer:
    """The SLO's answer on one curve (rates `rps`), with its 95% interval."""
    def end(c: Condition, bound: Sequence[float | None]) -> list[float | None]:
        return [v if b is None else b for v, b in zip(c.values, bound)]

    res = lowest(rps, [(c.values, c.threshold) for c in conditions])
    if res.max_rps is None:
        return SLOAnswer(None, res.basis, None, None)
    pess = lowest(rps, [(end(c, c.hi), c.threshold) for c in conditions])
    opt = lowest(rps, [(end(c, c.lo), c.threshold) for c in conditions])
    return SLOAnswer(res.max_rps, res.basis, pess.max_rps,
                     None if opt.basis == "above-range" else opt.max_rps)
