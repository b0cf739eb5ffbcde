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
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SLOResult:
    max_rps: float | None
    basis: str  # interpolated | measured | below-range | above-range | no-data


def max_rps_under(points: list[tuple[float, float | None]], threshold: float) -> SLOResult:
    """points: (achieved rps, statistic) pairs; None statistics (no successful request) fail."""
    pts = sorted((r, v) for r, v in points if r is not None and r > 0)
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
