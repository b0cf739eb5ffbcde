"""Which GPUs a cell's engine gets.

Snakemake counts GPUs (each bench_cell's resource `gpu` against `--resources gpu=N`) but does
not say *which* GPUs a job gets: left alone, every engine on a workstation would start on GPU 0.
A cluster scheduler does say: SLURM sets CUDA_VISIBLE_DEVICES to the job's allocation. So:

- inside a SLURM job (SLURM_JOB_ID set), CUDA_VISIBLE_DEVICES is used as it is;
- anywhere else, the cell takes the lowest-numbered GPUs that no other cell holds, from
  CUDA_VISIBLE_DEVICES when the run was given one, else from every GPU nvidia-smi lists, and
  starts its engine with CUDA_VISIBLE_DEVICES set to them. It holds an exclusive lock (flock) on
  one file per GPU until its engine has stopped. The kernel drops a flock when its process
  ends, so a killed cell never leaves a GPU marked busy. The lock folder is machine-wide
  (ALMANAC_GPU_LOCK_DIR, default /tmp/llm-almanac-gpu-locks): two runs on one machine share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_DEFAULT = "/tmp/llm-almanac-gpu-locks"


class GpuUnavailable(RuntimeError):
    """The cell needs more GPUs than this machine (or CUDA_VISIBLE_DEVICES) offers, or they
    stayed busy longer than the wait allowed."""


def pool(env: Mapping[str, str], list_gpus: Callable[[], list[str]]) -> list[str]:
    """The GPUs cells may take: CUDA_VISIBLE_DEVICES's entries (indexes or UUIDs), or all."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return list_gpus()


def _lock_name(gpu: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu) + ".lock"


def _try_lock(lock_dir: Path, gpus: list[str], n: int) -> list[tuple[str, int]]:
    """Lock the first n free GPUs of `gpus`; all or nothing (no cell ever holds a part of what
    it needs while it waits, so two cells cannot block each other)."""
    held: list[tuple[str, int]] = []
    for g in gpus:
        fd = os.open(lock_dir / _lock_name(g), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append((g, fd))
        if len(held) == n:
            return held
    for _, fd in held:
        os.close(fd)
    return []


@contextlib.contextmanager
def claim(n: int, env: Mapping[str, str] | None = None, list_gpus: Callable[[], list[str]] | None = None,
          lock_dir: str | Path | None = None, wait_s: float | None = None,
          poll_s: float = 2.0) -> Iterator[str | None]:
    """Hold n GPUs for the `with` block; yields the CUDA_VISIBLE_DEVICES value for the engine,
    or None where nothing is to be set (n == 0, or a SLURM job without CUDA_VISIBLE_DEVICES).
    Waits (logging once a minute) while fewer than n are free; wait_s None = no limit."""
    env = os.environ if env is None else env
    if n <= 0:
        yield None
        return
    if env.get("SLURM_JOB_ID"):
        yield env.get("CUDA_VISIBLE_DEVICES")  # the scheduler chose them
        return
    if list_gpus is None:
        from .hardware import gpu_ids

        list_gpus = gpu_ids
    gpus = pool(env, list_gpus)
    if len(gpus) < n:
        where = "CUDA_VISIBLE_DEVICES=" + env["CUDA_VISIBLE_DEVICES"] if "CUDA_VISIBLE_DEVICES" in env \
            else "GPUs listed by nvidia-smi"
        raise GpuUnavailable(f"the cell needs {n} GPU(s) but this machine offers {len(gpus)} ({where})")
    directory = Path(lock_dir or env.get("ALMANAC_GPU_LOCK_DIR") or LOCK_DIR_DEFAULT)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        directory.chmod(0o1777)  # any user's cells share the machine's GPUs
    start = last_note = time.monotonic()
    while not (held := _try_lock(directory, gpus, n)):
        now = time.monotonic()
        if wait_s is not None and now - start >= wait_s:
            raise GpuUnavailable(f"no {n} of GPUs {','.join(gpus)} were free within {wait_s:g} s "
                                 f"(held by other cells; locks in {directory})")
        if now - last_note >= 60:
            log.info("waiting for %d free GPU(s) of %s (%.0f s so far)", n, ",".join(gpus), now - start)
            last_note = now
        time.sleep(poll_s)
    try:
        ids = ",".join(g for g, _ in held)
        log.info("GPUs for this cell: CUDA_VISIBLE_DEVICES=%s (locks in %s)", ids, directory)
        yield ids
    finally:
        for _, fd in held:
            os.close(fd)
