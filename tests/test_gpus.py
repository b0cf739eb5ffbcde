"""Which GPUs a cell's engine gets (llm_almanac.gpus): a scheduler's choice, or free ones here."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm_almanac import gpus
from llm_almanac.hardware import visible_gpus

from conftest import make_tokenizer


def test_no_gpus_and_slurm_jobs_are_left_alone(tmp_path):
    with gpus.claim(0, env={}, lock_dir=tmp_path) as v:
        assert v is None
    slurm = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "2,3"}
    with gpus.claim(2, env=slurm, list_gpus=lambda: pytest.fail("must not list GPUs"), lock_dir=tmp_path) as v:
        assert v == "2,3"
    assert not list(tmp_path.iterdir())  # no locks taken


def test_cells_take_the_lowest_free_gpus_and_never_share_one(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3,5,7"}
    with gpus.claim(2, env=env, lock_dir=tmp_path) as a:
        assert a == "3,5"
        with gpus.claim(1, env=env, lock_dir=tmp_path) as b:
            assert b == "7"
            with pytest.raises(gpus.GpuUnavailable, match="no 1 of GPUs 3,5,7 were free within 0.2 s"), \
                    gpus.claim(1, env=env, lock_dir=tmp_path, wait_s=0.2, poll_s=0.05):
                pass
        # all or nothing: 2 wanted, only 7 free -> it waits rather than holding 7 alone
        with pytest.raises(gpus.GpuUnavailable), gpus.claim(2, env=env, lock_dir=tmp_path, wait_s=0.2, poll_s=0.05):
            pass
    with gpus.claim(3, env=env, lock_dir=tmp_path, wait_s=0) as c:
        assert c == "3,5,7"


def test_all_gpus_of_the_machine_when_no_cuda_visible_devices(tmp_path):
    with gpus.claim(2, env={}, list_gpus=lambda: ["0", "1", "2", "3"], lock_dir=tmp_path) as v:
        assert v == "0,1"
    with pytest.raises(gpus.GpuUnavailable, match=r"needs 8 GPU\(s\) but this machine offers 4 \(GPUs listed by nvidia-smi\)"), \
            gpus.claim(8, env={}, list_gpus=lambda: ["0", "1", "2", "3"], lock_dir=tmp_path):
        pass
    with pytest.raises(gpus.GpuUnavailable, match=r"offers 1 \(CUDA_VISIBLE_DEVICES=GPU-ab\)"), \
            gpus.claim(2, env={"CUDA_VISIBLE_DEVICES": "GPU-ab"}, lock_dir=tmp_path):
        pass


def test_a_killed_cell_frees_its_gpus(tmp_path):
    code = ("import sys, time; from llm_almanac import gpus\n"
            f"with gpus.claim(1, env={{'CUDA_VISIBLE_DEVICES': '0'}}, lock_dir={str(tmp_path)!r}) as v:\n"
            "    print(v, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "0"
        with pytest.raises(gpus.GpuUnavailable), \
                gpus.claim(1, env={"CUDA_VISIBLE_DEVICES": "0"}, lock_dir=tmp_path, wait_s=0.2, poll_s=0.05):
            pass
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        with gpus.claim(1, env={"CUDA_VISIBLE_DEVICES": "0"}, lock_dir=tmp_path, wait_s=5, poll_s=0.05) as v:
            assert v == "0"
    finally:
        p.kill()


def test_visible_gpus_by_index_or_uuid():
    all_gpus = [{"index": str(i), "uuid": f"GPU-{i}", "name": "H100"} for i in range(4)]
    assert [g["index"] for g in visible_gpus(all_gpus, "2,GPU-0")] == ["2", "0"]
    assert visible_gpus(all_gpus, None) == all_gpus and visible_gpus(all_gpus, "9") == []


def test_run_cell_starts_the_engine_on_its_claimed_gpus_and_releases_them(tmp_path, monkeypatch):
    """The cell code path with the simulator as a 2-GPU engine: its server process sees
    CUDA_VISIBLE_DEVICES = the two GPUs the cell claimed, cell.json records them, and the
    locks are free once the cell is done."""
    from llm_almanac.cell import run_cell

    tok = tmp_path / "tokenizer.json"
    make_tokenizer().save(str(tok))
    seen = tmp_path / "seen"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES" > {seen}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (tmp_path / "installed.json").write_text(json.dumps({"version": "0", "python": str(python)}))
    (tmp_path / "model.json").write_text(json.dumps({"paths": {"tokenizer": str(tok)}, "tokenizer": str(tok)}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    monkeypatch.setenv("ALMANAC_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cell = {"cell_id": "m__sim__bf16__16-4", "model": "m", "engine": "sim", "quantization": "bf16",
            "isl": 16, "osl": 4, "n_gpus": 2, "extra_args": ["--tpot-ms", "1"], "extra_env": {}}
    bench = {"warmup_requests": 1, "sequential_requests": 2, "burst_requests": 2, "sweep_rates": 0,
             "request_timeout_s": 10}
    with gpus.claim(1, lock_dir=tmp_path / "locks"):  # another cell holds GPU 4
        info = run_cell(cell, {"module": "sim", "device": "cuda", "version": "0"}, {}, bench,
                        tmp_path / "installed.json", tmp_path / "model.json", tmp_path / "cell")
    assert info["status"] == "ok", info["error"]
    assert info["cuda_visible_devices"] == "5,6" and seen.read_text().strip() == "5,6"
    with gpus.claim(3, lock_dir=tmp_path / "locks", wait_s=0) as v:
        assert v == "4,5,6"
    assert Path(tmp_path / "cell" / "cell.json").exists()
