"""Whether a number is the engine's: checks per phase and per SLO answer, and the trust grade.

The grade is a function of recorded facts, never a hand-set label (docs/methodology.md,
"Trust"). Every check that fails adds a reason with a severity; the grade is the worst severity
among the reasons, `A` when there is none:

  D  the number is probably not the engine's: client saturated, prefix-cache hits, more than
     FAILED_D of the requests failed, or the engine counted other requests than ours
  C  doubtful: client - engine gap beyond the bound, burst did not reach its concurrency,
     failed requests or token mismatches, CI wider than CI_C of the value, repeat CV above CV_C
  B  unverified or noisy: no engine metrics to compare with, CI wider than CI_B, a
     non-monotone curve, repeat CV above CV_B

Agreement bound (documented in methodology): |client - engine| mean TTFT above
max(TTFT_GAP_MS, GAP_REL x engine TTFT), or mean TPOT above max(TPOT_GAP_MS, GAP_REL x engine
TPOT). The client's numbers include HTTP, the API server's tokenization and detokenization, so a
positive gap of a few ms is expected (measured here: see methodology); beyond the bound the
difference is the harness or the machine, not the engine.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from . import tables

TTFT_GAP_MS = 50.0
TPOT_GAP_MS = 5.0
GAP_REL = 0.25
FAILED_D = 0.05
CI_B, CI_C = 0.2, 0.5
CV_B, CV_C = 0.1, 0.25
NONMONOTONE_DIP = 0.1  # a statistic falling by more than 10 % at a higher rate

GRADES = "ABCD"


def grade(reasons: list[tuple[str, str]]) -> str:
    """The worst severity among (severity, reason) pairs; A when there is none."""
    return max((s for s, _ in reasons), key=GRADES.index, default="A")


def _fmt(reasons: list[tuple[str, str]]) -> str | None:
    return "; ".join(f"{s}: {r}" for s, r in reasons) or None


def burst_guard(expected: int | None, running_peak: float | None, waiting_peak: float | None
                ) -> tuple[str, int | None]:
    """(guard, capped_by) of a burst: 'reached' when the engine ran as many requests at once as
    the burst offered (bounded by the client's max_concurrency); 'capped-by-engine' when the
    rest were waiting in the engine's queue (its own batch limit; capped_by says by how many);
    'not-reached' when they were in neither (the client did not deliver the concurrency);
    'unknown' without a running-requests gauge."""
    if expected is None or running_peak is None:
        return "unknown", None
    if running_peak >= expected:
        return "reached", 0
    capped_by = int(expected - running_peak)
    if running_peak + (waiting_peak or 0) >= expected:
        return "capped-by-engine", capped_by
    return "not-reached", capped_by


def phase_reasons(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The failed checks of one `phases` row (with its engine columns filled)."""
    out: list[tuple[str, str]] = []
    n = (r.get("n_ok") or 0) + (r.get("n_failed") or 0)
    if r.get("client_saturated"):
        out.append(("D", "client saturated"))
    if n and (r.get("n_failed") or 0) / n > FAILED_D:
        out.append(("D", f"{r['n_failed']} of {n} requests failed"))
    elif r.get("n_failed"):
        out.append(("C", f"{r['n_failed']} of {n} requests failed"))
    if r.get("n_token_mismatch"):
        out.append(("C", f"{r['n_token_mismatch']} token-count mismatches"))
    if r.get("prefix_cache_guard") == "hits":
        out.append(("D", f"{r['engine_prefix_cache_hits']:g} prefix-cache hits"))
    if r.get("engine_requests") is not None and n and r["engine_requests"] > n:
        out.append(("D", f"the engine counted {r['engine_requests']:g} requests, the client sent {n}"))
    if r.get("engine_ttft_mean_ms") is None and r.get("engine_tpot_mean_ms") is None:
        out.append(("B", "no engine metrics to check the client's numbers against"))
    elif r.get("engine_gap_flag"):
        out.append(("C", "client - engine gap beyond the bound (TTFT "
                         f"{_ms(r.get('client_minus_engine_ttft_ms'))}, TPOT {_ms(r.get('client_minus_engine_tpot_ms'))})"))
    if r.get("burst_guard") == "not-reached":
        out.append(("C", f"burst reached {r['engine_running_peak']:g} of "
                         f"{r['burst_expected_concurrency']} concurrent requests"))
    return out


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f} ms"


