"""The real workflow through a real SLURM cluster: slurmctld and slurmd on loopback.

tests/slurm_cluster.py installs Debian's SLURM (where missing, as root) and starts munged,
slurmctld and slurmd in a temp folder; Snakemake runs the end-to-end test's grid (vLLM-CPU and
llama.cpp on SmolLM2, plus a vLLM cell with a flag vLLM rejects) with `--workflow-profile`
profiles/slurm, changed only where this cluster differs from a GPU cluster: its partition is
`cpu`, status checks come every few seconds. Every bench_cell is a SLURM job (sbatch, then
srun inside it); installs, model preparation, analysis and aggregation run here as local rules.
The database gets exactly the local end-to-end test's checks (test_e2e_snakemake), then the
checks only a cluster run has: which SLURM job measured each cell, with what allocation, its
log, and `almanac rerun-failed` through SLURM. Every daemon is stopped at the end (asserted).

Slow (minutes): part of the default test command, like the local end-to-end test.
"""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_almanac import reqstore

import conftest as shared
from slurm_cluster import SlurmCluster, install

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
RUNTIME_MIN = 30
MEM_MB = 4000  # a scheduling number here (no cgroups): well below any test machine's memory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    install()
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), partition="cpu")
    with c:
        yield c
    assert c.alive() == [], f"left running after stop: {c.alive()}"


def _profile(cluster) -> Path:
    """profiles/slurm as shipped, but for this cluster's partition and with status checks every
    few seconds instead of every 40+ (the cells here take a minute, not hours)."""
    prof = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    prof["set-resources"]["bench_cell"]["slurm_partition"] = cluster.partition
    prof["slurm-init-seconds-before-status-checks"] = 5
    prof["seconds-between-status-checks"] = 5
    d = cluster.root / "profile"
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(prof))
    return d


def _snakemake(cluster, workdir, configfile, *args, check=True):
    cmd = [*shared.SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--workflow-profile", str(_profile(cluster)), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                       env={**cluster.env, "HF_TOKEN": shared.HF_SECRET})
    if check and p.returncode:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}\n"
                             f"{cluster.logs()}")
    return p


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory, default_config_module):
    work = tmp_path_factory.mktemp("e2e-slurm")
    cfg = shared.e2e_config(default_config_module)
    # a CPU cell takes the node's CPUs (and the node: --exclusive by default)
    cfg["resources"] = {"cpus": cluster.hardware["CPUs"], "mem_mb": MEM_MB, "runtime": RUNTIME_MIN}
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    proc = _snakemake(cluster, work, cfgfile)
    return work, cfg, cfgfile, proc


@pytest.fixture(scope="module")
def db(run):
    con = reqstore.connect(run[0] / "results" / "almanac.duckdb")
    yield con
    con.close()


# -- the local end-to-end run's checks, on the cluster run's database -------------------------

def test_good_cell_ok_and_bad_flag_cell_failed_with_reason(db):
    shared.check_good_cell_ok_and_bad_flag_cell_failed_with_reason(db)


def test_exact_token_counts_on_every_ok_request(db):
    shared.check_exact_token_counts_on_every_ok_request(db)


def test_latency_fields_are_consistent(db):
    shared.check_latency_fields_are_consistent(db)


@pytest.mark.parametrize("engine", ["vllm-cpu", "llama-cpp"])
def test_sweep_strictly_between_the_anchors(db, engine):
    shared.check_sweep_strictly_between_the_anchors(db, engine)


def test_no_engine_process_left(run):
    shared.check_no_engine_process_left(run)


def test_slo_rows_report_and_cli_after_real_run(run, db, tmp_path):
    shared.check_slo_rows_report_and_cli_after_real_run(run, db, tmp_path)


