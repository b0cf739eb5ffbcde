"""The lightest reasonable client: a plain aiohttp streaming loop, the reference of client_ceiling.py.

    python aiohttp_loop.py URL OUT_DIR N_REQUESTS CONCURRENCY [OSL]

It runs on asyncio's default event loop and counts SSE events (blank lines) without parsing
them, stamps nothing and keeps no per-request data: what a server spends per chunk when this
loop reads is the floor a client that times and records every chunk is compared with. Writes
OUT_DIR/aiohttp.json with the requests that got HTTP 200 and the events counted.
"""

import asyncio
import json
import sys
from pathlib import Path

import aiohttp


async def main(url: str, out: Path, n: int, conc: int, osl: int) -> None:
    sem = asyncio.Semaphore(conc)
    ok = events = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal ok, events
        body = {
            "model": "sim",
            "prompt": f"p{i} " + "tok " * 127,
            "max_tokens": osl,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "ignore_eos": True,
        }
        async with sem, session.post(url + "/v1/completions", json=body, headers={"X-Request-Id": f"aio-{i}"}) as resp:
            last = b""
            async for piece in resp.content.iter_any():
                # an event ends at a blank line; one may straddle two reads
                events += piece.count(b"\n\n") + (last == b"\n" and piece[:1] == b"\n")
                last = piece[-1:]
            ok += resp.status == 200

    connector = aiohttp.TCPConnector(limit=0)  # the semaphore is the only limit
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as s:
        await asyncio.gather(*(one(s, i) for i in range(n)))
    (out / "aiohttp.json").write_text(json.dumps({"requests": n, "ok": ok, "events": events}))


if __name__ == "__main__":
    u, o, n, c = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(u.rstrip("/"), o, n, c, int(sys.argv[5]) if len(sys.argv) > 5 else 256))
