"""Install one engine (pinned) into its own virtual environment and record what was installed.

pip runs as the user configured it (index, find-links, constraints, cache): this project never
hard-codes a package location, so the same rule works on a workstation, behind a mirror, and on
machines that carry wheels on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .engines import adapter_for
from .files import write_json

log = logging.getLogger(__name__)


class InstallError(RuntimeError):
    pass


# pip's output lines -> the step of the install they start (the full output goes to the log)
_STEPS = (("Collecting", "resolving"), ("Looking in", "resolving"), ("Downloading", "downloading"),
          ("Using cached", "downloading"), ("Processing", "downloading"), ("Building wheel", "building"),
          ("  Building wheel", "building"), ("Installing collected", "installing"),
          ("Successfully installed", "installed"), ("ERROR", "error"))


class Progress:
    """One line per step of an engine's install, naming the engine, with the elapsed time; a
    heartbeat once a minute while a step prints nothing (a source build is silent for minutes)."""

    def __init__(self, engine: str) -> None:
        self.engine, self.step, self.t0 = engine, "starting", time.monotonic()

    def line(self) -> str:
        return f"install {self.engine}: {self.step} ({time.monotonic() - self.t0:.0f} s)"

    def to(self, step: str) -> None:
        if step != self.step:
            self.step = step
            log.info(self.line())

    def feed(self, pip_line: str) -> None:
        for prefix, step in _STEPS:
            if pip_line.startswith(prefix):
                self.to(step)
                return


def _run(cmd: list[str], logf: IO[str], progress: Progress, env: dict[str, str] | None = None) -> int:
    """Run a command with its full output in logf; pip's milestones move `progress` on."""
    logf.write(f"$ {' '.join(cmd)}\n")
    logf.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1,
                            env={**os.environ, **env} if env else None)
    assert proc.stdout is not None
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(60):
            log.info(progress.line() + ", still running")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        for line in proc.stdout:
            logf.write(line)
            progress.feed(line)
        return proc.wait()
    finally:
        done.set()


def requirements(name: str, ecfg: dict[str, Any]) -> tuple[str, list[str]]:
    adapter = adapter_for(name, ecfg)
    package = ecfg.get("package") or adapter.default_package or adapter.name
    return package, [f"{package}=={ecfg['version']}", *ecfg.get("pip_extra", [])]


def env_id(name: str, ecfg: dict[str, Any]) -> str:
    """Directory name of an engine's environment: package, version and a hash of what is
    installed and removed, so a changed requirement gets a fresh environment."""
    package, reqs = requirements(name, ecfg)
    what = json.dumps([reqs, sorted(ecfg.get("pip_remove", []))])
    return f"{package}-{ecfg['version']}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def install_engine(name: str, ecfg: dict[str, Any], venv_dir: Path, out_json: Path, log_path: Path) -> dict:
    adapter = adapter_for(name, ecfg)
    if not adapter.needs_install:  # the simulator runs from this package's own environment
        from . import __version__

        sim = {"engine": name, "module": adapter.name, "package": "llm-almanac",
               "version": f"simulator-{__version__}", "python": sys.executable, "pip_freeze": []}
        write_json(out_json, sim)
        return sim
    package, reqs = requirements(name, ecfg)
    t0 = time.monotonic()
    if venv_dir.exists():
        shutil.rmtree(venv_dir)  # a half-built venv from an interrupted install
    python = venv_dir / "bin" / "python"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as logf:
        progress = Progress(name)
        progress.to("creating its environment")
        if _run([sys.executable, "-m", "venv", str(venv_dir)], logf, progress):
            raise InstallError(f"could not create a virtual environment at {venv_dir}")
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        log.info("installing %s for engine %r (log: %s)", " ".join(reqs), name, log_path)
        if _run([*pip, "install", *reqs], logf, progress, adapter.install_env()):
            raise InstallError(
                f"pip could not install {' '.join(reqs)} for engine {name!r}; check the version "
                f"(`pip index versions {package}`) and the last lines of {log_path}"
            )
        remove = list(ecfg.get("pip_remove", []))
        progress.to("removing " + " ".join(ecfg.get("pip_remove", [])) if ecfg.get("pip_remove") else "verifying")
        if remove and _run([*pip, "uninstall", "-y", *remove], logf, progress):
            raise InstallError(f"pip could not remove {remove} for engine {name!r}; see {log_path}")
        version = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        check = ecfg.get("import_check")
        progress.to("verifying")
        if check and _run([str(python), "-c", f"import {check}"], logf, progress):
            raise InstallError(
                f"engine {name!r} installed but `import {check}` fails in {venv_dir}; "
                f"see the last lines of {log_path}"
            )
        freeze = subprocess.run(
            [*pip, "freeze", "--all"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        try:
            extra = adapter.post_install(str(python))
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            raise InstallError(f"engine {name!r} installed but its post-install step failed: {exc}") from None
    info: dict[str, Any] = {
        "engine": name,
        "module": ecfg.get("module", name),
        "package": package,
        "version": version,
        "requirements": reqs,
        "removed": ecfg.get("pip_remove", []),
        "python": str(python.absolute()),
        "venv": str(venv_dir.absolute()),
        "install_s": round(time.monotonic() - t0, 1),
        "installed_at": datetime.now(UTC).isoformat(),
        "pip_freeze": freeze,
        **extra,
    }
    write_json(out_json, info)
    log.info("engine %r %s installed in %.0f s", name, version, info["install_s"])
    return info
