"""Answers: operating point, intervals, cost and replicas, any-engine verdicts, the summary, the
answers table and the CLI's slo --best, plan and summary (answers.py, cost.py, best.py, plan.py,
summary.py, curve.py)."""

import json
import math

import answers_data
import numpy as np
import pytest

from llm_almanac import best, cli, cost, reqstore, summary
from llm_almanac.answers import SLO, Curve, answer_text, operating_point, slo_answer, value_at
from llm_almanac.config import validate
from llm_almanac.curve import interval, statistic
from llm_almanac.grid import ConfigError
from llm_almanac.plan import plan
from llm_almanac.slo import Condition, answer

# -- operating point -----------------------------------------------------------------------

def test_value_at_interpolates_between_adjacent_points_and_reads_points_exactly():
    rps = [4.0, 1.0, 2.0]  # unordered on purpose: read by rate, as slo.max_rps_under reads
    vals = [40.0, 10.0, 20.0]
    assert value_at(rps, vals, 1.5) == 15.0
    assert value_at(rps, vals, 3.0) == 30.0
    assert value_at(rps, vals, 2.0) == 20.0 and value_at(rps, vals, 4.0) == 40.0
    assert value_at(rps, [40.0, 10.0, None], 1.5) is None  # a neighbour without a value


def test_operating_point_is_read_at_the_answer_by_the_slo_rule():
    # TTFT p95 crosses 600 ms between 2 rps (300 ms) and 4 rps (900 ms): answer 3.0 rps exactly;
    # there TPOT p95 is halfway between 20 and 40 ms, tokens/s halfway too.
    crv = Curve([1.0, 2.0, 4.0], {"rps": [1.0, 2.0, 4.0], "ttft_p95_ms": [100.0, 300.0, 900.0],
                                  "ttft_p50_ms": [80.0, 200.0, 600.0], "tpot_p95_ms": [10.0, 20.0, 40.0],
                                  "tpot_p50_ms": [9.0, 15.0, 30.0], "output_tok_s": [32.0, 64.0, 128.0],
                                  "input_tok_s": [128.0, 256.0, 512.0]})
    res = slo_answer(crv, SLO.from_limits(ttft_ms=600))
    assert (res.max_rps, res.basis) == (3.0, "interpolated")
    op = operating_point(crv, res.max_rps)
    assert op["ttft_p95_ms"] == 600.0 and op["ttft_p50_ms"] == 400.0
    assert op["tpot_p95_ms"] == 30.0 and op["tpot_p50_ms"] == 22.5
    assert (op["output_tok_s"], op["input_tok_s"], op["total_tok_s"]) == (96.0, 384.0, 480.0)
    # above-range reads the highest point; below-range has none
    top = slo_answer(crv, SLO.from_limits(ttft_ms=5000))
    assert top.lower_bound and operating_point(crv, top.max_rps)["tpot_p95_ms"] == 40.0
    assert operating_point(crv, slo_answer(crv, SLO.from_limits(ttft_ms=50)).max_rps)["ttft_p95_ms"] is None


def test_answer_text_says_lower_bound_and_no_answer_in_words():
    assert answer_text(1.6312, "above-range") == "≥ 1.63"
    assert answer_text(1.6312, "interpolated") == "1.63"
    assert answer_text(45.31, "measured") == "45.3" and answer_text(123.4, "measured") == "123"
    assert answer_text(0.01316, "above-range") == "≥ 0.0132" and answer_text(0.5, "measured") == "0.500"
    assert answer_text(None, "below-range") == "not even one request at a time meets it"


# -- intervals -----------------------------------------------------------------------------

