"""The load generator: streaming OpenAI-compatible requests, timed on byte arrival.

Hot path discipline: while a response streams, the only work per network read is one
`perf_counter_ns()` call and one list append. SSE decoding and JSON parsing happen after the
stream has ended, over the recorded (timestamp, bytes) pairs, so parsing can never delay a
timestamp. An SSE event is stamped with the arrival time of the read that completed it.

Request bodies are serialized before the phase starts, so the send timestamp is taken just
before the bytes go to the connection (pool).

Two HTTP transports, same measurements: `fast` (default; asyncio protocols with llhttp, see
fasthttp.py, on uvloop when installed) and `httpx`. benchmarks/client_ceiling.py measures both
side by side with GuideLLM and `vllm bench serve`.

Client self-check: every phase records the client's own CPU time over its traffic window and
each request's send lag (the delay between the moment a request was due and free to go, i.e.
its scheduled time or the moment a concurrency slot freed, and the moment its bytes were
written). metrics.summarize turns them into the `client_saturated` flag of the phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import sseclient

from .fasthttp import HTTPError, StreamingClient
from .metrics import request_timing

try:  # an optional speed-up; the asyncio default loop measures the same things
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a pinned dependency
    uvloop = None

log = logging.getLogger(__name__)

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
TRANSPORTS = ("fast", "httpx")


def request_id_header(request_id: int) -> str:
    """The `X-Request-Id` a request is sent with (as `vllm bench serve` does): the row's
    `request_id` with a prefix, unique within a cell (ids continue across phases, repeats and
    resumes), so a request can be found in the server's own logs and traces."""
    return f"almanac-{request_id}"


def run(coro):
    """asyncio.run on uvloop where available (the load generator's event loop)."""
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@dataclass(slots=True)
class Req:
    request_id: int
    phase: str
    step: int
    body: bytes
    target_rps: float | None = None
    scheduled_ns: int = 0
    ready_ns: int = 0  # when it was due and a concurrency slot was free (0: = scheduled)
    picked_ns: int = 0  # when the client got to it (before any connect)
    sent_ns: int = 0
    end_ns: int = 0
    raw: list[tuple[int, bytes]] = field(default_factory=list)
    http_status: int | None = None
    error: str | None = None


def _stamped(raw: list[tuple[int, bytes]], now: list[int]):
    for ts, chunk in raw:
        now[0] = ts
        yield chunk


def _token_text(obj: dict[str, Any], endpoint: str) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    ch = choices[0]
    if endpoint == "chat":
        delta = ch.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return ch.get("text") or ""


def _canonical(raw: list[tuple[int, bytes]]) -> tuple[bytes, list[int]] | None:
    """The whole stream and, per event, the timestamp of the read holding its last byte, if the
    stream is in the canonical framing every OpenAI-compatible server uses (each event one
    `data: ` line ended by a blank line, `\n` line ends); None if it uses anything else
    (comments, other fields, multi-line data, `\r`, a cut last event): that goes to the full SSE
    parser. Byte and array operations over the whole stream, no Python loop per event."""
    if not raw:
        return b"", []
    buf = raw[0][1] if len(raw) == 1 else b"".join([c for _, c in raw])
    if not buf.endswith(b"\n\n") or b"\r" in buf:
        return None
    arr = np.frombuffer(buf, np.uint8)
    ev_last = np.flatnonzero((arr[:-1] == 10) & (arr[1:] == 10)) + 1
    n = len(ev_last)
    # exactly two newlines per event (so no multi-line event) and every event a `data: ` line
    if buf.count(b"\n") != 2 * n or (b"\n\n" + buf).count(b"\n\ndata: ") != n:
        return None
    if len(raw) == 1:
        return buf, [raw[0][0]] * n
    read_last = np.cumsum(np.array([len(c) for _, c in raw], np.int64)) - 1
    ts = np.array([t for t, _ in raw], np.int64)
    return buf, ts[np.searchsorted(read_last, ev_last)].tolist()


def _simple_events(raw: list[tuple[int, bytes]]) -> tuple[list[int], list[bytes]] | None:
    """(timestamps, data) of each event of a canonical stream (see _canonical), else None."""
    c = _canonical(raw)
    if c is None:
        return None
    buf, stamps = c
    return stamps, ([e[6:] for e in buf[:-2].split(b"\n\n")] if buf else [])


def _full_events(raw: list[tuple[int, bytes]]):
    now = [0]
    for ev in sseclient.SSEClient(_stamped(raw, now)).events():
        yield now[0], ev.data


