"""Where does a server's CPU per chunk go when our client reads, and what does pacing reads cost
in timestamp precision?

    .venv/bin/python benchmarks/read_pacing.py cost      [--pace-ms 0 1] [--extra ...] [--interleave]
    .venv/bin/python benchmarks/read_pacing.py precision [--pace-ms 0 1]

Our fast transport (`llm_almanac.fasthttp.StreamingClient`) runs in a subprocess with one read
pacing at a time (`pace_ms`: a connection that reads twice within it stops reading for it),
against the simulator with one process (`--uvloop`, 1 token per chunk):

- `cost`: zero delay, 256 tokens, concurrency 64 and 256. Per run: chunks/s and the server's
  CPU per chunk (from the simulator's log and process, as client_ceiling.py takes them), the
  client's CPU per chunk, reads per chunk, how often the client blocked in the kernel (voluntary
  context switches) and system-wide rescheduling IPIs and TCP segments per chunk (/proc; other
  load on the machine adds to them). The plain aiohttp loop runs beside as the reference.
- `precision`: per chunk, the lateness of our stamp behind the simulator's own log of the write
  (mean, p99, max), the TTFT error as timing_truth.py computes it, the TPOT error and the error
  of the per-token gaps' p99 (ours minus the simulator's, over all gaps of a run), at
  concurrency 1 and 64, for two streams: an engine's pace (TTFT 50 ms, 10 ms per token, 64
  tokens; pacing never holds a read back) and a fast one (TTFT 5 ms, 0.1 ms per token, 64
  tokens; pacing holds reads back, and this is where its price shows).

`--extra` adds variants as name=JSON, e.g. `quickack0={"quickack":0}`, `asyncio={"loop":"asyncio"}`,
`rcvbuf4k={"rcvbuf":4096}` (socket options set on connect), `after1={"pace_ms":1,"pace_after":1}`
(pacing once a single gap was short), `conn-only={"naps":0}` (per-connection pauses only, no
loop-wide naps), `whole={"nap":"whole"}` (each loop-wide nap sleeps a whole pace_ms, however long
the loop took since the last one), `deferred={"defer_parse":1}` (decode the streams after the
run, as `almanac bench` does, instead of after each response); `pace_ms` defaults to the client's.
Variants run interleaved, `--repeats` times; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness as h


# -- the client side (a subprocess) ------------------------------------------------------------
def _instrument(opts: dict) -> list[int]:
    """Patch the fast transport for one run: count reads, set the socket options asked for on
    connect. Returns the reads counter."""
    import socket

    from llm_almanac import fasthttp

    sockopts = [
        (socket.SOL_SOCKET, socket.SO_RCVBUF, opts.get("rcvbuf")),
        (socket.SOL_SOCKET, socket.SO_RCVLOWAT, opts.get("rcvlowat")),
        (socket.IPPROTO_TCP, socket.TCP_QUICKACK, opts.get("quickack")),
    ]
    if any(v is not None for *_, v in sockopts):
        orig_made = fasthttp._Conn.connection_made

        def made(self, transport):
            orig_made(self, transport)
            sock = transport.get_extra_info("socket")
            for level, name, value in sockopts:
                if value is not None:
                    sock.setsockopt(level, name, value)

        fasthttp._Conn.connection_made = made
    reads = [0]
    orig_dr = fasthttp._Conn.data_received

    def data_received(self, data):
        orig_dr(self, data)
        reads[0] += 1

    fasthttp._Conn.data_received = data_received
    return reads


def client(url: str, out: Path, n: int, conc: int, osl: int, opts: dict) -> None:
    import asyncio
    import resource

    from llm_almanac import fasthttp
    from llm_almanac.loadgen import parse_stream

    reads = _instrument(opts)
    if opts.get("nap") == "whole":  # every nap sleeps a whole pace_ms (the first rule)

        def whole_nap(self) -> None:
            time.sleep(self.window_ns / 1e9)
            self.pending = False
            self.count += 1
            self.end = fasthttp._now()

        fasthttp._Naps._nap = whole_nap
    if "pace_after" in opts:
        fasthttp.PACE_AFTER = opts["pace_after"]
    results: dict[str, list[int]] = {}
    naps: list = [None]
    deferred: list[tuple[str, int, list]] = []

    async def main() -> None:
        sem = asyncio.Semaphore(conc)
        async with fasthttp.StreamingClient(url, pace_ms=opts.get("pace_ms", fasthttp.PACE_MS)) as c:
            if not opts.get("naps", 1):  # per-connection pauses only
                c._naps = None
            naps[0] = c._naps

            async def one(i: int) -> None:
                body = json.dumps(
                    {
                        "model": "sim",
                        "prompt": f"p{i} " + "tok " * 127,
                        "max_tokens": osl,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    }
                ).encode()
                async with sem:
                    raw: list[tuple[int, bytes]] = []
                    sent = [0]
                    await c.post(
                        "/v1/completions",
                        body,
                        raw,
                        on_send=lambda: sent.__setitem__(0, time.perf_counter_ns()),
                        request_id=f"rn-{i}",
                    )
                    if opts.get("defer_parse"):  # as almanac bench does: decode after the phase
                        deferred.append((f"rn-{i}", sent[0], raw))
                    else:
                        results[f"rn-{i}"] = [sent[0], *parse_stream(raw)[0]]

            await asyncio.gather(*(one(i) for i in range(n)))
        for key, t_sent, raw in deferred:
            results[key] = [t_sent, *parse_stream(raw)[0]]

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    if opts.get("loop", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    (out / "result.json").write_text(
        json.dumps({"reads": reads[0], "naps": naps[0].count if naps[0] else 0, "vcsw": ru1.ru_nvcsw - ru0.ru_nvcsw,
                    "stamps": results})
    )


# -- the driver ----------------------------------------------------------------------------------
def _proc_counters() -> dict[str, int]:
    c = {}
    for line in Path("/proc/interrupts").read_text().splitlines():
        f = line.split()
        if f and f[0] == "RES:":
            c["ipi"] = sum(int(x) for x in f[1:] if x.isdigit())
    for line in Path("/proc/net/snmp").read_text().splitlines():
        if line.startswith("Tcp:") and "OutSegs" not in line:
            c["segs"] = int(line.split()[11])  # Tcp: ... OutSegs
    return c


def _command(name: str, opts: dict, url: str, out: Path, n: int, conc: int, osl: int) -> list[str]:
    """The client subprocess of one run: the aiohttp loop, or our transport with `opts`."""
    args = [url, str(out), str(n), str(conc), str(osl)]
    if name == "aiohttp":
        return [str(h.aiohttp_python()), str(h.ROOT / "benchmarks/aiohttp_loop.py"), *args]
    return [h.PY, __file__, "client", *args, json.dumps(opts)]


def run(
    mode: str,
    variants: dict[str, dict],
    repeats: int,
    n: int | None,
    work: Path,
    interleave: bool = False,
    quiet_wait_s: float = 0.0,
) -> list[dict]:
    if mode == "cost":
        streams = {"zero-delay": ["--prompt-tokens", "128"] + ["--interleave"] * interleave}
        osl, plan = 256, [(64, n or 1024), (256, n or 1024)]
    else:
        streams = {
            "engine": ["--prompt-tokens", "128", "--ttft-ms", "50", "--tpot-ms", "10"],
            "fast": ["--prompt-tokens", "128", "--ttft-ms", "5", "--tpot-ms", "0.1"],
        }
        osl, plan = 64, [(1, n or 30), (64, n or 256)]
    rows = []
    names = list(variants)
    for stream, sim_args in streams.items():
        d = work / stream
        d.mkdir(parents=True, exist_ok=True)
        sim = h.Sim(d, *sim_args)
        try:
            for rep in range(repeats):
                for conc, nreq in plan:
                    k = rep % len(names)
                    for name in names[k:] + names[:k]:
                        out = d / f"{name}-c{conc}-r{rep}"
                        out.mkdir(parents=True, exist_ok=True)
                        cmd = _command(name, variants[name], sim.url, out, nreq, conc, osl)
                        c0 = _proc_counters()
                        r = h.run_client(name, cmd, server_pid=sim.proc.pid, quiet_wait_s=quiet_wait_s)
                        c1 = _proc_counters()
                        recs = sim.new_records()
                        base = {"stream": stream, "client": name, "conc": conc, "rep": rep}
                        if r.rc != 0:
                            rows.append({**base, "error": f"exit {r.rc}"})
                            continue
                        rows.append({**base, **measure(mode, name, conc, out, r, recs, c0, c1)})
        finally:
            sim.stop()
    return rows


def measure(mode, name, conc, out, r, recs, c0, c1) -> dict:
    start = min(x["arrived_ns"] for x in recs)
    end = max(x["event_ns"][-1] for x in recs if x["event_ns"])
    chunks = sum(len(x["event_ns"]) for x in recs)
    row = {
        "client": name,
        "conc": conc,
        "chunks_per_s": chunks / ((end - start) / 1e9),
        "client_us": r.cpu_since(start) / chunks * 1e6,
        "server_us": (r.server_cpu(start, end) or 0) / chunks * 1e6,
        "ipi_per_chunk": (c1["ipi"] - c0["ipi"]) / chunks,
        "segs_per_chunk": (c1["segs"] - c0["segs"]) / chunks,
        "others": r.others_cores(start, end),
    }
    sleeps = r.sleeps(start, end)
    res = out / "result.json"
    if sleeps is not None:  # blocked in the kernel
        row["blocks_per_chunk"] = sleeps / chunks
    if res.exists():
        d = json.loads(res.read_text())
        row |= {
            "reads_per_chunk": d["reads"] / chunks,
            "naps_per_chunk": d.get("naps", 0) / chunks,
            "blocks_per_chunk": (sleeps if sleeps is not None else d["vcsw"]) / chunks,
        }
        if mode == "precision":
            late, ttft_err, tpot_err, itl, itl_true = [], [], [], [], []
            for x in recs:
                got = d["stamps"].get(x["x_request_id"])
                if not got or len(got) - 1 != len(x["event_ns"]):
                    continue
                sent, *tok = got
                late += [(a - b) / 1e3 for a, b in zip(tok, x["event_ns"])]
                ttft_err.append(((tok[0] - sent) - (x["event_ns"][0] - x["arrived_ns"])) / 1e6)
                ev = x["event_ns"]
                itl += [(b - a) / 1e6 for a, b in zip(tok, tok[1:])]
                itl_true += [(b - a) / 1e6 for a, b in zip(ev, ev[1:])]
                if len(ev) > 1:
                    tpot_err.append(((tok[-1] - tok[0]) - (ev[-1] - ev[0])) / (len(ev) - 1) / 1e6)
            row |= {
                "late_mean_us": statistics.fmean(late),
                "late_p99_us": h.percentile(late, 99),
                "late_max_us": max(late),
                "ttft_err_ms": statistics.fmean(ttft_err),
                "tpot_err_ms": statistics.fmean(tpot_err),
                "tpot_err_max_ms": max(abs(e) for e in tpot_err),
                # the per-token gaps' p99 as we measured them minus as the simulator wrote them
                "itl_p99_err_ms": h.percentile(itl, 99) - h.percentile(itl_true, 99),
            }
    h.log(f"{name} c={conc}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return row


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        u, o, n, c, osl, opts = sys.argv[2:8]
        client(u, Path(o), int(n), int(c), int(osl), json.loads(opts))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("cost", "precision"))
    ap.add_argument("--pace-ms", type=float, nargs="+", default=[0, 1])
    ap.add_argument("--extra", nargs="*", default=[], help="name=JSON client options")
    ap.add_argument("--no-aiohttp", action="store_true")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="cost mode: the simulator's streams take turns chunk by chunk (sim --interleave)",
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--requests", type=int)
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="see client_ceiling.py")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    variants = {f"pace{x:g}": {"pace_ms": x} for x in a.pace_ms}
    variants |= {k: json.loads(v) for k, v in (e.split("=", 1) for e in a.extra)}
    if not a.no_aiohttp:
        variants["aiohttp"] = {}
    work = Path(a.workdir or tempfile.mkdtemp(prefix=f"read-pacing-{a.mode}-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = run(a.mode, variants, a.repeats, a.requests, work, a.interleave, a.quiet_wait)
    cols = (
        [
            ("chunks/s", "chunks_per_s", 10, ",.0f"),
            ("server us", "server_us", 10, ".2f"),
            ("client us", "client_us", 10, ".2f"),
            ("reads", "reads_per_chunk", 7, ".3f"),
            ("blocks", "blocks_per_chunk", 7, ".3f"),
            ("naps", "naps_per_chunk", 7, ".3f"),
            ("IPIs", "ipi_per_chunk", 7, ".3f"),
            ("segs", "segs_per_chunk", 7, ".3f"),
            ("others", "others", 7, ".2f"),
        ]
        if a.mode == "cost"
        else [
            ("late mean us", "late_mean_us", 13, ".1f"),
            ("p99", "late_p99_us", 8, ".1f"),
            ("max", "late_max_us", 9, ".1f"),
            ("TTFT err ms", "ttft_err_ms", 12, "+.3f"),
            ("TPOT err ms", "tpot_err_ms", 12, "+.4f"),
            ("|max|", "tpot_err_max_ms", 7, ".4f"),
            ("ITL p99 err", "itl_p99_err_ms", 12, "+.3f"),
            ("reads", "reads_per_chunk", 7, ".3f"),
            ("others", "others", 7, ".2f"),
        ]
    )
    for r in rows:
        for _, key, _, _ in cols:
            r.setdefault(key, None)
    h.print_table(
        sorted(rows, key=lambda r: (r["stream"], r["conc"], r["client"], r["rep"])),
        [("stream", "stream", 11, "s"), ("rep", "rep", 4, "d"), *cols], note="   (per chunk)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
