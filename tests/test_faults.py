"""The fault matrix: every fault mode through the real Snakemake workflow and cell code path.

The simulator stands in for the engine (it is labelled as such in every row); the startup
failure of a *real* engine (vLLM given a bad flag) is covered by test_e2e_snakemake. Asserted:
each cell's and request's status and error text, that the other cells are ok, that no server
process is left, and that `almanac rerun-failed` reruns exactly the failed cells and leaves the
database with exactly the same row counts (no duplicates).
"""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import psutil
import pytest
import yaml

from conftest import make_tokenizer, run_snakemake

ROOT = Path(__file__).resolve().parents[1]
# real Snakemake runs (on the simulator), several minutes: not the fast lane
pytestmark = pytest.mark.e2e

FAULTY = {
    # engine: (sim args, cell status, request error prefix or cell error pattern)
    "sim-ok": ([], "ok", None),
    "sim-http500": (["--fault", "http500", "--fault-after", "3"], "ok", "HTTP 500"),
    "sim-stall": (["--fault", "stall", "--fault-after", "3"], "ok", "timeout"),
    "sim-truncate": (["--fault", "truncate", "--fault-after", "3"], "ok",
                     "token counts differ from the request: prompt 16 (asked 16), completion 4 (asked 8)"),
    "sim-malformed": (["--fault", "malformed", "--fault-after", "3"], "ok", "malformed SSE data"),
    "sim-no-usage": (["--fault", "no_usage", "--fault-after", "3"], "ok", "server reported no usage"),
    "sim-crash": (["--fault", "crash", "--fault-after", "5"], "failed",
                  "server exited with code 70 during burst[0]; that phase is discarded"),
    "sim-exit": (["--fault", "exit_at_start"], "failed",
                 "ServerStartupError: server exited with code 3 before becoming healthy"),
    "sim-no-health": (["--fault", "no_health"], "failed", "ServerStartupError: server not healthy"),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    (work / "model").mkdir()
    make_tokenizer().save(str(work / "model" / "tokenizer.json"))
    engines = {}
    for name, (args, _, _) in FAULTY.items():
        engines[name] = {"module": "sim", "device": "cpu", "version": "0", "args": ["--tpot-ms", "2", *args]}
        if name == "sim-no-health":
            engines[name]["startup_timeout_s"] = 3
    cfg = {
        "allow_simulator": True,
        "engines_dir": str(work / "engines"),
        "models": {"tiny": {"source": "local", "path": str(work / "model"), "max_model_len": 4096}},
        "engines": engines,
        "grid": [{"models": ["tiny"], "engines": list(FAULTY), "quantizations": ["bf16"],
                  "shapes": [{"isl": 16, "osl": 8}]}],
        "bench": {"warmup_requests": 1, "sequential_requests": 4, "burst_requests": 8, "sweep_rates": 1,
                  "sweep_duration_s": 1, "request_timeout_s": 2},
        "analysis": {"bootstrap": 20},
    }
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    run_snakemake(work, cfgfile)
    return work, cfgfile


def _db(work):
    return duckdb.connect(str(work / "results" / "almanac.duckdb"), read_only=True)


def _cid(engine):
    return f"tiny__{engine}__bf16__16-8"


@pytest.mark.parametrize("engine", list(FAULTY))
def test_each_fault_is_data_with_its_reason(matrix, engine):
    work, _ = matrix
    args, status, text = FAULTY[engine]
    con = _db(work)
    got_status, error, hardware, version = con.execute(
        "SELECT status, error, hardware, engine_version FROM cells WHERE cell_id = ?", [_cid(engine)]).fetchone()
    assert hardware.startswith("SIMULATOR") and version.startswith("simulator-")  # never mistaken for an engine
    assert got_status == status, error
    if status == "failed":
        assert text in error
        return
    assert error is None
    reqs = con.execute("SELECT status, error FROM requests WHERE cell_id = ? ORDER BY request_id",
                       [_cid(engine)]).fetchall()
    failed = [e for s, e in reqs if s != "ok"]
    if text is None:
        assert failed == [] and len(reqs) >= 4 + 8
        assert con.execute("SELECT count(*) FROM slo WHERE cell_id = ?", [_cid(engine)]).fetchone()[0] == 4
    else:
        # warm-up (1) + 2 sequential requests are served normally, everything after is faulty
        assert [s for s, _ in reqs[:2]] == ["ok", "ok"]
        assert len(failed) == len(reqs) - 2 and all(e.startswith(text) for e in failed), failed[:3]
        n_failed = con.execute("SELECT sum(n_failed) FROM phases WHERE cell_id = ?", [_cid(engine)]).fetchone()[0]
        assert n_failed == len(failed)
    con.close()


def test_truncation_is_counted_as_token_mismatch(matrix):
    con = _db(matrix[0])
    n = con.execute("SELECT sum(n_token_mismatch) FROM phases WHERE cell_id = ?", [_cid("sim-truncate")]).fetchone()[0]
    assert n == con.execute("SELECT count(*) FROM requests WHERE cell_id = ? AND token_mismatch",
                            [_cid("sim-truncate")]).fetchone()[0] == 10
    # requests without any usage (HTTP 500) are failures, not token mismatches
    assert con.execute("SELECT sum(n_token_mismatch) FROM phases WHERE cell_id = ?",
                       [_cid("sim-http500")]).fetchone()[0] == 0
    con.close()


def test_crash_keeps_the_phases_measured_before_it(matrix):
    work, _ = matrix
    con = _db(work)
    phases = con.execute("SELECT phase, n_ok FROM phases WHERE cell_id = ?", [_cid("sim-crash")]).fetchall()
    assert phases == [("sequential", 4)]
    notes = json.loads(con.execute("SELECT notes FROM cells WHERE cell_id = ?", [_cid("sim-crash")]).fetchone()[0])
    assert any("kept: 0-sequential-0" in n for n in notes)
    con.close()
    assert (work / "results/cells" / _cid("sim-crash") / "partial/0-sequential-0.parquet").exists()


def test_no_server_left_running(matrix):
    work, _ = matrix
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if "llm_almanac.sim" in " ".join(p.info["cmdline"] or []) and str(work) in " ".join(p.info["cmdline"] or [])]
    assert left == []
    assert not list((work / "results/cells").glob("*/server.pid"))


