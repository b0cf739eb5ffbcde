
import pytest

from llm_almanac import tables
from llm_almanac.metrics import request_timing, summarize, sweep_rates

MS = 1_000_000


def test_request_timing_hand_computed():
    # sent at 0; token events at 100, 110, 130, 160 ms; server says 4 tokens.
    t = request_timing(0, [100 * MS, 110 * MS, 130 * MS, 160 * MS], 4)
    assert t["ttft_ms"] == 100.0
    assert t["e2e_ms"] == 160.0
    assert t["tpot_ms"] == pytest.approx(60.0 / 3)
    assert t["itl_ms"] == [10.0, 20.0, 30.0]


def test_tpot_uses_token_count_not_event_count():
    # 2 events, each carrying several tokens: 9 tokens in total -> TPOT over 8 intervals.
    t = request_timing(5 * MS, [25 * MS, 105 * MS], 9)
    assert t["ttft_ms"] == 20.0 and t["e2e_ms"] == 100.0
    assert t["tpot_ms"] == pytest.approx(80.0 / 8)
    assert t["itl_ms"] == [80.0]


def test_single_token_has_no_tpot_and_no_events_means_no_timing():
    assert request_timing(0, [7 * MS], 1)["tpot_ms"] is None
    assert request_timing(0, [], None) == {"ttft_ms": None, "e2e_ms": None, "tpot_ms": None, "itl_ms": []}


def _row(rid, sent, end, ttft, tpot, itl, ct=4, status="ok", phase="burst", step=0, mismatch=False):
    return {"cell_id": "c", "repeat": 0, "phase": phase, "step": step, "target_rps": None,
            "request_id": rid, "scheduled_s": sent, "sent_s": sent, "end_s": end, "send_lag_ms": 0.0,
            "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": (end - sent) * 1000, "itl_ms": itl,
            "n_token_events": len(itl) + 1, "prompt_tokens": 8, "completion_tokens": ct,
            "requested_isl": 8, "requested_osl": 4, "token_mismatch": mismatch, "status": status,
            "error": None if status == "ok" else "boom"}


def test_summarize_window_rate_and_percentiles():
    rows = [
        _row(0, 0.0, 1.0, 100.0, 10.0, [10.0, 20.0, 30.0]),
        _row(1, 0.5, 2.0, 200.0, 20.0, [40.0]),
        _row(2, 0.7, 4.0, 300.0, 30.0, [50.0, 60.0]),
        _row(3, 0.8, 9.0, None, None, [], ct=None, status="failed"),  # excluded everywhere
    ]
    ph = summarize(tables.frame(tables.REQUESTS, rows)).row(0, named=True)
    assert (ph["n_ok"], ph["n_failed"]) == (3, 1)
    # window = last ok completion (4.0) - first send (0.0)
    assert ph["duration_s"] == pytest.approx(4.0)
    assert ph["rps"] == pytest.approx(3 / 4.0)
    assert ph["output_tok_s"] == pytest.approx(12 / 4.0)
    assert ph["ttft_mean_ms"] == pytest.approx(200.0)
    assert ph["ttft_p50_ms"] == pytest.approx(200.0)
    # linear interpolation: p90 of [100, 200, 300] = 100 + 0.9*2*100 = 280
    assert ph["ttft_p90_ms"] == pytest.approx(280.0)
    assert ph["ttft_min_ms"] == 100.0 and ph["ttft_max_ms"] == 300.0
    # ITL pools every gap of every ok request: [10,20,30,40,50,60] -> p50 = 35
    assert ph["itl_p50_ms"] == pytest.approx(35.0)
    assert ph["itl_max_ms"] == 60.0


def test_summarize_groups_phases_and_counts_mismatches():
    rows = [_row(0, 0, 1, 1.0, 1.0, [1.0], phase="sequential"),
            _row(1, 1, 2, 1.0, 1.0, [1.0], phase="sequential", mismatch=True),
            _row(2, 3, 4, 1.0, 1.0, [1.0], phase="sweep", step=1)]
    ph = summarize(tables.frame(tables.REQUESTS, rows))
    assert ph.select("phase", "step", "n_ok", "n_token_mismatch").rows() == [
        ("sequential", 0, 2, 1), ("sweep", 1, 1, 0)]
    assert list(ph.columns) == list(tables.PHASES)


def test_sweep_rates_strictly_between_anchors():
    rates = sweep_rates(1.0, 5.0, 3)
    assert rates == pytest.approx([2.0, 3.0, 4.0])
    assert all(1.0 < r < 5.0 for r in sweep_rates(1.0, 1.5, 7))
    assert sweep_rates(5.0, 1.0, 3) == pytest.approx([2.0, 3.0, 4.0])
    assert sweep_rates(2.0, 2.0, 3) == [] and sweep_rates(1.0, 2.0, 0) == []


def test_empty_summary_has_contract_columns():
    assert summarize(tables.empty(tables.REQUESTS)).columns == list(tables.PHASES)
    for m in ("ttft", "tpot", "itl", "e2e"):
        for s in ("mean", "p50", "p90", "p95", "p99"):
            assert f"{m}_{s}_ms" in tables.PHASES