def test_percentile_interval_is_order_statistics():
    vals = np.arange(1.0, 101.0)  # 1..100 shuffled: order does not matter
    np.random.default_rng(0).shuffle(vals)
    lo, hi = interval(vals, "p50")
    assert (lo, hi) == (40.0, 61.0)  # X_(40), X_(61): floor(50 - 1.96*5), ceil(50 + 1.96*5) + 1
    assert lo <= statistic(vals, "p50") <= hi
    lo, hi = interval(vals, "p95")
    assert (lo, hi) == (90.0, 100.0)  # s clamps at the sample maximum
    small = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 8.0, 7.0, 6.0])
    assert interval(small, "p95")[1] == 8.0  # 8 requests: the upper end is the maximum
    m_lo, m_hi = interval(vals, "mean")
    assert m_lo == pytest.approx(50.5 - 1.959963984540054 * vals.std(ddof=1) / 10)
    assert m_hi - 50.5 == pytest.approx(50.5 - m_lo)
    assert interval(vals, "max") == (None, None) and interval(np.array([1.0]), "mean") == (None, None)


def test_answer_interval_reads_the_pessimistic_and_optimistic_ends():
    rps = [1.0, 2.0, 4.0]
    c = Condition(values=[100.0, 300.0, 900.0], lo=[90.0, 250.0, 800.0], hi=[110.0, 400.0, 1000.0], threshold=600.0)
    a = answer(rps, [c])
    assert a.max_rps == 3.0 and a.ci_low_rps == 2.0 + 200.0 * 2.0 / 600.0 and a.ci_high_rps == 2.0 + 350.0 * 2.0 / 550.0
    assert a.ci_low_rps < a.max_rps < a.ci_high_rps and not a.lower_bound
    # the optimistic reading meets it everywhere: no upper end; the answer is a lower bound
    top = answer(rps, [Condition([100.0, 300.0, 590.0], [90.0, 250.0, 550.0], [110.0, 400.0, 650.0], 600.0)])
    assert top.basis == "above-range" and top.lower_bound and top.ci_high_rps is None
    assert top.ci_low_rps == 2.0 + 200.0 * 2.0 / 250.0
    # nothing meets it pessimistically: no low end
    edge = answer(rps, [Condition([590.0, 700.0, 900.0], [500.0, 650.0, 800.0], [610.0, 750.0, 1000.0], 600.0)])
    assert edge.basis == "interpolated" and edge.max_rps == 1.0 + 10.0 * 1.0 / 110.0 and edge.ci_low_rps is None
    # two conditions: the lowest answer, and a condition met nowhere leaves no answer at all
    t2 = Condition([10.0, 20.0, 40.0], [9.0, 19.0, 39.0], [11.0, 21.0, 41.0], 15.0)
    assert answer(rps, [c, t2]).max_rps == 1.5
    none = answer(rps, [c, Condition([50.0, 60.0, 70.0], [None] * 3, [None] * 3, 15.0)])
    assert (none.max_rps, none.basis, none.ci_low_rps, none.ci_high_rps) == (None, "below-range", None, None)


# -- cost and replicas ---------------------------------------------------------------------

@pytest.mark.parametrize("text,key", [
    ("1x NVIDIA H100 80GB HBM3 (driver 550.54.15)", "h100"), ("8x NVIDIA A100-SXM4-80GB (driver 535)", "a100"),
    ("1x NVIDIA GeForce RTX 4090 (driver 550)", "rtx4090"), ("2x NVIDIA L40S (driver 550)", "l40s"),
    ("1x AMD Instinct MI300X", "mi300x"), ("CPU: AMD EPYC 7B13 (2 logical cores)", "cpu"),
    ("SIMULATOR (test instrument, not an engine)", "simulator"), (None, "unknown")])
def test_price_key(text, key):
    assert cost.price_key(text) == key