def test_secrets_never_reach_results_logs_or_db(run, db):
    shared.check_secrets_never_reach_results_logs_or_db(run, db)
    # nor SLURM's job logs (the job's environment does hold HF_TOKEN: sbatch --export=ALL)
    logs = [f for f in (run[0] / ".snakemake" / "slurm_logs").rglob("*.log")]
    assert logs
    for f in logs:
        data = f.read_bytes()
        assert shared.ENGINE_SECRET.encode() not in data and shared.HF_SECRET.encode() not in data, f


def test_rerun_does_nothing_and_new_shape_runs_only_new_cell(cluster, run):
    work, cfg, cfgfile, _ = run
    p = _snakemake(cluster, work, cfgfile, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    cfg2 = copy.deepcopy(cfg)
    cfg2["grid"][0]["shapes"].append({"isl": 32, "osl": 8})
    cfgfile2 = work / "config2.yaml"
    cfgfile2.write_text(yaml.safe_dump(cfg2))
    p = _snakemake(cluster, work, cfgfile2, "-n")
    out = p.stdout + p.stderr
    jobs = dict(re.findall(r"^(install_engine|prepare_model|bench_cell|aggregate|all)\s+(\d+)$", out, re.M))
    assert jobs == {"bench_cell": "1", "aggregate": "1", "all": "1"}, out


# -- what only a cluster run has ---------------------------------------------------------------

def _cells(work):
    return {json.loads(f.read_text())["engine"]: json.loads(f.read_text())
            for f in (work / "results" / "cells").glob("*/cell.json")}


def test_every_cell_was_a_slurm_job_on_the_node_and_the_rest_ran_here(run, db):
    work, _, _, proc = run
    rows = db.execute("SELECT engine, host, slurm_job_id FROM cells ORDER BY engine").fetchall()
    assert len(rows) == 3
    assert all(host == "localhost" for _, host, _ in rows), rows  # SLURM's node name, not this host's
    ids = [int(j) for _, _, j in rows]
    assert len(set(ids)) == 3
    out = proc.stdout + proc.stderr
    for cell in (f"smollm2-135m__{e}" for e in ("vllm-cpu__bf16__64-16", "llama-cpp__q4_1__64-16",
                                               "vllm-cpu-badflag__bf16__64-16")):
        jid = _cells(work)[cell.split("__")[1]]["slurm_job_id"]
        log = work / ".snakemake" / "slurm_logs" / "rule_bench_cell" / cell / f"{jid}.log"
        assert log.is_file(), sorted(p.name for p in (work / ".snakemake" / "slurm_logs").rglob("*"))
        assert re.search(rf"Job \d+ has been submitted with SLURM jobid {jid} ", out)
    # only bench_cell went to SLURM; the rest are local rules
    assert {p.name for p in (work / ".snakemake" / "slurm_logs").iterdir()} == {"rule_bench_cell"}
    for rule in ("prepare_model", "analyse_cell", "aggregate", "report"):
        assert f"localrule {rule}:" in out, rule
    assert "rule bench_cell:" in out and "localrule bench_cell:" not in out


def test_cells_got_the_configured_allocation(cluster, run):
    """What SLURM itself recorded for a cell's job (scontrol keeps finished jobs for MinJobAge)."""
    jid = _cells(run[0])["vllm-cpu"]["slurm_job_id"]
    p = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, env=cluster.env)
    assert p.returncode == 0, p.stderr
    job = dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)
    assert job["JobState"] == "COMPLETED" and job["Partition"] == "cpu" and job["NodeList"] == "localhost"
    assert int(job["NumCPUs"]) == cluster.hardware["CPUs"]
    assert job["TimeLimit"] == f"00:{RUNTIME_MIN}:00"
    assert job["MinMemoryNode"] == f"{MEM_MB}M"
    assert job["OverSubscribe"] == "NO"  # --exclusive: no other job on the node while it measures
    spans = sorted((c["started_at"], c["finished_at"]) for c in _cells(run[0]).values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans  # and indeed, one cell at a time


def test_rerun_failed_through_slurm_reruns_exactly_the_failed_cell(cluster, run):
    work, cfg, cfgfile, _ = run
    before = _cells(work)
    good = work / "results/cells/smollm2-135m__vllm-cpu__bf16__64-16/cell.json"
    good_mtime = good.stat().st_mtime_ns
    counts = shared.table_counts(work / "results/almanac.duckdb")
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "rerun-failed", "--directory", str(work),
                        "-s", str(ROOT / "Snakefile"), "--configfile", str(cfgfile),
                        "--", "--workflow-profile", str(_profile(cluster))],
                       capture_output=True, text=True, timeout=900, env=cluster.env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rerunning 1 failed cell(s): smollm2-135m__vllm-cpu-badflag__bf16__64-16" in p.stdout
    after = _cells(work)
    assert good.stat().st_mtime_ns == good_mtime
    assert after["vllm-cpu"]["slurm_job_id"] == before["vllm-cpu"]["slurm_job_id"]
    new_job = after["vllm-cpu-badflag"]["slurm_job_id"]
    assert int(new_job) > max(int(c["slurm_job_id"]) for c in before.values())  # a new SLURM job
    assert after["vllm-cpu-badflag"]["status"] == "failed"
    assert shared.table_counts(work / "results/almanac.duckdb") == counts


