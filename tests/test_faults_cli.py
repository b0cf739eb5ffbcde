"""The fault matrix, rows that need no Snakemake run: bad input to every `almanac` command and
to the config, redaction by value, loopback unless asked.

Each row asserts what the user sees: one line on stderr (never a traceback) that names the
thing to fix; and that nothing was measured, written or left running by mistake.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from llm_almanac import logs, redact, reqstore
from llm_almanac.aggregate import aggregate
from llm_almanac.config import load_cells, validate
from llm_almanac.engines import ServerSpec, get_engine
from llm_almanac.grid import ConfigError, expand_grid

from conftest import almanac

ROOT = Path(__file__).resolve().parents[1]


def almanac_proc(*args, cwd=None):
    """`almanac ARGS` as a user runs it, in its own process: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    return p.returncode, p.stdout, p.stderr


def one_line(err):
    """The error a user sees is one line, never a traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- the database and its CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_db(tmp_path_factory):
    from test_models_install_aggregate import _cell_dir

    root = tmp_path_factory.mktemp("db")
    db = root / "almanac.duckdb"
    aggregate([_cell_dir(root / "cells", "a"), _cell_dir(root / "cells", "b", status="failed")], db)
    return db


@pytest.mark.parametrize("cmd", [["query", "SELECT 1"], ["show", "a"], ["slo", "--ttft-ms", "100"],
                                 ["export", "--out", "x"]])
def test_a_corrupt_database_is_one_line_for_every_command(tmp_path, cmd):
    bad = tmp_path / "almanac.duckdb"
    bad.write_bytes(b"not a database at all\n" * 100)
    rc, _, err = (almanac_proc if cmd[0] == "query" else almanac)(*cmd, "--db", bad, cwd=tmp_path)
    assert rc != 0
    assert one_line(err).startswith(f"almanac: {bad} is not a readable DuckDB database")
    assert not (tmp_path / "x").exists()


def test_a_duckdb_file_that_is_not_an_almanac_database_is_named(tmp_path):
    other = tmp_path / "other.duckdb"
    reqstore.connect(other, read_only=False).close()
    rc, _, err = almanac("show", "a", "--db", other)
    assert rc != 0 and one_line(err) == f"almanac: {other} is not an almanac database (no table cells, phases, requests, slo)"


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_export_to_a_bad_path_is_one_line(good_db, tmp_path, where):
    f = tmp_path / "taken"
    f.write_text("mine")
    out = f if where == "file" else f / "sub"
    rc, _, err = almanac("export", "--format", "csv", "--out", out, "--db", good_db)
    assert rc != 0
    assert one_line(err).startswith(f"almanac export: --out {out}: cannot write there")
    assert f.read_text() == "mine"  # the user's file is untouched
    rc, out_text, err = almanac("export", "--format", "csv", "--out", tmp_path / "ok", "--db", good_db)
    assert rc == 0 and (tmp_path / "ok" / "cells.csv").exists(), err


def test_phases_report_their_failure_rate_beside_rps(good_db):
    con = reqstore.connect(good_db)
    assert "fail_rate" in [r[0] for r in con.execute("DESCRIBE phases").fetchall()]
    con.close()
    rc, out, err = almanac("show", "a", "--db", good_db)
    assert rc == 0, err
    assert "rps (ok only)" in out and "failed %" in out and "rps counts successful requests only" in out


# -- config files: `almanac cells`, `almanac rerun-failed`, the Snakefile's config -------------
MALFORMED = {
    "bracket.yaml": ("models: [x\n", "line 2, column 1: malformed YAML"),
    "tab.yaml": ("models:\n\tx: 1\n", "line 2, column 1: malformed YAML (found character '\\t'"),
    "list.yaml": ("- a\n- b\n", "a config is a mapping of keys (models, engines, grid, ...), not list"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_config_is_one_line_with_file_and_line(tmp_path, name):
    text, message = MALFORMED[name]
    (tmp_path / name).write_text(text)
    for run, cmd in ((almanac_proc if name == "bracket.yaml" else almanac, ["cells", "--configfile", name]),
                     (almanac, ["rerun-failed", "--configfile", name])):
        rc, _, err = run(*cmd, cwd=tmp_path)
        assert rc != 0
        line = one_line(err)
        assert f"{name}: {message}" in line, line


def test_a_missing_configfile_or_directory_is_one_line(tmp_path):
    rc, _, err = almanac("cells", "--configfile", "nope.yaml", cwd=tmp_path)
    assert rc != 0 and one_line(err) == "almanac cells: nope.yaml: no such file"
    rc, _, err = almanac("rerun-failed", "--configfile", "nope.yaml", cwd=tmp_path)
    assert rc != 0 and one_line(err) == "almanac rerun-failed: --configfile nope.yaml: no such file"
    rc, _, err = almanac("rerun-failed", "--directory", tmp_path / "nowhere", cwd=tmp_path)
    assert rc != 0 and one_line(err) == f"almanac rerun-failed: --directory {tmp_path / 'nowhere'}: no such folder"


def test_an_invalid_config_in_almanac_cells_names_the_key(tmp_path, default_config):
    default_config["grid"][0]["shapes"][0]["osl"] = -1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(default_config))
    rc, _, err = almanac("cells", "--configfile", "c.yaml", cwd=tmp_path)
    assert rc == 2 and one_line(err).startswith("almanac cells: invalid config c.yaml: config.grid[0].shapes[0].osl:")


# -- almanac sim: its documented options ---------------------------------------------------------
def test_almanac_sim_takes_its_options_and_help():
    rc, out, err = almanac_proc("sim", "--help")
    assert rc == 0, err
    for opt in ("--port", "--ttft-ms", "--tpot-ms", "--fault", "--tokenizer", "--workers"):
        assert opt in out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llm_almanac.cli", "sim", "--port", str(port), "--ttft-ms", "1",
                             "--model-name", "tiny", "--also-lists", "other"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        assert [m["id"] for m in r.json()["data"]] == ["tiny", "other"]  # --also-lists reaches the server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode is not None  # nothing left running


# -- names that become paths; exclusions that remove nothing ------------------------------------
def _grid_cfg(**over):
    cfg = {
        "allow_simulator": True,
        "models": {"m": {"source": "local", "path": "/x"}},
        "engines": {"sim": {"module": "sim", "device": "cpu", "version": "0"}},
        "grid": [{"models": ["m"], "engines": ["sim"], "quantizations": ["bf16"],
                  "shapes": [{"isl": 16, "osl": 8}, {"isl": 32, "osl": 8}]}],
    }
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("quant", ["../../outside", "a/b", ".hidden", "x__y"])
def test_a_quantization_that_would_leave_its_folder_is_refused(quant):
    cfg = _grid_cfg()
    cfg["grid"][0]["quantizations"] = [quant]
    with pytest.raises(ConfigError, match=rf"grid\[0\]: quantization '{quant}' becomes part of a file name"):
        expand_grid(cfg)


def test_an_engine_package_that_would_leave_the_engines_folder_is_refused():
    cfg = _grid_cfg()
    cfg["engines"]["sim"]["package"] = "../../../tmp/x"
    with pytest.raises(ConfigError, match=r"config\.engines\.sim\.package: '\.\./\.\./\.\./tmp/x' does not match"):
        validate(cfg)


def test_an_exclusion_that_matches_no_cell_is_an_error_naming_it():
    cfg = _grid_cfg(exclude=[{"isl": 16}, {"model": "m", "isl": 512}])
    with pytest.raises(ConfigError, match=r"^config\.exclude\[1\] \{'model': 'm', 'isl': 512\} matches no cell"):
        expand_grid(cfg)
    cfg = _grid_cfg()
    cfg["grid"][0]["exclude"] = [{"quantization": "fp8"}]
    with pytest.raises(ConfigError, match=r"^config\.grid\[0\]\.exclude\[0\] \{'quantization': 'fp8'\} matches no"):
        expand_grid(cfg)
    cfg["grid"][0]["exclude"] = [{"isl": 32}]
    assert [c.isl for c in expand_grid(cfg)] == [16]


# -- loopback unless asked (finding 5) ----------------------------------------------------------
@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--hos", "0.0.0.0"],
                                  ["--host", "127.0.0.1", "--host", "192.168.1.5"]])
def test_engine_args_that_open_the_server_to_the_network_are_refused_naming_the_cell(args):
    bad = args[-1].split("=")[-1]
    cfg = _grid_cfg()
    cfg["engines"]["sim"]["args"] = args
    with pytest.raises(ConfigError, match=rf"^cell m__sim__bf16__16-8: engine args set --host {bad}, which makes "
                                          r"the server reachable from the network .* set `expose: true` on engine 'sim'"):
        expand_grid(cfg)
    cfg["engines"]["sim"]["expose"] = True  # said explicitly: allowed
    validate(cfg)
    assert expand_grid(cfg)[0].extra_args == tuple(args)


def test_host_set_through_a_model_or_grid_entry_is_refused_too():
    cfg = _grid_cfg()
    cfg["models"]["m"]["engine_args"] = {"sim": ["--host", "::"]}
    with pytest.raises(ConfigError, match="cell m__sim__bf16__16-8: engine args set --host ::"):
        expand_grid(cfg)
    cfg = _grid_cfg()
    cfg["grid"][0]["engine_args"] = {"sim": ["--host", "localhost"]}  # loopback: fine
    assert len(expand_grid(cfg)) == 2


def test_requested_host_follows_each_engines_parser():
    from llm_almanac.engines import requested_host

    assert requested_host(["--port", "1"]) is None
    assert requested_host(["--host", "a", "--host=b"]) == "b"  # the last one wins
    assert requested_host(["--ho", "c"]) == "c" and requested_host(["--host_", "d"]) is None
    assert requested_host(["--hosts", "x"]) is None and requested_host(["--h", "x"]) is None


# -- redaction by value (findings 2 and 3) ------------------------------------------------------
def test_secret_names_are_whole_parts_not_substrings():
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "HF_TOKEN_PATH", "api-key"):
        assert redact.is_secret(name), name
    for name in ("TOKENIZERS_PARALLELISM", "MAX_TOKENS", "KEYCLOAK_URL", "tokenizer-mode", "max-num-batched-tokens",
                 "VLLM_CPU_KVCACHE_SPACE", "MONKEY"):
        assert not redact.is_secret(name), name
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_TOKEN": "hf_abcdefgh", "PATH": "/bin"}
    assert redact.without_secrets(env) == {"TOKENIZERS_PARALLELISM": "false", "PATH": "/bin"}


def test_the_recorded_command_is_the_command_that_ran_but_its_secrets():
    """Finding 3: any flag whose name contained TOKEN or KEY was masked (--tokenizer-mode '***')."""
    cmd = ["vllm", "--tokenizer-mode", "mistral", "--max-num-batched-tokens", "8192", "--tokenizer", "/t",
           "--api-key", "sk-live-123456", "--hf-token", "--admin-api-key=adm-99999999", "-hft", "hf_zzzzzzzz",
           "--ssl-keyfile", "/k.pem", "--served-model-name", "sk-live-123456-copy"]
    assert redact.redact_args(cmd) == [
        "vllm", "--tokenizer-mode", "mistral", "--max-num-batched-tokens", "8192", "--tokenizer", "/t",
        "--api-key", "***", "--hf-token", "--admin-api-key=***", "-hft", "***", "--ssl-keyfile", "/k.pem",
        "--served-model-name", "***-copy"]  # by value: a secret is scrubbed wherever else it appears


def test_no_almanac_grid_command_is_recorded_with_a_mask():
    """18 cells of the Almanac grid once recorded `--tokenizer-mode '***'`."""
    cfg = yaml.safe_load((ROOT / "config" / "grids" / "almanac.yaml").read_text())
    n = 0
    for c in load_cells(cfg):
        spec = ServerSpec(python="/venv/bin/python", model_path="/m", served_name=c.model,
                          quantization=c.quantization, port=8000, tensor_parallel=max(1, c.n_gpus),
                          device="cuda", extra_args=c.extra_args, workdir="/w")
        engine = get_engine(cfg["engines"][c.engine].get("module", c.engine))
        cmd = engine.server_command(spec)
        assert redact.redact_args(cmd) == cmd, c.cell_id
        n += "--tokenizer-mode" in cmd
    assert n >= 18


def test_references_resolve_in_the_job_and_their_secrets_are_known():
    environ = {"MY_API_KEY": "sk-ref-abcdef", "PLAIN": "plain-value", "SHORTY_TOKEN": "abc"}
    res = redact.resolve(["--api-key", "${MY_API_KEY}", "--name", "${PLAIN}", "--flag-x", "custom-secret-1"],
                         {"A_TOKEN": "${SHORTY_TOKEN}", "MARKED": "marked-value-1", "TOKENIZERS_PARALLELISM": "false"},
                         marked=["MARKED", "--flag-x"], environ=environ)
    assert res.args == ["--api-key", "sk-ref-abcdef", "--name", "plain-value", "--flag-x", "custom-secret-1"]
    assert set(res.secrets) == {"sk-ref-abcdef", "custom-secret-1", "abc", "marked-value-1"}
    assert res.short() == ["abc"]
    assert res.recorded_env() == {"A_TOKEN": "***", "MARKED": "***", "TOKENIZERS_PARALLELISM": "false"}
    assert res.command(["srv", *res.args]) == ["srv", "--api-key", "***", "--name", "plain-value", "--flag-x", "***"]
    with pytest.raises(redact.SecretError, match=r"\$\{UNSET_X\} is not set"):
        redact.resolve(["${UNSET_X}"], {}, environ={})


def test_externalize_keeps_secret_values_out_of_the_config_with_stable_names():
    cfg = {"engines": {"e": {"args": ["--api-key", "sk-lit-123456", "--port-x", "1", "--hf-token=hf_lit_123456",
                                      "--api-key", "${ALREADY_A_REF}"],
                             "env": {"MY_TOKEN": "tok-lit-123456", "TOKENIZERS_PARALLELISM": "false", "CUSTOM": "c-123456"},
                             "secrets": ["CUSTOM"]}},
           "models": {"m": {"engine_env": {"e": {"OTHER_KEY": "key-lit-123456"}}}},
           "grid": [{"engine_args": {"e": ["--admin-api-key", "adm-lit-123456"]}}]}
    out = redact.externalize(cfg)
    text = json.dumps(cfg)
    for v in ("sk-lit-123456", "hf_lit_123456", "tok-lit-123456", "c-123456", "key-lit-123456", "adm-lit-123456"):
        assert v not in text and v in out.values()
    assert cfg["engines"]["e"]["args"][1] == "${ALMANAC_SECRET_ENGINES_E_ARGS_1}"
    assert cfg["engines"]["e"]["args"][4] == "--hf-token=${ALMANAC_SECRET_ENGINES_E_ARGS_4}"
    assert cfg["engines"]["e"]["args"][6] == "${ALREADY_A_REF}"
    assert cfg["engines"]["e"]["env"]["TOKENIZERS_PARALLELISM"] == "false"
    assert redact.externalize(cfg) == {}  # idempotent
    res = redact.resolve(cfg["engines"]["e"]["args"][:5], cfg["engines"]["e"]["env"], ["CUSTOM"], environ=out)
    assert res.args[1] == "sk-lit-123456" and "c-123456" in res.secrets


def test_an_uncaught_error_reaches_the_jobs_own_log_one_line_when_it_is_ours(tmp_path, capsys):
    """A job that dies of an uncaught exception leaves its reason in its own log file (before, it
    went to stderr only and the job's log was empty); the project's own errors are one line."""
    from llm_almanac.models import ModelError

    logs.setup(tmp_path / "job.log")
    try:
        for exc in (ModelError("model 'm' has no tokenizer.json: set models.m.tokenizer"), KeyError("x")):
            try:
                raise exc
            except Exception:  # noqa: BLE001 - handed to the hook exactly as Python would
                sys.excepthook(*sys.exc_info())
        text = (tmp_path / "job.log").read_text()
        lines = text.splitlines()
        assert lines[0].endswith("ERROR root: ModelError: model 'm' has no tokenizer.json: set models.m.tokenizer")
        assert "Traceback" not in lines[0] and "uncaught KeyError" in lines[1]
        assert "Traceback (most recent call last)" in text and "raise exc" in text
        assert "ModelError: model 'm'" in capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        sys.excepthook = sys.__excepthook__


def test_logs_and_tracebacks_are_scrubbed_of_remembered_secrets(tmp_path, capsys):
    redact.remember(["remembered-secret-42"])
    logs.setup(tmp_path / "job.log")
    try:
        logging.getLogger("x").info("server said %s", "bad key remembered-secret-42")
        try:
            raise RuntimeError("boom remembered-secret-42")
        except RuntimeError:
            logging.getLogger("x").exception("failed")
            sys.excepthook(*sys.exc_info())
        for h in logging.getLogger().handlers:
            h.flush()
        text = (tmp_path / "job.log").read_text()
        assert "remembered-secret-42" not in text and "server said bad key ***" in text and "boom ***" in text
        assert "remembered-secret-42" not in capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        sys.excepthook = sys.__excepthook__
        redact._known.discard("remembered-secret-42")