def test_cost_arithmetic_per_gpu_and_per_machine():
    gpu = cost.replica_usd_per_hour(cost.Price("h100", 2.5, None, None, "config"), 2)
    assert gpu == 5.0
    c = cost.costs(gpu, 2.0, 1000.0, 5000.0, 2)
    assert c["usd_per_1m_output_tokens"] == 5.0 / (1000.0 * 3600) * 1e6
    assert c["usd_per_1m_total_tokens"] == 5.0 / (5000.0 * 3600) * 1e6
    assert c["usd_per_1k_requests"] == 5.0 / (2.0 * 3600) * 1000
    assert c["gpu_s_per_request"] == 1.0
    cpu = cost.replica_usd_per_hour(cost.Price("cpu", 0.05, None, None, "config"), 0)
    assert cpu == 0.05 and cost.costs(cpu, 2.0, 100.0, 200.0, 0)["gpu_s_per_request"] is None
    assert all(v is None for v in cost.costs(None, 2.0, 100.0, 200.0, 1).values() if v != 0.5)
    assert cost.replicas(400, 3.0) == 134 and cost.replicas(400, 4.0) == 100 and cost.replicas(1, 50.0) == 1
    assert cost.replicas(400, None) is None


def test_prices_examples_then_config_then_command_line():
    book = cost.resolve({"h100": {"usd_per_hour": 3.0, "read_on": "2026-01-02", "source": "our contract"},
                         "l40s": 1.2}, {"h100": 2.0})
    assert book["a100"].origin == "example" and book["a100"].read_on
    assert (book["l40s"].usd_per_hour, book["l40s"].origin) == (1.2, "config")
    assert (book["h100"].usd_per_hour, book["h100"].origin) == (2.0, "command line")
    assert cost.parse_overrides(["H100=2.5", "cpu=0"]) == {"h100": 2.5, "cpu": 0.0}
    for bad in ("h100", "h100=x", "=2", "h100=-1"):
        with pytest.raises(ValueError, match="PRICE_KEY=DOLLARS_PER_HOUR"):
            cost.parse_overrides([bad])


def test_prices_section_is_validated(default_config, schema_path):
    default_config["prices"] = {"h100": 2.5, "cpu": {"usd_per_hour": 0.04, "read_on": "2026-11-30", "source": "x"}}
    validate(default_config, schema_path)
    for bad in ({"h100": -1}, {"cpu": {"usd_per_hour": 1, "read_on": "30/11/2026"}}, {"cpu": {"price": 1}}):
        default_config["prices"] = bad
        with pytest.raises(ConfigError, match=r"config\.prices"):
            validate(default_config, schema_path)


def _row(engine, max_rps, lo, hi, basis="interpolated", **kw):
    return {"engine": engine, "quantization": "bf16", "engine_version": "1", "model": "m", "isl": 128, "osl": 32,
            "price_key": "h100", "n_gpus": 1, "max_rps": max_rps, "ci_low_rps": lo, "ci_high_rps": hi,
            "basis": basis, "lower_bound": basis == "above-range", "answer": answer_text(max_rps, basis),
            "usd_per_hour": 2.5, "price": "$2.5/h per GPU x 1 GPU, from the config", "cell_id": f"m__{engine}",
            "measurement_id": f"m__{engine}@h100-80gb-x1@r1",
            "usd_per_1m_output_tokens": 1.0, "usd_per_1m_total_tokens": 0.5, **kw}


def test_plan_replicas_conservative_counts_and_upper_bounds():
    slo = SLO.from_limits(300)
    rows = [_row("a", 3.0, 2.5, 3.2), _row("b", 5.0, 4.0, None, "above-range"),
            _row("c", None, None, None, "below-range"), _row("d", 9.0, None, 9.5, n_gpus=8, usd_per_hour=20.0)]
    p = plan(rows, 400, slo, 128, 32)
    assert [r["engine"] for r in p.rows] == ["b", "a", "d"]  # by $/hour
    b, a, d = p.rows
    assert (b["replicas"], b["replicas_conservative"], b["upper_bound"]) == (80, 100, True)
    assert (a["replicas"], a["replicas_conservative"], a["upper_bound"]) == (134, 160, False)
    assert a["usd_per_hour"] == 134 * 2.5 and a["usd_per_month"] == 134 * 2.5 * 730
    assert (d["replicas"], d["replicas_conservative"], d["gpus"]) == (45, None, 360)
    assert "c bf16" in p.message and "upper bound" in p.message
    assert "no measured cell has ISL 1024 / OSL 128; measured shapes: 128/32" in plan(rows, 400, slo, 1024, 128).message
    assert "of model 'x'" in plan(rows, 400, slo, 128, 32, model="x").message
    none = plan([rows[2]], 400, slo, 128, 32)
    assert not none.rows and "none of the 1 configurations measured at 128/32 meets TTFT p95 ≤ 300 ms" in none.message


