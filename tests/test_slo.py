import pytest

from llm_almanac.slo import SLOResult, max_rps_under

from conftest import frames


def test_crossing_is_interpolated_linearly():
    # TTFT p95 rises with rate; 1000 ms is crossed between 2 rps (600 ms) and 4 rps (1400 ms).
    pts = [(1.0, 200.0), (2.0, 600.0), (4.0, 1400.0), (5.0, 9000.0)]
    r = max_rps_under(pts, 1000.0)
    assert r.basis == "interpolated" and r.max_rps == pytest.approx(3.0)


def test_all_meet_is_above_range_at_highest_rate():
    assert max_rps_under([(5.0, 300.0), (1.0, 100.0), (3.0, 200.0)], 1000) == SLOResult(5.0, "above-range")


def test_none_meet_is_below_range_without_answer():
    assert max_rps_under([(1.0, 1200.0), (2.0, 1500.0)], 1000) == SLOResult(None, "below-range")


def test_point_on_threshold_is_measured():
    assert max_rps_under([(1.0, 100.0), (2.0, 300.0), (3.0, 900.0)], 300.0) == SLOResult(2.0, "measured")


def test_non_monotone_reads_from_the_top():
    # A noisy dip at 4 rps (below threshold) after a failure at 3 rps: the answer comes from the
    # highest meeting point (4 rps) and its failing neighbour (5 rps), never beyond 5.
    pts = [(1.0, 100.0), (2.0, 500.0), (3.0, 1100.0), (4.0, 900.0), (5.0, 1900.0)]
    r = max_rps_under(pts, 1000.0)
    assert r.basis == "interpolated" and r.max_rps == pytest.approx(4.1)


def test_single_point_and_missing_statistics():
    assert max_rps_under([(2.0, 10.0)], 100) == SLOResult(2.0, "above-range")
    assert max_rps_under([(2.0, 1000.0)], 100) == SLOResult(None, "below-range")
    assert max_rps_under([], 100) == SLOResult(None, "no-data")
    # a step where nothing succeeded (statistic None) fails the SLO
    assert max_rps_under([(1.0, 50.0), (2.0, None)], 100) == SLOResult(1.0, "measured")





def test_analyse_interpolates_pools_repeats_and_brackets_with_ci():
    from llm_almanac.analyse import analyse

    req, ph = frames([("sequential", 0, 1.0, 200.0), ("sweep", 0, 2.0, 600.0),
                       ("sweep", 1, 3.0, 1400.0), ("burst", 0, 4.0, 5000.0)])
    out = analyse(req, ph, [{"name": "t1000", "conditions": [{"metric": "ttft_p95_ms", "threshold_ms": 1000}]},
                            {"name": "both", "conditions": [{"metric": "ttft_p50_ms", "threshold_ms": 1000},
                                                            {"metric": "tpot_p95_ms", "threshold_ms": 5}]}],
                  bootstrap=100)
    t = out.row(0, named=True)
    assert t["basis"] == "interpolated" and t["n_repeats"] == 2 and t["n_points"] == 4
    assert 2.0 < t["max_rps"] < 3.0
    assert t["ci_low_rps"] <= t["max_rps"] <= t["ci_high_rps"] and t["ci_high_rps"] - t["ci_low_rps"] < 0.5
    both = out.row(1, named=True)
    assert both["basis"] == "below-range" and both["max_rps"] is None  # TPOT 10 ms > 5 ms everywhere
    assert both["metric"] == "ttft_p50_ms+tpot_p95_ms" and both["threshold_ms"] is None


def test_analyse_rejects_unknown_metric():
    from llm_almanac.analyse import parse_metric

    with pytest.raises(ValueError, match="'ttft_p42_ms' is not of the form"):
        parse_metric("ttft_p42_ms")


def test_drift_between_repeats_shows_as_cv_and_lowers_the_grade():
    import polars as pl

    from llm_almanac.analyse import analyse

    pts = [("sequential", 0, 1.0, 200.0), ("sweep", 0, 2.0, 600.0), ("sweep", 1, 3.0, 1400.0), ("burst", 0, 4.0, 5000.0)]
    slo = [{"name": "t1000", "conditions": [{"metric": "ttft_p95_ms", "threshold_ms": 1000}]}]
    req, ph = frames(pts)
    steady = analyse(req, ph, slo, bootstrap=200).row(0, named=True)
    # the same cell, but the engine drifted: repeat 1 is 40 % slower at every point
    slow = pl.col("repeat") == 1
    req2 = req.with_columns(pl.when(slow).then(pl.col("ttft_ms") * 1.4).otherwise(pl.col("ttft_ms")).alias("ttft_ms"))
    from llm_almanac import metrics
    drift = analyse(req2, metrics.summarize(req2), slo, bootstrap=200).row(0, named=True)
    assert steady["repeat_cv"] < 0.05 and drift["repeat_cv"] > 0.1
    assert drift["trust_grade"] in "BCD" and "repeats differ" in drift["trust_reasons"]
    # one repeat: no CV
    one = analyse(req.filter(pl.col("repeat") == 0), ph.filter(pl.col("repeat") == 0), slo, bootstrap=50).row(0, named=True)
    assert one["repeat_cv"] is None and one["n_repeats"] == 1 and one["trust_grade"] is not None
