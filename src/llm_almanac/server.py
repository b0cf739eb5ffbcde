"""Start an engine server in its own process group and make sure it is gone afterwards.

The server is a child of the bench_cell job, in a new session (so a Ctrl-C on the terminal
reaches the job, which then stops the server in order, and never only half of the tree). Stop
walks the whole process tree with psutil first, because engines such as vLLM spawn worker
processes that may outlive a signal to the group leader.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

log = logging.getLogger(__name__)

# An engine's environment is this project's own venv, and its bytecode cache is part of it: with
# PYTHONDONTWRITEBYTECODE set (as some sandboxes and CI images do) and an installer that writes
# no .pyc (uv by default), every vLLM start compiled torch and vLLM from source again in each of
# its three processes: ~100 s to healthy on 2 cores, ~40 s with the cache (docs/engines.md).
# The install's import check and the engine servers run without it.
BYTECODE_OFF = ("PYTHONDONTWRITEBYTECODE",)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class ServerStartupError(RuntimeError):
    """The server exited or never became healthy; carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kill_tree(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the process, its group and all descendants; SIGKILL what is left after grace_s."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_stale(pid_file: Path) -> bool:
    """Stop a server left behind by a killed run of the same cell (recorded in pid_file)."""
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) > 1.0:
            return False  # the pid was reused by an unrelated process
    except (psutil.NoSuchProcess, KeyError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    log.warning("stopping stale server pid %s left by an earlier run", proc.pid)
    kill_tree(proc.pid)
    pid_file.unlink(missing_ok=True)
    return True


class Server:
    """One engine server process. Use as a context manager; stop() is idempotent."""

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        log_path: Path,
        base_url: str,
        health_path: str,
        pid_file: Path | None = None,
    ) -> None:
        self.cmd = cmd
        self.env = env
        self.log_path = log_path
        self.base_url = base_url
        self.health_url = base_url + health_path
        self.pid_file = pid_file
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self) -> None:
        if self.pid_file:
            stop_stale(self.pid_file)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()
        if self.pid_file:
            ct = psutil.Process(self.proc.pid).create_time()
            self.pid_file.write_text(json.dumps({"pid": self.proc.pid, "create_time": ct}))
        log.info("server pid %d started; log: %s", self.proc.pid, self.log_path)

    def wait_ready(self, timeout_s: float) -> float:
        """Poll the health endpoint until it answers 200; return the startup time in seconds."""
        assert self.proc is not None
        deadline = self._t0 + timeout_s
        last_note = time.monotonic()
        # A short timeout per poll: a port some other program holds may accept the connection and
        # never answer, and the exit of our own server must be seen within a poll or two.
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServerStartupError(
                        f"server exited with code {code} before becoming healthy; "
                        f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.health_url).status_code == 200:
                        self.startup_s = time.monotonic() - self._t0
                        log.info("server healthy after %.1f s", self.startup_s)
                        return self.startup_s
                now = time.monotonic()
                if now > deadline:
                    raise ServerStartupError(
                        f"server not healthy at {self.health_url} after {timeout_s:.0f} s; "
                        f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                if now - last_note > 15:
                    log.info("waiting for %s (%.0f s so far)", self.health_url, now - self._t0)
                    last_note = now
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server's process tree. SIGINT/SIGTERM/SIGHUP are held back until it is done
        (then delivered): a second signal (Snakemake terminating its job after a Ctrl-C) must not
        interrupt the stop and leave the server running."""
        if self.proc is None:
            return
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if self.proc.poll() is None:
                log.info("stopping server pid %d", self.proc.pid)
            kill_tree(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.pid_file:
                self.pid_file.unlink(missing_ok=True)
            self.proc = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGINT/SIGHUP into KeyboardInterrupt so `finally` blocks stop servers."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
