import asyncio

import pytest

from llm_almanac import metrics, tables
from llm_almanac.loadgen import LoadGenerator, Req, request_row
from llm_almanac.sim import SimConfig
from llm_almanac.stream import parse_stream

from conftest import MS, _ev
from conftest import rows_of as _rows


def test_parse_stream_counts_only_token_bearing_events_and_stamps_completing_read():
    usage = {"prompt_tokens": 8, "completion_tokens": 3}
    first = _ev("")  # role/empty chunk: not a token
    second = _ev(" a")
    split = _ev(" b")
    raw = [
        (10, first + second),           # two events in one read: the token one stamped 10
        (20, split[:7]),                # an event cut across reads...
        (30, split[7:] + _ev(" c d")),  # ...is stamped when its last byte arrives (30)
        (40, _ev(usage=usage) + b"data: [DONE]\n\n"),
    ]
    token_ns, got_usage, done, err = parse_stream(raw)
    assert token_ns == [10, 30, 30]
    assert got_usage == usage and done and err is None


def test_parse_stream_chat_and_malformed():
    import orjson
    role = b"data: " + orjson.dumps({"choices": [{"delta": {"role": "assistant"}}]}) + b"\n\n"
    tok = b"data: " + orjson.dumps({"choices": [{"delta": {"content": "hi"}}]}) + b"\n\n"
    token_ns, _, done, err = parse_stream([(1, role), (2, tok), (3, b"data: {bad\n\n")], "chat")
    assert token_ns == [2] and not done and err.startswith("malformed SSE data")


def _req(raw, error=None):
    r = Req(7, "burst", 0, b"")
    r.scheduled_ns, r.sent_ns, r.end_ns, r.raw, r.error = 0, 1 * MS, 50 * MS, raw, error
    return r


def test_request_row_flags_token_mismatch_and_missing_usage():
    raw = [(11 * MS, _ev(" a")), (21 * MS, _ev(" b")),
           (22 * MS, _ev(usage={"prompt_tokens": 8, "completion_tokens": 2}) + b"data: [DONE]\n\n")]
    row = request_row(_req(raw), 0, isl=8, osl=2, endpoint="completions")
    assert row["status"] == "ok" and row["token_mismatch"] is False and row["error"] is None
    assert row["ttft_ms"] == pytest.approx(10.0) and row["tpot_ms"] == pytest.approx(10.0)
    row = request_row(_req(raw), 0, isl=8, osl=3, endpoint="completions")  # truncated output
    assert row["status"] == "failed" and row["token_mismatch"] is True
    assert row["error"] == "token counts differ from the request: prompt 8 (asked 8), completion 2 (asked 3)"
    import orjson
    chat = [(11 * MS, b"data: " + orjson.dumps({"choices": [{"delta": {"content": "a"}}]}) + b"\n\n")] * 2
    chat.append(raw[-1])
    row = request_row(_req(chat), 0, isl=99, osl=2, endpoint="chat")  # prompt includes the template
    assert row["status"] == "ok" and not row["token_mismatch"]
    row = request_row(_req(raw[:2] + [(22 * MS, b"data: [DONE]\n\n")]), 0, 8, 2, "completions")
    assert row["status"] == "failed" and "no usage" in row["error"]
    row = request_row(_req([], error="HTTP 500: x"), 0, 8, 2, "completions")
    assert row["status"] == "failed" and row["error"] == "HTTP 500: x" and row["ttft_ms"] is None


def _gen(url, osl=16, timeout=10.0, isl=5, transport="fast"):
    return LoadGenerator(url, "sim", isl=isl, osl=osl, make_prompt=lambda i: f"p{i} a b c d",
                         request_timeout_s=timeout, transport=transport)


TRANSPORTS = pytest.mark.parametrize("transport", ["fast", "httpx"])


@pytest.mark.parametrize("sim", [SimConfig(ttft_ms=30, tpot_ms=5, tokens_per_chunk=3, role_chunk=True)], indirect=True)
@TRANSPORTS
def test_timing_matches_simulator_log(sim, transport):
    gen = _gen(sim.url, transport=transport)
    rows = _rows(gen, gen.sequential(4))
    assert [r["status"] for r in rows] == ["ok"] * 4
    for row, rec in zip(rows, sim.srv.records):
        assert row["completion_tokens"] == 16 and row["prompt_tokens"] == 5
        assert row["n_token_events"] == len(rec["event_ns"]) == 6  # ceil(16/3) chunks
        assert rec["x_request_id"] == f"almanac-{row['request_id']}"  # joins the server's log
        assert not row["token_mismatch"]
        # measured TTFT vs the server's own first-event time (client adds only loopback latency)
        true_ttft = (rec["event_ns"][0] - rec["arrived_ns"]) / MS
        assert 0 <= row["ttft_ms"] - true_ttft < 15
        true_span = (rec["event_ns"][-1] - rec["event_ns"][0]) / MS
        assert row["tpot_ms"] == pytest.approx(true_span / 15, abs=1.0)