def test_a_cell_cancelled_by_slurm_stops_its_server_and_the_retry_keeps_measured_phases(
        cluster, run, tmp_path, default_config_module):
    """scancel in the middle of a cell's sweep (what SLURM does at the job's time limit): SLURM
    signals every process of the job, the cell stops its server, no engine process survives the
    job, and the profile's retry resubmits the cell, which measures only the phases it lacks."""
    import polars as pl

    cfg = shared.interrupt_config(default_config_module, run[0])
    cfg["resources"] = {"cpus": cluster.hardware["CPUs"], "mem_mb": MEM_MB, "runtime": RUNTIME_MIN}
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    cell = tmp_path / "results/cells" / shared.INTERRUPTED_CELL
    cmd = [*shared.SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(cfgfile), "--workflow-profile", str(_profile(cluster))]
    with open(tmp_path / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not (cell / "partial/0-burst-0.parquet").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the cell never reached its sweep"
            time.sleep(0.5)
        time.sleep(2)  # now inside the sweep
        jid = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True,
                             env=cluster.env).stdout.split()
        assert len(jid) == 1, jid
        jid = jid[0]
        assert subprocess.run(["scancel", jid], env=cluster.env).returncode == 0
        while cluster.job_pids(jid):  # SLURM ends the job's processes (SIGTERM, SIGKILL after KillWait)
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert shared.engine_processes(str(tmp_path)) == []
        kept = {f.stem: pl.read_parquet(f) for f in (cell / "partial").glob("*.parquet")
                if "." not in f.stem}  # a unit's requests; KEY.engine.parquet holds its engine metrics
        assert {"0-sequential-0", "0-burst-0"} <= set(kept)
        assert not (cell / "cell.json").exists()
        assert proc.wait(900) == 0, (tmp_path / "snakemake.out").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(120)
    info = json.loads((cell / "cell.json").read_text())
    assert info["status"] == "ok" and info["slurm_job_id"] != jid
    state = subprocess.run(["squeue", "-h", "-t", "all", "-j", jid, "-o", "%T"], capture_output=True, text=True,
                           env=cluster.env).stdout.strip()
    assert state == "CANCELLED"
    req = pl.read_parquet(cell / "requests.parquet")
    for key, df in kept.items():
        _, phase, step = key.split("-")
        got = req.filter((pl.col("phase") == phase) & (pl.col("step") == int(step))).sort("request_id")
        assert got["ttft_ms"].to_list() == df.sort("request_id")["ttft_ms"].to_list()
    assert set(req["phase"]) == {"sequential", "burst", "sweep"}
    log = (tmp_path / "results/logs/bench_cell" / f"{shared.INTERRUPTED_CELL}.log").read_text()
    assert "kept from an earlier run, not measured again" in log
    assert shared.engine_processes(str(tmp_path)) == []