# -- any engine, summary -------------------------------------------------------------------

def test_verdict_overlap_lower_bounds_and_missing_answers():
    clear = best.verdict([_row("a", 3.0, 2.8, 3.2), _row("b", 5.0, 4.5, 5.5)])
    assert clear.best["engine"] == "b" and clear.overlap is False and clear.text == "clear winner: b bf16"
    close = best.verdict([_row("a", 4.8, 4.4, 5.1), _row("b", 5.0, 4.5, 5.5)])
    assert close.overlap and close.text == "no clear winner: the 95% intervals of b bf16 and a bf16 overlap"
    # a lower bound ranked second may be higher than it says: never clearly beaten
    lb = best.verdict([_row("a", 3.0, 2.9, None, "above-range"), _row("b", 5.0, 4.5, 5.5)])
    assert lb.overlap and lb.runner_up["engine"] == "a"
    # a missing low end counts as 0
    assert best.verdict([_row("a", 1.0, None, 1.2), _row("b", 5.0, 4.5, 5.5)]).overlap is False
    assert best.verdict([_row("a", None, None, None, "below-range")]).text == "no configuration meets it"
    assert best.verdict([_row("a", 1.0, 0.9, 1.1), _row("b", None, None, None, "below-range")]).text == "only a bf16 meets it"


def test_summary_wording_on_overlapping_and_separate_intervals():
    slo = SLO.from_limits(300)
    s = summary.slo_sentence(slo, [_row("a", 4.8, 4.4, 5.1), _row("b", 5.0, 4.5, 5.5)])
    assert s.startswith("**TTFT p95 ≤ 300 ms**: **b bf16** (1) holds **5.00 req/s** (95% CI 4.50–5.50), 4% more than a bf16")
    assert "**no clear winner**, the intervals overlap" in s and "$1.00 per 1 M output tokens" in s
    s = summary.slo_sentence(slo, [_row("a", 3.0, 2.8, 3.2), _row("b", 5.0, 4.5, None, "above-range")])
    assert "holds **≥ 5.00 req/s** (95% CI 4.50–∞), at least 67% more than a bf16 at 3.00" in s
    assert "**clear winner**" in s and "at most $1.00 per 1 M output tokens" in s
    s = summary.slo_sentence(slo, [_row("a", 3.0, 2.9, None, "above-range"), _row("b", 5.0, 4.5, 5.5)])
    assert "5.00 req/s** (95% CI 4.50–5.50), ahead of a bf16 at ≥ 3.00 (95% CI 2.90–∞): **no clear winner**" in s
    assert summary.fmt_usd(0.7) == "$0.700" and summary.fmt_usd(0.0903) == "$0.0903" and summary.fmt_usd(1234.5) == "$1,234"
    s = summary.slo_sentence(slo, [_row("a", None, None, None, "below-range")])
    assert "no configuration meets it (not even one request at a time meets it)" in s


def test_summary_prefill_vs_decode_per_doubling():
    slo = SLO.from_limits(1000)
    rows = [_row("a", 8.0, 7, 9, isl=128, osl=128), _row("a", 7.2, 6, 8, isl=1024, osl=128),
            _row("a", 2.0, 1, 3, isl=128, osl=512)]
    [(kind, text)] = summary.shape_contrast(slo, rows)
    per_prompt = ((7.2 / 8.0) ** (1 / 3) - 1) * 100  # 8x prompt = 3 doublings
    assert f"doubling the prompt changes capacity by **{per_prompt:+.0f}%** (median of 1" in text
    assert "doubling the output changes it by **-50%**" in text  # 4x output: 0.25 = 0.5 ** 2
    assert "Longer prompts cost far less capacity than longer outputs." in text
    [(_, first), *rest] = summary.shape_contrast(slo, [_row("a", 8.0, 7, 9), _row("a", 2.0, 1, 3, isl=512, osl=64)])
    assert "cannot be told apart" in first and rest == [("li", "a bf16 on h100: 128/32: 8.00 req/s, 512/64: 2.00 req/s.")]
    [_, (_, none)] = summary.shape_contrast(slo, [_row("a", None, None, None, "below-range"),
                                                  _row("a", 2.0, 1, 3, "above-range", isl=512, osl=64)])
    assert none == "a bf16 on h100: 128/32: none, 512/64: ≥ 2.00 req/s."