def test_rerun_failed_touches_only_failed_cells_and_keeps_counts(matrix):
    work, cfgfile = matrix
    cells = work / "results/cells"
    mtimes = {d.name: (d / "cell.json").stat().st_mtime_ns for d in cells.iterdir()}
    con = _db(work)
    before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cells", "phases", "requests", "slo")}
    seq_before = con.execute("SELECT request_id, ttft_ms FROM requests WHERE cell_id = ? ORDER BY 1",
                             [_cid("sim-crash")]).fetchall()
    con.close()
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "rerun-failed", "--cores", "2", "--directory",
                        str(work), "-s", str(ROOT / "Snakefile"), "--configfile", str(cfgfile)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rerun = {d.name for d in cells.iterdir() if (d / "cell.json").stat().st_mtime_ns != mtimes[d.name]}
    assert rerun == {_cid(e) for e, (_, st, _) in FAULTY.items() if st == "failed"}
    con = _db(work)
    after = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cells", "phases", "requests", "slo")}
    assert after == before
    # the crashed cell's sequential phase was kept, not measured again
    assert con.execute("SELECT request_id, ttft_ms FROM requests WHERE cell_id = ? ORDER BY 1",
                       [_cid("sim-crash")]).fetchall() == seq_before
    con.close()
    log = (work / "results/logs/bench_cell" / f"{_cid('sim-crash')}.log").read_text()
    assert "sequential[0] (repeat 0): kept from an earlier run, not measured again" in log


def test_retries_rerun_a_failed_cell_automatically_keeping_its_phases(tmp_path):
    """bench.retries: 1 -> a crashed cell's job fails once, Snakemake retries it, and the retry
    starts from the phases the first attempt kept; the last attempt records the failure."""
    (tmp_path / "model").mkdir()
    make_tokenizer().save(str(tmp_path / "model" / "tokenizer.json"))
    cfg = {
        "allow_simulator": True,
        "engines_dir": str(tmp_path / "engines"),
        "models": {"tiny": {"source": "local", "path": str(tmp_path / "model"), "max_model_len": 4096}},
        "engines": {"sim-crash": {"module": "sim", "device": "cpu", "version": "0",
                                  "args": ["--tpot-ms", "2", "--fault", "crash", "--fault-after", "5"]}},
        "grid": [{"models": ["tiny"], "engines": ["sim-crash"], "quantizations": ["bf16"],
                  "shapes": [{"isl": 16, "osl": 8}]}],
        "bench": {"warmup_requests": 1, "sequential_requests": 4, "burst_requests": 8, "sweep_rates": 1,
                  "sweep_duration_s": 1, "request_timeout_s": 2, "retries": 1},
        "analysis": {"bootstrap": 10},
    }
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    p = run_snakemake(tmp_path, cfgfile)
    out = p.stdout + p.stderr
    assert "failed (attempt 1 of 2); Snakemake retries it" in out
    info = json.loads((tmp_path / "results/cells" / _cid("sim-crash") / "cell.json").read_text())
    assert info["status"] == "failed" and "during burst[0]" in info["error"]
    log = (tmp_path / "results/logs/bench_cell" / f"{_cid('sim-crash')}.log").read_text()
    assert "sequential[0] (repeat 0): kept from an earlier run, not measured again" in log
