"""The fault matrix: every fault mode through the real Snakemake workflow and cell code path.

The simulator stands in for the engine (it is labelled as such in every row); the startup
failure of a *real* engine (vLLM given a bad flag) is covered by test_e2e_snakemake. Asserted:
each cell's and request's status and error text, that the other cells are ok, that no server
process is left, and that `almanac rerun-failed` reruns exactly the failed cells and leaves the
database with exactly the same row counts (no duplicates).

Issue 12's rows (below the matrix): secrets reach no file under the working directory
(.snakemake/ included) nor the console, whichever way they are given; the job's environment
reaches the engine exactly; a failed aggregate keeps the last good database and report; a server
on another host is refused when the DAG is built, or, with `expose: true`, says so. The rows that
need no Snakemake run are in test_faults_cli.py and test_faults_bench.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from llm_almanac import reqstore

from conftest import HF_SECRET, make_tokenizer, run_snakemake

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
    return reqstore.connect(work / "results" / "almanac.duckdb")


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


# -- issue 12: secrets by value, exact provenance, the last good database, loopback unless asked --
S_FLAG = "sk-flag-9f3e1c2b77"    # after --api-key in an engine's args
S_ENV = "tok-env-7a61d0e4aa"     # a secret-named variable in an engine's env
S_REF = "sk-ref-5d2c88a1bb"      # referred to as ${E2E_REF_KEY}; only the environment holds it
S_MARKED = "marked-0c4b9e77cc"   # a variable the config marks secret
S_MFLAG = "mflag-31d7aa02dd"     # the value of a flag the config marks secret
SECRETS = (S_FLAG, S_ENV, S_REF, S_MARKED, S_MFLAG, HF_SECRET)


def _sim_run(root, engines, env=None, **cfg_over):
    """A Snakemake run of sim cells in root/work; the config file lies outside the working
    directory (it holds secrets, as a user's own file may)."""
    work = root / "work"
    (work / "model").mkdir(parents=True)
    make_tokenizer().save(str(work / "model" / "tokenizer.json"))
    for e in engines.values():
        e.update({"module": "sim", "device": "cpu", "version": "0"})
    cfg = {"allow_simulator": True, "engines_dir": str(work / "engines"),
           "models": {"tiny": {"source": "local", "path": str(work / "model"), "max_model_len": 4096}},
           "engines": engines,
           "grid": [{"models": ["tiny"], "engines": list(engines), "quantizations": ["bf16"],
                     "shapes": [{"isl": 16, "osl": 8}]}],
           "bench": {"warmup_requests": 1, "sequential_requests": 3, "burst_requests": 6, "sweep_rates": 1,
                     "sweep_duration_s": 1, "request_timeout_s": 5},
           "analysis": {"bootstrap": 10}, **cfg_over}
    cfgfile = root / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    import os

    p = run_snakemake(work, cfgfile, env={**os.environ, **(env or {})}, check=False)
    return work, cfgfile, p


def _files_holding(work, values):
    """Every file under the working directory (.snakemake/ included) that holds one of values."""
    found = []
    for f in work.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            found += [(str(f.relative_to(work)), v) for v in values if v.encode() in data]
    return found


@pytest.fixture(scope="module")
def leaks(tmp_path_factory):
    """Secrets given the ways the code before issue 12 already accepted: a value after --api-key
    (the simulator rejects the flag and echoes it, as engines echo their arguments), a
    secret-named variable in an engine's env; plus TOKENIZERS_PARALLELISM in the job's
    environment, which engines must inherit."""
    engines = {
        "sim-envsecret": {"args": ["--tpot-ms", "2", "--echo-env", "MY_SERVICE_TOKEN",
                                   "--echo-env", "TOKENIZERS_PARALLELISM"],
                          "env": {"MY_SERVICE_TOKEN": S_ENV}},
        "sim-leaky": {"args": ["--tpot-ms", "2", "--api-key", S_FLAG]},
    }
    work, cfgfile, p = _sim_run(tmp_path_factory.mktemp("leaks"), engines, env={"TOKENIZERS_PARALLELISM": "false"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return work, cfgfile, p


def test_secrets_reach_no_file_under_the_working_directory_nor_the_console(leaks):
    """Finding 2: a value after --api-key leaked into cell.json's error, cells.error, the job log,
    server.log and the console; an env: secret into .snakemake/metadata (rule params)."""
    work, _, p = leaks
    assert (work / ".snakemake" / "metadata").is_dir()
    assert _files_holding(work, SECRETS) == []
    console = p.stdout + p.stderr
    assert not [v for v in SECRETS if v in console]
    con = _db(work)
    status, error, cmd = con.execute("SELECT status, error, server_command FROM cells WHERE cell_id = ?",
                                     [_cid("sim-leaky")]).fetchone()
    assert status == "failed" and "unrecognized arguments: --api-key ***" in error  # the echo, scrubbed
    assert "--api-key '***'" in cmd and "--tpot-ms 2" in cmd
    env, = con.execute("SELECT server_env FROM cells WHERE cell_id = ?", [_cid("sim-envsecret")]).fetchone()
    assert json.loads(env) == {"MY_SERVICE_TOKEN": "***"}
    con.close()
    log = (work / "results/cells" / _cid("sim-envsecret") / "server.log").read_text()
    assert "MY_SERVICE_TOKEN=***" in log  # the engine had the value; its log does not keep it


def test_the_job_environment_reaches_the_engine_exactly(leaks):
    """Finding 3: TOKENIZERS_PARALLELISM (TOKEN is not a whole part of it) was dropped from the
    engine's environment as if it were a secret."""
    work, _, _ = leaks
    log = (work / "results/cells" / _cid("sim-envsecret") / "server.log").read_text()
    assert "TOKENIZERS_PARALLELISM=false" in log


def test_a_failed_aggregate_keeps_the_last_good_database(leaks):
    """Finding 4: Snakemake deleted the database before the aggregate that then failed; every
    `almanac` command said "no database" and a temp file was left. Now the database (and the
    report) stay as they were, readable, and the message names the bad cell file."""
    work, cfgfile, _ = leaks
    db, report = work / "results" / "almanac.duckdb", work / "results" / "report.html"
    con = _db(work)
    before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cells", "phases", "requests", "slo")}
    con.close()
    report_before = report.read_bytes()
    bad = work / "results/cells" / _cid("sim-envsecret") / "slo.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file PAR1")
    p = run_snakemake(work, cfgfile, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert db.exists(), "the last good database was deleted"
    con = _db(work)  # in place and readable, with the same rows
    assert {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before} == before
    con.close()
    assert f"aggregate failed: bad cell file {bad.relative_to(work)}" in out or f"bad cell file {bad}" in out, out[-3000:]
    assert "the last good database results/almanac.duckdb is kept as it was" in out
    q = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "query", "SELECT count(*) AS n FROM cells", "--db",
                        str(db), "--format", "csv"], capture_output=True, text=True)
    assert q.returncode == 0 and q.stdout.split() == ["n", "2"], (q.stdout, q.stderr)
    assert report.read_bytes() == report_before
    assert [f.name for f in (work / "results").iterdir() if "tmp" in f.name or f.name.endswith(".wal")] == []
    # the cell fixed (its analysis redone), the next run builds a new database
    bad.unlink()
    p = run_snakemake(work, cfgfile)
    assert json.loads((work / "results" / "aggregate.json").read_text())["rows"]["slo"] == before["slo"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Secrets the issue-12 ways: a ${VAR} reference (the config file holds no secret), a
    variable and a flag marked secret in the config; and a server exposed on purpose."""
    engines = {
        "sim-refs": {"args": ["--tpot-ms", "2", "--echo-env", "SERVICE_API_KEY", "--echo-env", "PLAIN_NAMED",
                              "--model-name", S_MFLAG],
                     "env": {"SERVICE_API_KEY": "${E2E_REF_KEY}", "PLAIN_NAMED": S_MARKED},
                     "secrets": ["PLAIN_NAMED", "--model-name"]},
        "sim-exposed": {"args": ["--tpot-ms", "2", "--host", "0.0.0.0"], "expose": True},
    }
    work, cfgfile, p = _sim_run(tmp_path_factory.mktemp("refs"), engines, env={"E2E_REF_KEY": S_REF})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert S_REF not in cfgfile.read_text()
    return work, cfgfile, p


def test_references_and_marked_secrets_are_resolved_in_the_job_and_never_written(refs):
    work, _, p = refs
    assert _files_holding(work, SECRETS) == []
    assert not [v for v in SECRETS if v in p.stdout + p.stderr]
    con = _db(work)
    status, env, cmd = con.execute("SELECT status, server_env, server_command FROM cells WHERE cell_id = ?",
                                   [_cid("sim-refs")]).fetchone()
    con.close()
    assert status == "ok" and json.loads(env) == {"SERVICE_API_KEY": "***", "PLAIN_NAMED": "***"}
    assert "--model-name '***'" in cmd
    log = (work / "results/cells" / _cid("sim-refs") / "server.log").read_text()
    assert "SERVICE_API_KEY=***" in log and "PLAIN_NAMED=***" in log  # the engine had them


def test_an_exposed_server_says_so_in_its_notes_and_the_report(refs):
    work, _, _ = refs
    con = _db(work)
    status, notes = con.execute("SELECT status, notes FROM cells WHERE cell_id = ?", [_cid("sim-exposed")]).fetchone()
    con.close()
    note = "server reachable from the network: it listened on 0.0.0.0 (engine 'sim-exposed' sets expose: true)"
    assert status == "ok" and any(n.startswith(note) for n in json.loads(notes))
    assert "server reachable from the network: it listened on 0.0.0.0" in (work / "results/report.html").read_text()
    assert not list((work / "results/cells").glob("*/server.pid"))


def test_dag_refuses_a_server_on_another_host_and_a_malformed_config(tmp_path):
    """Finding 5: `--host 0.0.0.0` in an engine's args silently won over our --host 127.0.0.1."""
    (tmp_path / "model").mkdir()
    make_tokenizer().save(str(tmp_path / "model" / "tokenizer.json"))
    cfg = {"allow_simulator": True,
           "models": {"tiny": {"source": "local", "path": str(tmp_path / "model")}},
           "engines": {"sim-open": {"module": "sim", "device": "cpu", "version": "0", "args": ["--host", "0.0.0.0"]}},
           "grid": [{"models": ["tiny"], "engines": ["sim-open"], "quantizations": ["bf16"],
                     "shapes": [{"isl": 16, "osl": 8}]}]}
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    p = run_snakemake(tmp_path, cfgfile, "-n", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out
    assert ("invalid config: cell tiny__sim-open__bf16__16-8: engine args set --host 0.0.0.0, which makes the "
            "server reachable from the network") in out
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("models:\n  tiny: [1\n")
    p = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                        "-n", "--cores", "1"], capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out
    assert "invalid config: config/config.yaml: line 3, column 1: malformed YAML" in out