# -- the answers table and the CLI ---------------------------------------------------------

@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return answers_data.build(tmp_path_factory.mktemp("answers"), prices={"h100": 2.0})


def test_answers_table_agrees_with_slo_table_and_says_lower_bounds(db):
    con = reqstore.connect(db)
    n_ok = con.execute("SELECT count(*) FROM cells WHERE status = 'ok'").fetchall()[0][0]
    assert con.execute("SELECT count(*) FROM answers").fetchall()[0][0] == n_ok * 4
    diff = con.execute("""SELECT count(*) FROM answers a JOIN slo s USING (measurement_id, slo)
        WHERE a.basis <> s.basis OR a.max_rps IS DISTINCT FROM s.max_rps
           OR a.ci_low_rps IS DISTINCT FROM s.ci_low_rps OR a.ci_high_rps IS DISTINCT FROM s.ci_high_rps""").fetchall()
    assert diff == [(0,)]
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT basis, any_value(answer), any_value(lower_bound), any_value(ci_high_rps) FROM answers GROUP BY 1").fetchall()}
    assert rows["above-range"][0].startswith("≥ ") and rows["above-range"][1] is True and rows["above-range"][2] is None
    assert rows["below-range"][0] == "not even one request at a time meets it"
    h = con.execute("""SELECT usd_per_hour, price, output_tok_s, output_tok_s_per_gpu, usd_per_1m_output_tokens,
        gpu_s_per_request, max_rps, engine_version, reproduce, server_command FROM answers
        WHERE cell_id = 'm1__eng-a__bf16__128-32' AND slo = 'ttft_p95<=1000ms'""").fetchall()[0]
    assert h[0] == 2.0 and "from the config" in h[1] and h[2] == h[3]
    assert h[4] == 2.0 / (h[2] * 3600) * 1e6 and h[5] == 1 / h[6] and h[7] == "0.9.1"
    assert h[8].startswith("snakemake --cores all --forcerun") and h[9].startswith("eng-a serve m1")
    c = con.execute("""SELECT usd_per_hour, output_tok_s_per_gpu, gpu_s_per_request, price_key FROM answers
        WHERE model = 'm2' LIMIT 1""").fetchall()[0]
    assert c == (cost.EXAMPLE_PRICES["cpu"].usd_per_hour, None, None, "cpu")
    assert con.execute("SELECT origin FROM prices WHERE price_key = 'h100'").fetchall() == [("config",)]
    # one name, one meaning: hardware_kind is the cells table's (what ran), price_key what is paid for
    assert con.execute("""SELECT count(*) FROM answers a JOIN cells c USING (measurement_id)
        WHERE a.hardware_kind IS DISTINCT FROM c.hardware_kind OR a.cell_id <> c.cell_id""").fetchall() == [(0,)]
    assert con.execute("SELECT DISTINCT hardware_kind, price_key FROM answers WHERE model = 'm1'").fetchall() == [
        ("h100-80gb-hbm3-x1", "h100")]
    con.close()