def _stream_error(obj: dict) -> str:
    err = obj["error"]
    return f"server error in stream: {err.get('message', err) if isinstance(err, dict) else err}"


_DONE = b"data: [DONE]\n\n"


def _parse_batch(buf: bytes, stamps: list[int], endpoint: str):
    """A canonical completions stream's JSON in one orjson call (`data: A\n\ndata: B\n\n` ->
    `[A,B]`); None (-> event by event) if anything is unusual."""
    if endpoint != "completions" or not buf:
        return None
    done = buf.endswith(_DONE)
    body = buf[:-len(_DONE)] if done else buf
    try:
        objs = orjson.loads(b"[" + body[6:-2].replace(b"\n\ndata: ", b",") + b"]") if body else []
    except orjson.JSONDecodeError:
        return None  # a malformed or empty event, or a stray [DONE]: the event path names it
    try:
        token_ns = [ts for ts, o in zip(stamps, objs) if (c := o.get("choices")) and c[0].get("text")]
        usages = [u for o in objs if (u := o.get("usage"))]
        errors = [_stream_error(o) for o in objs if "error" in o and not o.get("choices")]
    except (AttributeError, TypeError, KeyError, IndexError):
        return None  # not the usual shapes: event by event
    return token_ns, (usages[-1] if usages else None), done, (errors[-1] if errors else None)


def parse_stream(
    raw: list[tuple[int, bytes]], endpoint: str = "completions"
) -> tuple[list[int], dict[str, Any] | None, bool, str | None]:
    """Decode a recorded SSE stream.

    Returns (timestamps of token-bearing events, the last `usage` object, whether `[DONE]`
    arrived, an error message from the stream if any). Role-only, empty and usage-only events
    are not token-bearing. Streams in the canonical `data: ...` framing take a fast path (all
    JSON in one call); anything else goes event by event, through sseclient-py where the framing
    is not canonical. All paths give the same result (tested).
    """
    canonical = _canonical(raw)
    if canonical is None:
        return _parse_events(_full_events(raw), endpoint)
    out = _parse_batch(*canonical, endpoint)
    if out is not None:
        return out
    buf, stamps = canonical
    return _parse_events(zip(stamps, [e[6:] for e in buf[:-2].split(b"\n\n")] if buf else []), endpoint)


def _parse_events(events, endpoint: str):
    token_ns: list[int] = []
    usage = None
    done = False
    error = None
    for ts, data in events:
        data = data.strip()  # bytes on the fast path, str from sseclient; orjson takes both
        if not data:
            continue
        if data == b"[DONE]" or data == "[DONE]":
            done = True
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
            error = f"malformed SSE data: {text[:200]!r}"
            continue
        if not isinstance(obj, dict):
            error = f"unexpected SSE data (not a JSON object): {str(obj)[:200]!r}"
            continue
        if "error" in obj and not obj.get("choices"):
            error = _stream_error(obj)
            continue
        if obj.get("usage"):
            usage = obj["usage"]
        if _token_text(obj, endpoint):
            token_ns.append(ts)
    return token_ns, usage, done, error


def request_row(req: Req, t0_ns: int, isl: int, osl: int, endpoint: str) -> dict[str, Any]:
    """Turn a finished request into a row of the `requests` table (times relative to t0_ns)."""
    token_ns, usage, done, stream_err = parse_stream(req.raw, endpoint) if req.raw else ([], None, False, None)
    prompt_tokens = usage.get("prompt_tokens") if usage else None
    completion_tokens = usage.get("completion_tokens") if usage else None
    error = req.error or stream_err
    if error is None:
        if not token_ns:
            error = "no token-bearing event in the stream"
        elif usage is None:
            error = "server reported no usage; completion tokens unknown"
        elif not done:
            error = "stream ended without [DONE]"
    timing = request_timing(req.sent_ns, token_ns, completion_tokens)
    # The chat endpoint wraps the prompt in a template, so only the completion is checked there.
    mismatch = usage is not None and ((endpoint != "chat" and prompt_tokens != isl) or completion_tokens != osl)
    if error is None and mismatch:
        # Not the workload that was asked for (e.g. a truncated output): counted, kept with its
        # numbers, and left out of every latency statistic and rate.
        error = (f"token counts differ from the request: prompt {prompt_tokens} (asked {isl}), "
                 f"completion {completion_tokens} (asked {osl})")
    return {
        "request_id": req.request_id,
        "phase": req.phase,
        "step": req.step,
        "target_rps": req.target_rps,
        "scheduled_s": (req.scheduled_ns - t0_ns) / 1e9,
        "sent_s": (req.sent_ns - t0_ns) / 1e9,
        "end_s": (req.end_ns - t0_ns) / 1e9,
        "send_lag_ms": ((req.picked_ns or req.sent_ns) - max(req.scheduled_ns, req.ready_ns)) / 1e6,
        **timing,
        "n_token_events": len(token_ns),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "requested_isl": isl,
        "requested_osl": osl,
        "token_mismatch": mismatch,
        "status": "ok" if error is None else "failed",
        "error": error,
    }


