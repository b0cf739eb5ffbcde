"""The engine's own metrics: per-engine names checked on real /metrics text (tests/data/metrics),
the scraper around a phase, the phase columns derived from it, and the trust checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import polars as pl
import pytest

from llm_almanac import enginemetrics, tables, trust
from llm_almanac.enginemetrics import Scrape, Scraper, names_for, parse, phase_values, rows

DATA = Path(__file__).parent / "data" / "metrics"


def _scrape(before: str, after: str, during: list[str] = ()) -> Scrape:
    return Scrape(before=(0, before.encode()), after=(2, after.encode()),
                  samples=[(1, t.encode()) for t in during])


def _read(name: str) -> str:
    return (DATA / name).read_text()


def _missing(engine: str, text: str) -> set[str]:
    present = {name for name, _ in parse(text)}
    n = names_for(engine)
    return set(n.wanted()) - present - set(n.optional.values())


# -- real text, per engine ----------------------------------------------------------------
def test_vllm_cpu_real_text_has_every_name_and_gives_the_phase_values():
    before, after = _read("vllm_cpu_before.txt"), _read("vllm_cpu_after.txt")
    assert _missing("vllm", after) == set()
    v = phase_values(rows(_scrape(before, after, [after]), names_for("vllm"), "c", 0, "sequential", 0),
                     names_for("vllm"))
    assert v["engine_requests"] == 3  # the capture sent three completions of 32 tokens
    assert v["engine_ttft_mean_ms"] > 0 and v["engine_e2e_mean_ms"] > v["engine_ttft_mean_ms"]
    assert 0 < v["engine_tpot_mean_ms"] < v["engine_e2e_mean_ms"]
    assert v["engine_queue_mean_ms"] >= 0
    assert v["engine_prefix_cache_hits"] == 0  # started with --no-enable-prefix-caching
    assert v["engine_preemptions"] == 0
    assert v["engine_running_peak"] == 0 and v["engine_waiting_peak"] == 0  # idle at both scrapes


def test_trtllm_documented_names_parse():
    text = _read("trtllm_docs.txt")
    assert _missing("trtllm", text) == set()
    assert names_for("trtllm").path == "/prometheus/metrics"


def test_llamacpp_real_text_has_every_name():
    f = DATA / "llamacpp_cpu_after.txt"
    if not f.exists():
        pytest.skip("no llama.cpp capture")
    before, after = _read("llamacpp_cpu_before.txt"), f.read_text()
    assert _missing("llamacpp", after) == set()
    n = names_for("llamacpp")
    v = phase_values(rows(_scrape(before, after), n, "c", 0, "sequential", 0), n)
    assert v["engine_tpot_mean_ms"] > 0
    assert v["engine_prefix_cache_queries"] > 0
    # llama.cpp exports its speculative counters even without a draft model: zero, so no rate
    assert set(n.optional.values()) <= {name for name, _ in parse(after)}
    assert v["engine_spec_acceptance_rate"] is None and v["engine_spec_mean_accepted_len"] is None


SPEC = """# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{{engine="0"}} {d}
# TYPE vllm:spec_decode_num_draft_tokens counter
vllm:spec_decode_num_draft_tokens_total{{engine="0"}} {t}
# TYPE vllm:spec_decode_num_accepted_tokens counter
vllm:spec_decode_num_accepted_tokens_total{{engine="0"}} {a}
"""


def test_speculative_decoding_acceptance_from_counter_deltas():
    n = names_for("vllm")
    v = phase_values(rows(_scrape(SPEC.format(d=10, t=30, a=12), SPEC.format(d=110, t=330, a=192)), n,
                          "c", 0, "sequential", 0), n)
    assert v["engine_spec_acceptance_rate"] == pytest.approx(180 / 300)  # accepted / draft tokens
    assert v["engine_spec_mean_accepted_len"] == pytest.approx(1 + 180 / 100)  # per verification step


def test_unknown_engine_has_no_names():
    assert names_for("sim") is None
    assert set(enginemetrics.ENGINES) == {"vllm", "sglang", "trtllm", "llamacpp"}


# -- derivation ---------------------------------------------------------------------------
HIST = """# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{{engine="0"}} {s}
vllm:time_to_first_token_seconds_count{{engine="0"}} {n}
vllm:time_to_first_token_seconds_sum{{engine="1"}} {s}
vllm:time_to_first_token_seconds_count{{engine="1"}} {n}
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0"}} {r}
vllm:num_requests_running{{engine="1"}} {r}
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{engine="0"}} {h}
"""


def test_deltas_sum_over_series_and_gauges_peak_per_sample():
    n = names_for("vllm")
    b = HIST.format(s=1.0, n=10, r=0, h=5)
    mid = HIST.format(s=1.5, n=15, r=3, h=5)
    a = HIST.format(s=2.0, n=20, r=0, h=7)
    r = rows(_scrape(b, a, [mid]), n, "c", 1, "burst", 0)
    assert {x["labels"] for x in r} == {'{"engine": "0"}', '{"engine": "1"}'}
    df = tables.frame(tables.ENGINE_METRICS, r)  # rows fit the table definition
    assert df.filter(pl.col("role") == "running")["samples"].to_list()[0] == [0.0, 3.0, 0.0]
    v = phase_values(r, n)
    assert v["engine_ttft_mean_ms"] == pytest.approx(100.0)  # (2 x 1.0 s) / (2 x 10)
    assert v["engine_running_peak"] == 6  # two engines' gauges add up per sample
    assert v["engine_prefix_cache_hits"] == 2
    assert v["engine_tpot_mean_ms"] is None  # not exported: null, not zero


def test_missing_scrape_gives_no_rows():
    assert rows(Scrape(before=None, after=(1, b"")), names_for("vllm"), "c", 0, "burst", 0) == []


# -- the scraper around a phase -----------------------------------------------------------
def test_scraper_takes_before_samples_after_and_survives_errors():
    n = names_for("vllm")
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        k = len(calls)
        return httpx.Response(200, text=HIST.format(s=k, n=k, r=k, h=0))

    async def measure():
        await asyncio.sleep(0.5)
        return "measured"

    s = Scraper("http://x", n, interval_s=0.1, transport=httpx.MockTransport(handler))
    result, scrape = asyncio.run(s.around(measure))
    assert result == "measured" and calls[0] == "/metrics"
    assert scrape.before and scrape.after and 2 <= len(scrape.samples) <= 6
    v = phase_values(rows(scrape, n, "c", 0, "burst", 0), n)
    assert v["engine_running_peak"] == 2 * len(calls)  # the after scrape is the last, largest

    dead = Scraper("http://x", n, transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    result, scrape = asyncio.run(dead.around(measure))
    assert result == "measured" and scrape.before is None and "HTTP 404" in scrape.errors[0]


# -- trust --------------------------------------------------------------------------------
def test_burst_guard():
    assert trust.burst_guard(8, 8, 0) == ("reached", 0)
    assert trust.burst_guard(8, 4, 4) == ("capped-by-engine", 4)
    assert trust.burst_guard(8, 3, 1) == ("not-reached", 5)
    assert trust.burst_guard(8, None, None) == ("unknown", None)


def _phase(**over):
    base = {c: None for c in tables.PHASES}
    base.update(cell_id="c", repeat=0, phase="burst", step=0, n_ok=8, n_failed=0, n_token_mismatch=0,
                client_saturated=False, ttft_mean_ms=120.0, tpot_mean_ms=10.0,
                engine_ttft_mean_ms=110.0, engine_tpot_mean_ms=9.5, engine_prefix_cache_hits=0.0,
                engine_running_peak=8.0, engine_waiting_peak=0.0, engine_requests=8.0)
    base.update(over)
    return tables.frame(tables.PHASES, [base])


def test_check_phases_grades_from_the_facts():
    ok = trust.check_phases(_phase()).row(0, named=True)
    assert ok["client_minus_engine_ttft_ms"] == pytest.approx(10.0)
    assert ok["client_minus_engine_tpot_ms"] == pytest.approx(0.5)
    assert not ok["engine_gap_flag"] and ok["prefix_cache_guard"] == "ok"
    assert ok["burst_guard"] == "reached" and ok["trust_grade"] == "A" and ok["trust_reasons"] is None

    gap = trust.check_phases(_phase(ttft_mean_ms=400.0)).row(0, named=True)
    assert gap["engine_gap_flag"] and gap["trust_grade"] == "C"
    hits = trust.check_phases(_phase(engine_prefix_cache_hits=64.0)).row(0, named=True)
    assert hits["prefix_cache_guard"] == "hits" and hits["trust_grade"] == "D"
    short = trust.check_phases(_phase(engine_running_peak=3.0), burst_limit=4).row(0, named=True)
    assert short["burst_expected_concurrency"] == 4 and short["burst_guard"] == "not-reached"
    assert short["burst_capped_by"] == 1 and short["trust_grade"] == "C"
    other = trust.check_phases(_phase(engine_requests=12.0)).row(0, named=True)
    assert other["trust_grade"] == "D" and "the engine counted 12" in other["trust_reasons"]
    blind = trust.check_phases(_phase(engine_ttft_mean_ms=None, engine_tpot_mean_ms=None)).row(0, named=True)
    assert blind["trust_grade"] == "B" and blind["engine_gap_flag"] is False


def test_answer_grade():
    assert trust.grade(trust.answer_reasons([("A", None)], 10.0, (9.5, 10.5), False, 0.02)) == "A"
    assert trust.grade(trust.answer_reasons([("A", None)], 10.0, (7.0, 10.0), False, None)) == "B"
    assert trust.grade(trust.answer_reasons([("A", None)], 10.0, (4.0, 10.0), False, None)) == "C"
    assert trust.grade(trust.answer_reasons([("D", "x")], 10.0, (9.9, 10.0), False, None)) == "D"
    assert trust.grade(trust.answer_reasons([], 10.0, (None, None), True, 0.3)) == "C"
    assert trust.nonmonotone([10, 12, 9]) and not trust.nonmonotone([10, 12, 11.5, None, 20])


# -- end to end against the simulator's fake /metrics ---------------------------------------
@pytest.mark.parametrize("sim", [__import__("llm_almanac.sim", fromlist=["SimConfig"]).SimConfig(
    ttft_ms=20, tpot_ms=20, max_concurrency=4)], indirect=True)
def test_phases_with_engine_metrics_against_the_simulator(sim, tmp_path):
    from llm_almanac.loadgen import LoadGenerator
    from llm_almanac.phases import Checkpoint, Plan, results, run_phases

    gen = LoadGenerator(sim.url, "sim", isl=5, osl=8, make_prompt=lambda i: f"p{i} a b c d")
    bench = {"warmup_requests": 1, "sequential_requests": 3, "burst_requests": 8, "max_concurrency": None,
             "sweep_rates": 0, "sweep_duration_s": 1, "arrival": "constant", "seed": 0, "phase_timeout_s": 0}
    store = Checkpoint(tmp_path / "partial", "fp")
    asyncio.run(run_phases(gen, Plan(bench, ("sequential", "burst")), store, [], "c",
                           scraper=Scraper(sim.url, names_for("vllm"), interval_s=0.2)))
    assert (tmp_path / "partial" / "0-burst-0.engine.parquet").exists()
    kept = Checkpoint(tmp_path / "partial", "fp")  # a resumed run reads the engine rows back
    assert set(kept.engine) == {"0-sequential-0", "0-burst-0"}
    _, phases, _ = results(kept, "c")
    em = kept.engine_frame("c")
    assert set(em["cell_id"]) == {"c"} and {"ttft", "running"} <= set(em["role"])
    seq = phases.filter(pl.col("phase") == "sequential").row(0, named=True)
    burst = phases.filter(pl.col("phase") == "burst").row(0, named=True)
    assert seq["engine_requests"] == 3 and burst["engine_requests"] == 8
    # the client's TTFT includes the loopback HTTP path the sim's does not: positive (one clock:
    # the sim stamps arrival after the client's send and writes before the client reads), small
    assert 0 <= seq["client_minus_engine_ttft_ms"] < 50
    assert burst["engine_running_peak"] == 4 and burst["burst_guard"] == "capped-by-engine"
    assert burst["burst_capped_by"] == 4 and burst["engine_queue_mean_ms"] > 0
    assert seq["prefix_cache_guard"] == "ok" and seq["trust_grade"] == "A"


def test_engine_metrics_reach_the_cell_files_and_duckdb(tmp_path):
    from llm_almanac.aggregate import aggregate
    from llm_almanac.files import write_cell

    n = names_for("vllm")
    em = tables.frame(tables.ENGINE_METRICS, rows(
        _scrape(_read("vllm_cpu_before.txt"), _read("vllm_cpu_after.txt")), n, "c1", 0, "sequential", 0))
    rec = tables.new_cell_record(cell_id="c1", status="ok")
    write_cell(tmp_path / "c1", rec, tables.empty(tables.REQUESTS), tables.empty(tables.PHASES), em)
    counts = aggregate([tmp_path / "c1"], tmp_path / "db.duckdb")
    assert counts["engine_metrics"] == len(em) > 10


def test_cell_scrapes_real_engines_only():
    from llm_almanac.cell import engine_scraper
    from llm_almanac.engines import get_engine

    s = engine_scraper(get_engine("trtllm"), "http://h:1/")
    assert s is not None and s.url == "http://h:1/prometheus/metrics"
    assert engine_scraper(get_engine("sim"), "http://h:1") is None