def _gap_flag(gap: float | None, engine: float | None, floor: float) -> bool:
    return gap is not None and engine is not None and abs(gap) > max(floor, GAP_REL * abs(engine))


def check_phases(phases: pl.DataFrame, burst_limit: int | None = None) -> pl.DataFrame:
    """`phases` with the agreement, guard and grade columns computed from its other columns.
    `burst_limit`: the client's max_concurrency (None: unbounded)."""
    rows = []
    for r in phases.iter_rows(named=True):
        r["client_minus_engine_ttft_ms"] = _diff(r.get("ttft_mean_ms"), r.get("engine_ttft_mean_ms"))
        r["client_minus_engine_tpot_ms"] = _diff(r.get("tpot_mean_ms"), r.get("engine_tpot_mean_ms"))
        r["engine_gap_flag"] = (
            _gap_flag(r["client_minus_engine_ttft_ms"], r.get("engine_ttft_mean_ms"), TTFT_GAP_MS)
            or _gap_flag(r["client_minus_engine_tpot_ms"], r.get("engine_tpot_mean_ms"), TPOT_GAP_MS))
        hits = r.get("engine_prefix_cache_hits")
        r["prefix_cache_guard"] = "unknown" if hits is None else ("hits" if hits > 0 else "ok")
        if r["phase"] == "burst":
            n = (r.get("n_ok") or 0) + (r.get("n_failed") or 0)
            expected = min(n, burst_limit) if burst_limit else n
            r["burst_expected_concurrency"] = expected
            r["burst_guard"], r["burst_capped_by"] = burst_guard(
                expected, r.get("engine_running_peak"), r.get("engine_waiting_peak"))
        reasons = phase_reasons(r)
        r["trust_grade"], r["trust_reasons"] = grade(reasons), _fmt(reasons)
        rows.append(r)
    return tables.frame(tables.PHASES, rows) if rows else tables.conform(tables.PHASES, phases)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def answer_reasons(phase_grades: list[tuple[str, str | None]], max_rps: float | None,
                   ci: tuple[float | None, float | None], nonmonotone: bool, repeat_cv: float | None
                   ) -> list[tuple[str, str]]:
    """The failed checks of one SLO answer: its phases' own (the worst phase's grade carries
    over), the CI width relative to the value, a non-monotone curve, the spread of repeats."""
    out: list[tuple[str, str]] = []
    worst = max(phase_grades, key=lambda g: GRADES.index(g[0]), default=None)
    if worst is not None and worst[0] != "A":
        out.append((worst[0], f"a phase of the curve is graded {worst[0]} ({worst[1]})"))
    lo, hi = ci
    if max_rps and lo is not None and hi is not None:
        rel = (hi - lo) / max_rps
        if rel > CI_B:
            out.append(("C" if rel > CI_C else "B", f"CI width {rel:.0%} of the value"))
    if nonmonotone:
        out.append(("B", "latency falls as the rate rises somewhere on the curve"))
    if repeat_cv is not None and repeat_cv > CV_B:
        out.append(("C" if repeat_cv > CV_C else "B", f"repeats differ by CV {repeat_cv:.0%}"))
    return out


def nonmonotone(values: list[float | None]) -> bool:
    """True when a statistic ordered by rising rate dips by more than NONMONOTONE_DIP."""
    vals = [v for v in values if v is not None]
    return any(b < a * (1 - NONMONOTONE_DIP) for a, b in zip(vals, vals[1:]))


def fmt(reasons: list[tuple[str, str]]) -> str | None:
    return _fmt(reasons)