class Progress:
    """Log 'done/total' for a phase at most every `every_s` seconds and at the end."""

    def __init__(self, label: str, total: int | None, every_s: float = 5.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.done = self.failed = 0
        self.t0 = self.last = time.monotonic()

    def tick(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total and self.done == self.total):
            self.last = now
            total = f"/{self.total}" if self.total else ""
            log.info(
                "%s: %d%s done (%d failed), %.1f s elapsed",
                self.label, self.done, total, self.failed, now - self.t0,
            )


class LoadGenerator:
    """Runs phases against one endpoint. Prompts come from `make_prompt(request_id)`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        isl: int,
        osl: int,
        make_prompt: Callable[[int], str],
        endpoint: str = "completions",
        extras: dict[str, Any] | None = None,
        request_timeout_s: float = 300.0,
        max_connections: int | None = None,
        keepalive: bool = True,
        transport: str = "fast",
    ) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}, not {endpoint!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {list(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.model, self.isl, self.osl = model, isl, osl
        self.make_prompt = make_prompt
        self.endpoint = endpoint
        self.path = ENDPOINTS[endpoint]
        self.extras = extras or {}
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.keepalive = keepalive
        self._ids = itertools.count()
        self.t0_ns = time.perf_counter_ns()
        self.warmed = False
        # client CPU seconds and wall seconds of the last phase's traffic window
        self.last_client: dict[str, float] = {}

    def skip_ids_to(self, first_id: int) -> None:
        """Continue request ids at first_id (ids, and so prompts, stay unique across resumes)."""
        self._ids = itertools.count(max(first_id, 0))

    # -- request construction -------------------------------------------------------------
    def body(self, request_id: int) -> bytes:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.osl,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extras,
        }
        prompt = self.make_prompt(request_id)
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return orjson.dumps(payload)

    def new_reqs(self, n: int, phase: str, step: int = 0, target_rps: float | None = None) -> list[Req]:
        return [
            Req(rid, phase, step, self.body(rid), target_rps)
            for rid in itertools.islice(self._ids, n)
        ]

    def client(self) -> httpx.AsyncClient | StreamingClient:
        if self.transport == "fast":
            return StreamingClient(self.base_url, keepalive=self.keepalive, keepalive_expiry_s=2.0)
        # Idle pooled connections are dropped after 2 s, well before servers drop them (5 s is
        # common), so a request never races the server closing its connection. With
        # keepalive=False every request gets a new connection (for servers that close
        # keep-alive connections unannounced; see engines/llamacpp.py).
        limits = httpx.Limits(max_connections=self.max_connections,
                              max_keepalive_connections=None if self.keepalive else 0,
                              keepalive_expiry=2.0)
        timeout = httpx.Timeout(self.request_timeout_s, connect=30.0)
        return httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=timeout)

    # -- one request ------------------------------------------------------------------------
    def _timeout_error(self) -> str:
        return f"timeout: no complete response within {self.request_timeout_s:g} s"

    async def send(self, client: httpx.AsyncClient | StreamingClient, req: Req) -> Req:
        req.picked_ns = time.perf_counter_ns()
        if not req.scheduled_ns:  # sequential and warm-up: due the moment the client gets to it
            req.scheduled_ns = req.picked_ns
        if isinstance(client, StreamingClient):
            return await self._send_fast(client, req)
        headers = {"content-type": "application/json", "accept": "text/event-stream",
                   "x-request-id": request_id_header(req.request_id)}
        req.sent_ns = time.perf_counter_ns()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                async with client.stream("POST", self.path, content=req.body, headers=headers) as resp:
                    req.http_status = resp.status_code
                    if resp.status_code != 200:
                        text = (await resp.aread()).decode(errors="replace")
                        req.error = f"HTTP {resp.status_code}: {text[:300]}"
                    else:
                        raw = req.raw
                        async for chunk in resp.aiter_bytes():
                            raw.append((time.perf_counter_ns(), chunk))
        except TimeoutError:
            req.error = self._timeout_error()
        except httpx.TimeoutException as exc:
            req.error = f"timeout: {type(exc).__name__} after {self.request_timeout_s:g} s"
        except httpx.HTTPError as exc:
            req.error = f"{type(exc).__name__}: {exc}"
        req.end_ns = time.perf_counter_ns()
        return req

    async def _send_fast(self, client: StreamingClient, req: Req) -> Req:
        def stamp() -> None:
            req.sent_ns = time.perf_counter_ns()

        try:
            async with asyncio.timeout(self.request_timeout_s):
                status = await client.post(self.path, req.body, req.raw, on_send=stamp,
                                           request_id=request_id_header(req.request_id))
            req.http_status = status
            if status != 200:
                text = b"".join(c for _, c in req.raw).decode(errors="replace")
                req.raw.clear()
                req.error = f"HTTP {status}: {text[:300]}"
        except TimeoutError:
            req.error = self._timeout_error()
        except HTTPError as exc:
            req.error = f"HTTPError: {exc}"
        if not req.sent_ns:  # the connect failed: nothing was sent
            req.sent_ns = time.perf_counter_ns()
        req.end_ns = time.perf_counter_ns()
        return req

    async def _send_counted(
        self, client: httpx.AsyncClient, r: Req, sem: asyncio.Semaphore | None, prog: Progress
    ) -> None:
        """Send within the client-side concurrency limit (if any) and count the result."""
        if sem:
            async with sem:
                r.ready_ns = time.perf_counter_ns()
                await self.send(client, r)
        else:
            await self.send(client, r)
        prog.tick(r.error is None)

    @contextlib.contextmanager
    def _client_window(self):
        """Record the client's CPU and wall time over a phase's traffic (not its parsing)."""
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.last_client = {"client_cpu_s": time.process_time() - c0,
                                "client_wall_s": time.perf_counter() - w0}

    def rows(self, reqs: list[Req]) -> list[dict[str, Any]]:
        return [request_row(r, self.t0_ns, self.isl, self.osl, self.endpoint) for r in reqs]

    # -- phases -----------------------------------------------------------------------------
    async def warmup(self, n: int) -> list[dict[str, Any]]:
        """Requests whose results are thrown away (they still must succeed)."""
        reqs = self.new_reqs(n, "warmup")
        async with self.client() as client:
            for r in reqs:
                await self.send(client, r)
        self.warmed = True
        return self.rows(reqs)

    async def sequential(self, n: int) -> list[dict[str, Any]]:
        reqs = self.new_reqs(n, "sequential")
        prog = Progress("sequential", n)
        with self._client_window():
            async with self.client() as client:
                for r in reqs:
                    await self.send(client, r)
                    prog.tick(r.error is None)
        return self.rows(reqs)

    async def burst(self, n: int, max_concurrency: int | None = None) -> list[dict[str, Any]]:
        """All n requests submitted at t0 (at most max_concurrency in flight if set)."""
        reqs = self.new_reqs(n, "burst")
        prog = Progress("burst", n)
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        t0 = time.perf_counter_ns()

        async def one(r: Req) -> None:
            r.scheduled_ns = t0
            await self._send_counted(client, r, sem, prog)

        with self._client_window():
            async with self.client() as client:
                await asyncio.gather(*(one(r) for r in reqs))
        return self.rows(reqs)

    async def rate(
        self,
        rps: float,
        duration_s: float,
        step: int,
        arrival: str = "constant",
        seed: int = 0,
        max_concurrency: int | None = None,
    ) -> list[dict[str, Any]]:
        """Open-loop arrivals at `rps` for `duration_s` (constant gaps or Poisson)."""
        if rps <= 0:
            raise ValueError(f"rate must be positive, got {rps}")
        rng = random.Random(seed)
        offsets: list[float] = []
        t = 0.0
        while t < duration_s:
            offsets.append(t)
            t += rng.expovariate(rps) if arrival == "poisson" else 1.0 / rps
        reqs = self.new_reqs(len(offsets), "sweep", step, target_rps=rps)
        prog = Progress(f"sweep step {step} @ {rps:.3f} rps", len(reqs))
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None

        async def one(r: Req) -> None:
            # uvloop's timers have millisecond resolution and may fire up to 1 ms early: sleep
            # again for what is left (the last sub-millisecond sleeps are plain yields)
            while (delay := (r.scheduled_ns - time.perf_counter_ns()) / 1e9) > 0:
                await asyncio.sleep(delay)
            await self._send_counted(client, r, sem, prog)

        with self._client_window():
            async with self.client() as client:
                t0 = time.perf_counter_ns()
                for r, off in zip(reqs, offsets):
                    r.scheduled_ns = t0 + int(off * 1e9)
                await asyncio.gather(*(one(r) for r in reqs))
        return self.rows(reqs)

