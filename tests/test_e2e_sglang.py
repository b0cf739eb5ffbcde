"""The real SGLang server (sglang 0.5.23, the Almanac grid's version) through the real workflow,
in SGLang's CPU mode with llm-almanac's stand-in for its kernel package (a test instrument:
tests/configs/sglang_cpu.yaml, src/llm_almanac/testkit/).

What it proves about the SGLang adapter by running it: the server command starts a server that
SGLang's own parser accepts, /health, /tokenize's shape, exact output lengths from the server's
own `usage`, sequential/burst/sweep in order, a bad flag becomes a failed-cell row, and no
SGLang process (server, scheduler, detokenizer) outlives a cell, a Ctrl-C mid-phase, or a crash
of SGLang's scheduler. Its latencies are not SGLang's (every layer runs in plain PyTorch here),
so nothing about speed is asserted.

Slow: the first run installs the engine environment into the repository's results/engines
(~6.3 GB, mostly torch's CUDA build and its NVIDIA libraries; shared with later runs).
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from llm_almanac import reqstore

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "sglang_cpu.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LABEL = "test instrument: SGLang with stand-in CPU kernels"
ISL, OSL = 32, 8
CELL = f"smollm2-135m__sglang-cpu__fp32__{ISL}-{OSL}"
BAD = f"smollm2-135m__sglang-cpu-badflag__fp32__{ISL}-{OSL}"

pytestmark = [pytest.mark.e2e, pytest.mark.sglang]


def _config(model_dir: Path | None = None) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["engines_dir"] = str(ROOT / "results" / "engines")
    if model_dir is not None:  # the model converted by the first run: no second conversion
        cfg["models"]["smollm2-135m"] = {"source": "local", "path": str(model_dir), "max_model_len": 2048}
    # small on purpose: SGLang's plain-PyTorch CPU path is slow, and batching gains it little
    cfg["bench"] = {"warmup_requests": 1, "sequential_requests": 3, "burst_requests": 8,
                    "sweep_rates": 2, "sweep_duration_s": 3, "request_timeout_s": 300}
    return cfg


def _snakemake(workdir, configfile, *args, check=True):
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    if check and p.returncode:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-8000:]}")
    return p


def _is_sglang(cmd: str) -> bool:
    """The server (`python -m sglang.launch_server`), its scheduler and detokenizer (which rename
    themselves `sglang::scheduler`, ...), and the multiprocessing helpers an engine environment's
    Python runs for it (resource tracker; children before they rename themselves)."""
    return ("-m sglang.launch_server" in cmd or cmd.startswith("sglang::")
            or (cmd.startswith(str(ROOT / "results" / "engines")) and "multiprocessing" in cmd))


def _sglang_processes(workdir: Path) -> list[tuple[int, str, str]]:
    """SGLang's processes started for this workdir, found by their working directory, which
    they inherit from the bench_cell job (the workdir): the renamed ones name no path."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if not _is_sglang(cmd):
                continue
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue  # exited; only its parent's bookkeeping is left
            if p.cwd().startswith(str(workdir)):
                found.append((p.pid, p.info["status"], cmd[:100]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"snakemake exited ({proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-sglang")
    cfg = _config()
    # a variant of the same install with a flag SGLang rejects: a failed-cell row, nothing else
    bad = copy.deepcopy(cfg["engines"]["sglang-cpu"])
    bad["args"] = bad["args"] + ["--no-such-flag"]
    cfg["engines"]["sglang-cpu-badflag"] = bad
    cfg["grid"] = [cfg["grid"][0], {**cfg["grid"][0], "engines": ["sglang-cpu-badflag"]}]
    assert cfg["grid"][0]["shapes"] == [{"isl": ISL, "osl": OSL}]
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = _snakemake(work, cfgfile, "results/aggregate.json")  # the database; the HTML report is tested elsewhere
    print(f"\nsglang e2e: the workflow took {time.monotonic() - t0:.0f} s")
    return work, proc


@pytest.fixture(scope="module")
def db(run):
    con = reqstore.connect(run[0] / "results" / "almanac.duckdb")
    yield con
    con.close()


@pytest.fixture(scope="module")
def cell_info(run):
    return json.loads((run[0] / "results" / "cells" / CELL / "cell.json").read_text())


@pytest.fixture(scope="module")
def installed(run):
    cfg = yaml.safe_load(CONFIG.read_text())["engines"]["sglang-cpu"]
    from llm_almanac.install import env_id

    return json.loads((ROOT / "results" / "engines" / env_id("sglang-cpu", cfg) / "installed.json").read_text())


def test_good_cell_ok_labelled_as_test_instrument_bad_flag_cell_failed(db):
    rows = dict(db.execute("SELECT engine, status FROM cells").fetchall())
    assert rows == {"sglang-cpu": "ok", "sglang-cpu-badflag": "failed"}
    version, hardware, startup, cmd, pkgs = db.execute(
        "SELECT engine_version, hardware, startup_s, server_command, engine_packages FROM cells "
        "WHERE engine = 'sglang-cpu'").fetchone()
    assert version == "0.5.23" and hardware == LABEL and startup > 0
    assert " -m sglang.launch_server --model-path " in cmd and "--device cpu --sleep-on-idle" in cmd
    pkgs = json.loads(pkgs)
    assert "sglang==0.5.23" in pkgs and "torch==2.14.1" in pkgs
    assert not [p for p in pkgs if p.lower().startswith(("sglang-kernel", "sgl-kernel", "flashinfer"))]
    err, bad_cmd, bad_hw = db.execute(
        "SELECT error, server_command, hardware FROM cells WHERE engine = 'sglang-cpu-badflag'").fetchone()
    assert "ServerStartupError" in err and "no-such-flag" in err and "--no-such-flag" in bad_cmd
    assert bad_hw == LABEL


def test_server_reports_its_version_and_tokenize_agrees_with_our_prompts(cell_info):
    assert cell_info["server_reported_version"] == "0.5.23"  # GET /get_server_info
    assert cell_info["tokenize_check"] == ISL  # POST /tokenize {model, prompt, add_special_tokens} -> count


def test_exact_token_counts_from_the_servers_own_usage(db):
    n, bad = db.execute("""
        SELECT count(*), count(*) FILTER (WHERE prompt_tokens != $isl OR completion_tokens != $osl
                                          OR requested_isl != $isl OR requested_osl != $osl OR token_mismatch)
        FROM requests WHERE status = 'ok'""", {"isl": ISL, "osl": OSL}).fetchone()
    assert n >= 3 + 8 and bad == 0
    assert db.execute("SELECT count(*) FROM requests WHERE status != 'ok'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM requests WHERE phase = 'warmup'").fetchone()[0] == 0


def test_latency_fields_are_consistent(db):
    bad = db.execute("""
        SELECT count(*) FROM requests WHERE status = 'ok' AND NOT (
            ttft_ms > 0 AND e2e_ms >= ttft_ms AND tpot_ms > 0
            AND len(itl_ms) = n_token_events - 1 AND n_token_events >= 2
            AND abs(list_sum(itl_ms) - (e2e_ms - ttft_ms)) < 0.01)""").fetchone()[0]
    assert bad == 0


def test_phases_in_order_and_sweep_strictly_between_the_anchors(db):
    rates = dict(db.execute("SELECT phase, rps FROM phases WHERE cell_id = ? AND phase IN ('sequential','burst')",
                            [CELL]).fetchall())
    assert rates["sequential"] > 0 and rates["burst"] > 0
    # sequential, then burst, then the sweep: request ids are handed out in that order
    spans = db.execute("""SELECT phase, min(request_id), max(request_id) FROM requests WHERE cell_id = ?
                          GROUP BY phase ORDER BY min(request_id)""", [CELL]).fetchall()
    assert [s[0] for s in spans] == ["sequential", "burst", "sweep"]
    assert all(a[2] < b[1] for a, b in zip(spans, spans[1:]))
    targets = [r[0] for r in db.execute(
        "SELECT target_rps FROM phases WHERE phase = 'sweep' AND cell_id = ? ORDER BY step", [CELL]).fetchall()]
    lo, hi = sorted(rates.values())
    assert len(targets) == 2 and targets == sorted(targets) and all(lo < t < hi for t in targets)


def test_server_log_shows_the_cpu_paths_and_no_standin_call(run):
    log = (run[0] / "results" / "cells" / CELL / "server.log").read_text(errors="replace")
    assert "fallback to torch_native backend" in log  # no Intel AMX: plain PyTorch attention
    assert "'device': 'cpu'" in log and "'sleep_on_idle': True" in log
    assert "NotImplementedError" not in log and "sgl_kernel stand-in" not in log


def test_no_sglang_process_left_after_the_run(run):
    assert _sglang_processes(run[0]) == []
    assert not list(run[0].glob("results/cells/*/server.pid"))


PARSER_CHECK = """
import argparse, json, sys
from sglang.srt.server_args import ServerArgs
out = []
for argv in json.load(sys.stdin):
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    try:
        a = parser.parse_args(argv)
        out.append([a.model_path, a.port, a.tp_size, a.quantization, a.dtype, a.context_length])
    except SystemExit as e:
        out.append(["rejected", int(e.code or 0)])
print(json.dumps(out))
"""


def test_every_almanac_sglang_command_parses_with_sglangs_own_parser(installed):
    """The GPU commands of the Almanac grid, through SGLang 0.5.23's own argument parser (it
    imports without a GPU in this environment)."""
    from test_almanac_grid import _commands

    from llm_almanac.config import load_cells

    grid = yaml.safe_load((ROOT / "config" / "grids" / "almanac.yaml").read_text())
    cmds = [list(c[3:]) for c in _commands(load_cells(grid), grid, "sglang")]
    assert len(cmds) >= 10
    cmds.append(["--model-path", "/m", "--no-such-flag"])
    p = subprocess.run([installed["python"], "-c", PARSER_CHECK], input=json.dumps(cmds),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    assert results[-1] == ["rejected", 2]  # the parser really rejects unknown flags
    rejected = [c for c, r in zip(cmds[:-1], results[:-1]) if r[0] == "rejected"]
    assert rejected == []
    assert {r[2] for r in results[:-1]} == {1, 8}  # --tp-size reaches tp_size
    assert {r[3] for r in results[:-1]} >= {None, "fp8"}


def _single_cell_run(tmp_path: Path, run_dir: Path, shape: dict):
    cfg = _config(run_dir / "results" / "models" / "smollm2-135m" / "hf")
    cfg["grid"][0]["shapes"] = [shape]
    cfg["bench"]["sequential_requests"] = 2  # the burst, where the test strikes, starts sooner
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    cid = f"smollm2-135m__sglang-cpu__fp32__{shape['isl']}-{shape['osl']}"
    cmd = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
           str(cfgfile), "--cores", "2", f"results/cells/{cid}/cell.json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, tmp_path / "results" / "cells" / cid


def test_ctrl_c_mid_phase_leaves_no_sglang_process(run, tmp_path):
    """SIGINT to Snakemake's process group (what Ctrl-C in a terminal sends) while the burst is
    in flight: the cell stops its server, SGLang's scheduler and detokenizer go with it."""
    proc, cell = _single_cell_run(tmp_path, run[0], {"isl": 24, "osl": 8})
    try:
        _wait_for(cell / "partial" / "0-sequential-0.parquet", proc, 900)
        time.sleep(1)  # inside the burst
        running = [cmd for _, _, cmd in _sglang_processes(tmp_path)]
        assert len(running) == 4, running  # server, scheduler, detokenizer, resource tracker
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    assert _sglang_processes(tmp_path) == []
    assert not (cell / "server.pid").exists() and not (cell / "cell.json").exists()
    assert (cell / "partial" / "0-sequential-0.parquet").exists()  # measured phases are kept


def test_scheduler_crash_fails_the_cell_and_leaves_no_sglang_process(run, tmp_path):
    """SIGKILL to SGLang's scheduler mid-phase: SGLang sees its child die and takes its server
    down (after a 5 s pause it spends on crash diagnostics); the cell becomes a failed row with
    the reason, and nothing of SGLang is left."""
    proc, cell = _single_cell_run(tmp_path, run[0], {"isl": 16, "osl": 8})
    try:
        _wait_for(cell / "partial" / "0-sequential-0.parquet", proc, 900)
        sched = [pid for pid, _, cmd in _sglang_processes(tmp_path) if cmd.startswith("sglang::scheduler")]
        assert len(sched) == 1, _sglang_processes(tmp_path)
        os.kill(sched[0], signal.SIGKILL)
        assert proc.wait(600) == 0  # a failed cell is a row, not a failed workflow
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    info = json.loads((cell / "cell.json").read_text())
    assert info["status"] == "failed" and info["hardware"] == LABEL
    assert "server exited with code" in info["error"], info["error"]
    assert "scheduler_0" in (cell / "server.log").read_text(errors="replace")  # SGLang saw it crash
    assert _sglang_processes(tmp_path) == []
    assert not (cell / "server.pid").exists()