def _cli(capsys, *args):
    capsys.readouterr()
    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_slo_json_equals_answers_table_and_best(db, capsys):
    rc, out, _ = _cli(capsys, "slo", "--ttft-ms", "1000", "--format", "json", "--db", str(db))
    rows = {r["cell_id"]: r for r in json.loads(out)}
    con = reqstore.connect(db)
    table = {r[0]: r[1:] for r in con.execute(
        "SELECT cell_id, max_rps, basis, ci_low_rps, ci_high_rps, ttft_p95_ms, usd_per_1m_total_tokens "
        "FROM answers WHERE slo = 'ttft_p95<=1000ms'").fetchall()}
    con.close()
    assert rc == 0 and set(rows) == set(table) and "m1__eng-c__bf16__128-32" not in rows
    for cid, r in rows.items():
        assert (r["max_rps"], r["basis"], r["ci_low_rps"], r["ci_high_rps"], r["ttft_p95_ms"],
                r["usd_per_1m_total_tokens"]) == table[cid]
    rc, out, _ = _cli(capsys, "slo", "--ttft-ms", "1000", "--best", "--format", "json", "--db", str(db))
    groups = {(g["model"], g["isl"], g["osl"]): g for g in json.loads(out)}
    g = groups[("m1", 128, 32)]
    assert g["best"]["engine"] == "eng-b" and g["runner_up"]["engine"] == "eng-b"
    assert g["overlap"] is True and g["verdict"].startswith("no clear winner")  # bf16 and fp8 curves nearly equal
    assert groups[("m2", 512, 64)]["verdict"] == "only eng-a q4 meets it"
    assert rows["m2__eng-z__q4__512-64"]["basis"] == "no-data" and rows["m2__eng-z__q4__512-64"]["answer"] == "no measured point"
    rc, out, _ = _cli(capsys, "slo", "--ttft-ms", "1000", "--best", "--db", str(db))
    assert "no clear winner" in out and "eng-a q4" in out


def test_cli_plan_table_json_and_messages(db, capsys):
    rc, out, err = _cli(capsys, "plan", "--qps", "400", "--ttft-ms", "300", "--isl", "128", "--osl", "32",
                        "--price", "h100=2.5", "--format", "json", "--db", str(db))
    rows = json.loads(out)
    assert rc == 0 and [r["engine"] for r in rows][:2] == ["eng-b", "eng-b"] and rows[-1]["engine"] == "eng-a"
    for r in rows:
        assert r["replicas"] == math.ceil(400 / r["max_rps"]) and r["usd_per_hour"] == r["replicas"] * 2.5
        assert r["replicas_conservative"] >= r["replicas"]
    rc, out, err = _cli(capsys, "plan", "--qps", "400", "--ttft-ms", "300", "--isl", "128", "--osl", "32",
                        "--db", str(db))
    assert "replicas" in out and "$/month" in out and "eng-b" in out
    rc, out, err = _cli(capsys, "plan", "--qps", "400", "--ttft-ms", "300", "--isl", "4096", "--osl", "512",
                        "--db", str(db))
    assert rc == 1 and "no measured cell has ISL 4096 / OSL 512; measured shapes: 128/32, 128/128, 512/64, 1024/128" in err
    rc, out, err = _cli(capsys, "plan", "--qps", "400", "--ttft-ms", "10", "--isl", "128", "--osl", "32", "--db", str(db))
    assert rc == 1 and "none of the 3 configurations measured at 128/32 meets TTFT p95 ≤ 10 ms" in err
    rc, out, err = _cli(capsys, "plan", "--qps", "10", "--ttft-ms", "5000", "--isl", "128", "--osl", "32",
                        "--format", "csv", "--db", str(db))
    header, *lines = out.strip().splitlines()
    assert header.startswith("model,engine,engine_version") and any(",True," in ln for ln in lines)  # upper bounds


def test_cli_summary_markdown(db, capsys, tmp_path):
    rc, out, _ = _cli(capsys, "summary", "--db", str(db))
    assert rc == 0 and out.startswith("# Executive summary\n")
    assert "11 of 12 configurations measured (1 failed)" in out
    assert "## m1" in out and "### ISL 128 / OSL 32 on h100" in out and "**no clear winner**" in out
    assert "doubling the prompt changes capacity by" in out and "doubling the output changes it by" in out
    assert "## Not measured\n\n- m1 eng-c bf16 at 128/32: ServerStartupError: bad flag" in out
    _cli(capsys, "summary", "--db", str(db), "--out", str(tmp_path / "s.md"))
    assert (tmp_path / "s.md").read_text() == out


