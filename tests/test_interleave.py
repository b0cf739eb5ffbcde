"""bench.interleave: the repeats of different cells run A B A B ... through the real workflow.

Two simulator cells, two repeats each: repeat 1 of either cell starts only after repeat 0 of
both has finished, each cell's requests hold both repeats (request ids never repeat), the sweep
of repeat 1 offers the rates repeat 0 fixed, and no server is left running."""

import json

import polars as pl
import psutil
import pytest
import yaml

from conftest import make_tokenizer, run_snakemake

pytestmark = pytest.mark.e2e

ENGINES = ("sim-a", "sim-b")


def _cid(engine):
    return f"tiny__{engine}__bf16__16-8"


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
    work = tmp_path_factory.mktemp("interleave")
    (work / "model").mkdir()
    make_tokenizer().save(str(work / "model" / "tokenizer.json"))
    cfg = {
        "allow_simulator": True,
        "engines_dir": str(work / "engines"),
        "models": {"tiny": {"source": "local", "path": str(work / "model"), "max_model_len": 4096}},
        "engines": {e: {"module": "sim", "device": "cpu", "version": "0", "args": ["--tpot-ms", "2"]}
                    for e in ENGINES},
        "grid": [{"models": ["tiny"], "engines": list(ENGINES), "quantizations": ["bf16"],
                  "shapes": [{"isl": 16, "osl": 8}]}],
        "bench": {"warmup_requests": 1, "sequential_requests": 3, "burst_requests": 6, "sweep_rates": 2,
                  "sweep_duration_s": 1, "request_timeout_s": 5, "repeats": 2, "interleave": True},
        "analysis": {"bootstrap": 10},
    }
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    dry = run_snakemake(work, cfgfile, "-n")
    run_snakemake(work, cfgfile)
    return work, dry.stdout + dry.stderr


def test_the_plan_has_one_round_job_per_cell_before_the_cells_last_repeat(interleaved):
    _, dry = interleaved
    jobs = dict(line.split() for line in dry.splitlines() if line.strip().startswith(("bench_round ", "bench_cell ")))
    assert jobs == {"bench_round": "2", "bench_cell": "2"}


def test_repeat_one_of_any_cell_starts_after_repeat_zero_of_every_cell(interleaved):
    work, _ = interleaved
    cells = work / "results/cells"
    rounds = [json.loads((cells / _cid(e) / "rounds/0.json").read_text()) for e in ENGINES]
    assert all(r["status"] == "ok" and r["repeat"] == 0 for r in rounds)
    assert all(any(u.startswith("0-") for u in r["units"]) for r in rounds)
    records = [json.loads((cells / _cid(e) / "cell.json").read_text()) for e in ENGINES]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert max(r["finished_at"] for r in rounds) <= min(r["started_at"] for r in records)
    assert all(any("bench.interleave" in n for n in r["notes"]) for r in records)


def test_each_cell_holds_both_repeats_with_the_same_sweep_rates(interleaved):
    work, _ = interleaved
    for e in ENGINES:
        d = work / "results/cells" / _cid(e)
        req = pl.read_parquet(d / "requests.parquet")
        assert sorted(req["repeat"].unique().to_list()) == [0, 1]
        assert req["request_id"].n_unique() == req.height
        assert (req["status"] == "ok").all()
        ph = pl.read_parquet(d / "phases.parquet").filter(pl.col("phase") == "sweep")
        by_rep = {r: ph.filter(pl.col("repeat") == r).sort("step")["target_rps"].to_list() for r in (0, 1)}
        assert len(by_rep[0]) == 2 and by_rep[0] == by_rep[1]
        assert not (d / "partial").exists() or not any((d / "partial").glob("*.parquet"))
        assert (d / "server.repeat0.log").exists()


def test_no_server_left_running(interleaved):
    work, _ = interleaved
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(work) in " ".join(p.info["cmdline"] or [])
            and "llm_almanac.sim" in " ".join(p.info["cmdline"] or [])]
    assert left == []