@pytest.mark.parametrize("sim", [SimConfig(ttft_ms=0, tpot_ms=50, max_concurrency=2)], indirect=True)
def test_burst_faster_than_sequential_and_sweep_between(sim):
    gen = _gen(sim.url, osl=10)
    seq = metrics.summarize(tables.frame(tables.REQUESTS, _rows(gen, gen.sequential(3), "c")))
    burst = metrics.summarize(tables.frame(tables.REQUESTS, _rows(gen, gen.burst(8), "c")))
    s, b = seq["rps"][0], burst["rps"][0]
    # 2 server slots: the burst is ~2x the sequential rate.
    assert 1.5 * s < b < 2.5 * s
    rate = metrics.sweep_rates(s, b, 1)[0]
    rows = _rows(gen, gen.rate(rate, 1.0, step=0))
    assert len(rows) == max(1, int(-(-1.0 * rate // 1)))  # ceil(duration * rate) arrivals
    assert all(r["target_rps"] == rate and r["status"] == "ok" for r in rows)
    sent = sorted(r["sent_s"] for r in rows)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert all(abs(g - 1 / rate) < 0.02 for g in gaps)


@pytest.mark.parametrize("sim", [SimConfig(tpot_ms=1, fault="stall")], indirect=True)
@TRANSPORTS
def test_stalled_stream_times_out_as_failure(sim, transport):
    gen = _gen(sim.url, osl=8, timeout=0.5, transport=transport)
    rows = _rows(gen, gen.sequential(1))
    assert rows[0]["status"] == "failed" and rows[0]["error"].startswith("timeout")


@pytest.mark.parametrize("sim", [SimConfig(fault="http500")], indirect=True)
@TRANSPORTS
def test_http_error_is_failure_with_status(sim, transport):
    gen = _gen(sim.url, transport=transport)
    rows = _rows(gen, gen.sequential(1))
    assert rows[0]["status"] == "failed" and rows[0]["error"].startswith("HTTP 500")
    assert "simulated failure" in rows[0]["error"]


@pytest.mark.parametrize("sim", [SimConfig(tpot_ms=2, max_concurrency=2)], indirect=True)
def test_run_phases_sweep_between_anchors_and_fixed_rates_for_repeats(sim):
    from llm_almanac.config import defaults
    from llm_almanac.phases import PhaseStore, Plan, run_phases

    bench = {**defaults("bench"), "warmup_requests": 2, "sequential_requests": 3, "burst_requests": 8,
             "sweep_rates": 2, "sweep_duration_s": 0.5}
    gen = _gen(sim.url, osl=8)
    store = PhaseStore()
    rates = asyncio.run(run_phases(gen, Plan(bench), store, [], "c"))
    df = store.frame()
    assert set(df["phase"]) == {"sequential", "burst", "sweep"} and "warmup" not in set(df["phase"])
    ph = metrics.summarize(df)
    rps = dict(zip(ph["phase"], ph["rps"]))
    assert len(rates) == 2 and all(rps["sequential"] < r < rps["burst"] for r in rates)
    n_before = len(sim.srv.records)
    store2 = PhaseStore()
    rates2 = asyncio.run(run_phases(gen, Plan(bench, repeat=1, rates=rates), store2, [], "c"))
    df2 = store2.frame()
    assert rates2 == rates
    assert len(sim.srv.records) - n_before == len(df2)  # no second warm-up
    assert set(df2["repeat"]) == {1} and set(df["repeat"]) == {0}
    assert sorted(set(df2.filter(df2["phase"] == "sweep")["target_rps"])) == sorted(rates)
    assert set(df["request_id"]).isdisjoint(set(df2["request_id"]))  # prompts stay unique


@pytest.mark.parametrize("sim", [SimConfig(tpot_ms=1, max_concurrency=2)], indirect=True)
def test_checkpoint_keeps_measured_phases_and_resume_measures_only_the_rest(sim, tmp_path):
    from llm_almanac.config import defaults
    from llm_almanac.phases import CellFailure, Checkpoint, Plan, run_phases

    bench = {**defaults("bench"), "warmup_requests": 1, "sequential_requests": 3, "burst_requests": 6,
             "sweep_rates": 2, "sweep_duration_s": 0.3}

    def crash_in_sweep(label, n_failed=0):
        if label.startswith("sweep"):
            raise CellFailure(f"server exited with code -9 during {label}")

    store = Checkpoint(tmp_path / "partial", "fp1")
    with pytest.raises(CellFailure, match="during sweep\\[0\\]"):
        asyncio.run(run_phases(_gen(sim.url, osl=4), Plan(bench), store, [], check=crash_in_sweep))
    assert sorted(p.stem for p in (tmp_path / "partial").glob("*.parquet")) == ["0-burst-0", "0-sequential-0"]
    measured_before = len(sim.srv.records)

    # a new run (new generator, like a new job) resumes from disk: only the sweep is measured
    store2 = Checkpoint(tmp_path / "partial", "fp1")
    gen2 = _gen(sim.url, osl=4)
    gen2.skip_ids_to(store2.max_request_id() + 1)
    rates = asyncio.run(run_phases(gen2, Plan(bench), store2, []))
    df = store2.frame()
    new = len(sim.srv.records) - measured_before
    n_sweep = df.filter(df["phase"] == "sweep").height
    assert new == 1 + n_sweep  # one warm-up + the sweep; sequential and burst were not re-run
    assert df["request_id"].n_unique() == df.height  # ids (so prompts) unique across the resume
    assert set(df["phase"]) == {"sequential", "burst", "sweep"} and len(rates) == 2

    # another config (fingerprint) never mixes with these units
    assert Checkpoint(tmp_path / "partial", "fp2").units == {}


@TRANSPORTS
@pytest.mark.parametrize("sim", [SimConfig(tpot_ms=1)], indirect=True)
def test_keepalive_off_gives_each_request_its_own_connection(sim, transport):
    gen = LoadGenerator(sim.url, "sim", isl=5, osl=4, make_prompt=lambda i: f"p{i} a b c d", transport=transport)
    assert all(r["status"] == "ok" for r in _rows(gen, gen.sequential(4)))
    assert sim.srv.connections == 1  # one pooled connection, reused
    gen = LoadGenerator(sim.url, "sim", isl=5, osl=4, make_prompt=lambda i: f"q{i} a b c d", keepalive=False,
                        transport=transport)
    assert all(r["status"] == "ok" for r in _rows(gen, gen.sequential(4)))
    assert sim.srv.connections == 1 + 4