def test_point_stats_equal_the_one_at_a_time_definitions():
    from llm_almanac.curve import STATS, _point_stats

    vals = np.random.default_rng(3).lognormal(5, 0.4, 257)
    for s, (v, lo, hi) in _point_stats(vals).items():
        assert v == statistic(vals, s) and (lo, hi) == interval(vals, s)
    assert set(_point_stats(vals)) == set(STATS) and _point_stats(np.array([]))["p95"] == (None, None, None)


def test_percentiles_read_off_sorted_values_are_numpys_bit_for_bit():
    from llm_almanac.curve import _percentiles

    rng = np.random.default_rng(4)
    for n in [*range(1, 200), 1000, 4097, 100_003]:
        vals = np.round(rng.normal(10, 1, n), int(rng.integers(0, 4)))  # ties, as rounded latencies have
        qs = [50.0, 90.0, 95.0, 99.0]
        assert _percentiles(np.sort(vals), qs) == [float(v) for v in np.percentile(vals, qs, method="linear")], n


def test_curve_points_of_requests_with_failures_nulls_and_empty_itl_lists():
    """The vectorised per-point values (curve._latency_values) are the old per-point lists."""
    import polars as pl

    from llm_almanac import curve

    rng = np.random.default_rng(5)
    n = 400
    itl = [None if i % 7 == 0 else [] if i % 11 == 0 else [float(x) for x in rng.normal(10, 1, 3)] for i in range(n)]
    req = pl.DataFrame({"cell_id": "c", "repeat": 0, "phase": ["sweep"] * n, "step": [i % 3 for i in range(n)],
                        "status": ["error" if i % 5 == 0 else "ok" for i in range(n)], "prompt_tokens": 8,
                        "ttft_ms": [None if i % 13 == 0 else float(i) for i in range(n)], "tpot_ms": 1.0,
                        "e2e_ms": 2.0, "itl_ms": pl.Series(itl, dtype=pl.List(pl.Float64))})
    ph = pl.DataFrame({"cell_id": "c", "repeat": 0, "phase": "sweep", "step": [0, 1, 2, 3], "rps": 1.0,
                       "output_tok_s": 1.0, "duration_s": 10.0})
    pts = curve.points(req, ph)
    ok = req.filter(pl.col("status") == "ok")
    for step in range(4):
        one = ok.filter(pl.col("step") == step)
        row = pts.filter(pl.col("step") == step).row(0, named=True)
        gaps = np.array(one["itl_ms"].explode(empty_as_null=False, keep_nulls=False).drop_nulls().to_list())
        ttft = np.array(one["ttft_ms"].drop_nulls().to_list())
        assert row["n_ok"] == ttft.size
        assert row["itl_p90_ms"] == (round(statistic(gaps, "p90"), 3) if gaps.size else None)
        assert row["ttft_mean_ms"] == (round(statistic(ttft, "mean"), 3) if ttft.size else None)


def test_interval_brackets_the_answer_on_random_curves():
    """The claim the interval rests on: a higher statistic never raises the answer, so the
    pessimistic and optimistic readings bracket it (non-monotone curves included)."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        n = int(rng.integers(1, 9))
        rps = sorted(rng.uniform(0.1, 20, n).tolist())
        vals = rng.uniform(10, 1000, n)
        lo, hi = vals * rng.uniform(0.7, 1, n), vals * rng.uniform(1, 1.3, n)
        conds = [Condition(vals.tolist(), lo.tolist(), hi.tolist(), float(rng.uniform(0, 1100)))]
        if rng.random() < 0.5:
            v2 = rng.uniform(5, 60, n)
            conds.append(Condition(v2.tolist(), (v2 * 0.9).tolist(), (v2 * 1.1).tolist(), float(rng.uniform(0, 70))))
        a = answer(rps, conds)
        if a.max_rps is None:
            assert a.ci_low_rps is None and a.ci_high_rps is None
            continue
        assert (a.ci_low_rps or 0.0) <= a.max_rps <= (math.inf if a.ci_high_rps is None else a.ci_high_rps)


def test_a_database_from_before_measurement_keyed_curves_and_price_keys_still_answers(db, tmp_path):
    """curve without measurement_id (recomputed from requests) and prices keyed by `kind`."""
    from resultsets import copy_db

    from llm_almanac import answers

    old = tmp_path / "old.duckdb"
    copy_db(db, old)
    con = reqstore.connect(old, read_only=False)
    con.execute("CREATE TABLE curve_old AS SELECT * EXCLUDE (measurement_id) FROM curve")
    con.execute("DROP TABLE curve")
    con.execute("ALTER TABLE curve_old RENAME TO curve")
    con.execute("ALTER TABLE prices RENAME COLUMN price_key TO kind")
    con.close()
    slos = [SLO.from_limits(ttft_ms=700), SLO.from_limits(tpot_ms=30)]
    got = {}
    for path in (db, old):
        con = reqstore.connect(path)
        got[path] = answers.compute(con, slos).to_dicts()
        con.close()
    assert got[old] == got[db] and len(got[db]) > 4


def _two_level_frames(shift_ms: float, repeats: int = 3, n: int = 200):
    """One sweep point measured `repeats` times; repeat r's TTFTs are shifted by r * shift_ms."""
    import polars as pl

    rng = np.random.default_rng(11)
    rows = [{"cell_id": "c", "repeat": r, "phase": "sweep", "step": 0, "status": "ok", "prompt_tokens": 8,
             "ttft_ms": float(v) + r * shift_ms, "tpot_ms": 1.0, "e2e_ms": 2.0, "itl_ms": [1.0]}
            for r in range(repeats) for v in rng.normal(100, 5, n)]
    req = pl.DataFrame(rows, schema_overrides={"itl_ms": pl.List(pl.Float64)})
    ph = pl.DataFrame({"cell_id": "c", "repeat": list(range(repeats)), "phase": "sweep", "step": 0, "rps": 1.0,
                       "output_tok_s": 1.0, "duration_s": 10.0})
    return req, ph


def test_intervals_hold_the_drift_between_repeats():
    """Two levels: with repeats that agree the interval stays about the pooled requests' own;
    with repeats 20 ms apart it widens to the interval the repeats' own means give (resampling
    repeats, then requests), so drift between runs is never reported as precision."""
    import polars as pl

    from llm_almanac import curve

    steady = curve.points(*_two_level_frames(0.0)).row(0, named=True)
    req, ph = _two_level_frames(20.0)
    drift = curve.points(req, ph).row(0, named=True)
    lo, hi = curve.interval(req["ttft_ms"].to_numpy(), "mean")
    assert steady["n_repeats"] == 3 and steady["ttft_mean_hi_ms"] - steady["ttft_mean_lo_ms"] < 2.0
    assert (hi - lo) < 3.0  # the requests alone: a narrow interval around the pooled mean
    means = req.group_by("repeat").agg(pl.col("ttft_ms").mean())["ttft_ms"].to_numpy()
    half = curve.Z95 * np.std(means, ddof=1) / np.sqrt(3)
    assert drift["ttft_mean_hi_ms"] - drift["ttft_mean_ms"] >= half - 0.01
    assert drift["ttft_mean_ms"] - drift["ttft_mean_lo_ms"] >= half - 0.01
    assert drift["ttft_p95_hi_ms"] - drift["ttft_p95_lo_ms"] > 35  # every statistic, not the mean only
    assert curve.repeat_halfwidth([1.0]) is None and curve.repeat_halfwidth([1.0, None]) is None
    wild = curve.points(*_two_level_frames(1000.0)).row(0, named=True)  # repeats 100, 1100, 2100 ms
    assert wild["ttft_mean_lo_ms"] == 0.0 and wild["ttft_mean_hi_ms"] > 2200
