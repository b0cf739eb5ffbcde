"""The load generator: streaming OpenAI-compatible requests, timed on byte arrival.

Hot path discipline: while a response streams, the only work per network read is one
`perf_counter_ns()` call and one list append. SSE decoding and JSON parsing happen after the
stream has ended (stream.py), over the recorded (timestamp, bytes) pairs, so parsing can never
delay a timestamp.

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
import gc
import itertools
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from .fasthttp import PACE_MS, HTTPError, ResponseTooLarge, StreamingClient
from .metrics import request_outcome, request_timing
from .stream import parse_stream

_loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
try:  # an optional speed-up; the asyncio default loop measures the same things
    from uvloop import new_event_loop as _loop_factory
except ImportError:  # pragma: no cover - uvloop is a pinned dependency
    _loop_factory = None

log = logging.getLogger(__name__)

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
TRANSPORTS = ("fast", "httpx")
ARRIVALS = ("constant", "poisson")


def request_id_header(request_id: int) -> str:
    """The `X-Request-Id` a request is sent with (as `vllm bench serve` does): the row's
    `request_id` with a prefix, unique within a cell (ids continue across phases, repeats and
    resumes), so a request can be found in the server's own logs and traces."""
    return f"almanac-{request_id}"


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(coro: Awaitable[Any]) -> Any:
    """asyncio.run on uvloop where available (the load generator's event loop).

    SIGINT and SIGTERM cancel the work and surface as KeyboardInterrupt *after* the loop has
    unwound. A Python signal handler that raises would instead hit whatever runs at that moment,
    and inside a transport callback uvloop swallows the exception ("Fatal error on transport"):
    the interrupt was lost about one time in three (tests/test_faults_bench.py)."""

    async def main() -> Any:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        got: list[int] = []
        old = {s: signal.getsignal(s) for s in _STOP_SIGNALS}

        def stop(sig: int) -> None:
            got.append(sig)
            if task is not None:
                task.cancel()

        installed = []
        for sig in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, stop, sig)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                pass
        try:
            return await coro
        except asyncio.CancelledError:
            if got:
                raise KeyboardInterrupt(f"received {signal.Signals(got[0]).name}") from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
                if old[sig] is not None:  # what was there before (e.g. server.signals_raise)
                    signal.signal(sig, old[sig])

    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(main())


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


def request_row(req: Req, t0_ns: int, isl: int, osl: int, endpoint: str,
                cell_id: str = "", repeat: int = 0) -> dict[str, Any]:
    """A finished request as a row of the `requests` table (times relative to t0_ns): the one
    place such a row is assembled."""
    decoded = parse_stream(req.raw, endpoint)
    outcome = request_outcome(decoded, req.error, isl, osl, endpoint)
    usage = decoded.usage or {}
    return {
        "cell_id": cell_id,
        "repeat": repeat,
        "request_id": req.request_id,
        "phase": req.phase,
        "step": req.step,
        "target_rps": req.target_rps,
        "scheduled_s": (req.scheduled_ns - t0_ns) / 1e9,
        "sent_s": (req.sent_ns - t0_ns) / 1e9,
        "end_s": (req.end_ns - t0_ns) / 1e9,
        "send_lag_ms": ((req.picked_ns or req.sent_ns) - max(req.scheduled_ns, req.ready_ns)) / 1e6,
        **request_timing(req.sent_ns, decoded.token_ns, usage.get("completion_tokens")),
        "n_token_events": len(decoded.token_ns),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "requested_isl": isl,
        "requested_osl": osl,
        **outcome,
    }


@dataclass(frozen=True, slots=True)
class Measured:
    """What one phase (or sweep step) measured: its requests and the client's own CPU and wall
    time over its traffic window (parsing excluded)."""

    reqs: list[Req]
    client_cpu_s: float
    client_wall_s: float

    @property
    def client(self) -> dict[str, float]:
        return {"client_cpu_s": self.client_cpu_s, "client_wall_s": self.client_wall_s}


def arrival_offsets(rps: float, duration_s: float, arrival: str = "constant", seed: int = 0) -> list[float]:
    """Send times (s from the step's start) of an open-loop schedule: constant gaps of 1/rps,
    or Poisson arrivals at rate rps (seeded, so a step is the same workload every time)."""
    if rps <= 0:
        raise ValueError(f"rate must be positive, got {rps}")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {list(ARRIVALS)}, not {arrival!r}")
    rng = random.Random(seed)
    offsets: list[float] = []
    t = 0.0
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rps) if arrival == "poisson" else 1.0 / rps
    return offsets


class Ticker(Protocol):
    """A phase's progress: told of every request that finished."""

    def tick(self, ok: bool) -> None: ...


#: A phase's progress reporter from its label and request count (LoadGenerator.progress).
ProgressFactory = Callable[[str, "int | None"], Ticker]


class Progress:
    """Log 'done/total' for a phase at most every `every_s` seconds and at the end (the default
    reporter: log lines suit a job's log file; `almanac bench` in a terminal shows bars instead)."""

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
        max_response_bytes: int | None = None,
        read_pacing_ms: float = PACE_MS,
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
        # a response over this is cut and failed: memory per request stays bounded (None: no cap)
        self.max_response_bytes = max_response_bytes or 0
        self.read_pacing_ms = read_pacing_ms
        self._ids = itertools.count()
        self.t0_ns = time.perf_counter_ns()
        self.warmed = False
        self.progress: ProgressFactory = Progress

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
            return StreamingClient(self.base_url, keepalive=self.keepalive, keepalive_expiry_s=2.0,
                                   pace_ms=self.read_pacing_ms)
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

    def _too_large_error(self) -> str:
        return f"response too large: over max_response_bytes={self.max_response_bytes}; cut"

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
                        head = b""
                        async for chunk in resp.aiter_bytes():  # the start of the body is enough
                            head += chunk
                            if len(head) >= 4096:
                                break
                        req.error = f"HTTP {resp.status_code}: {head.decode(errors='replace')[:300]}"
                    else:
                        raw, cap, n = req.raw, self.max_response_bytes, 0
                        async for chunk in resp.aiter_bytes():
                            raw.append((time.perf_counter_ns(), chunk))
                            if cap:
                                n += len(chunk)
                                if n > cap:
                                    req.error = self._too_large_error()
                                    raw.clear()
                                    break
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
                                           request_id=request_id_header(req.request_id),
                                           max_bytes=self.max_response_bytes)
            req.http_status = status
            if status != 200:
                text = b"".join(c for _, c in req.raw).decode(errors="replace")
                req.raw.clear()
                req.error = f"HTTP {status}: {text[:300]}"
        except TimeoutError:
            req.error = self._timeout_error()
        except ResponseTooLarge:
            req.error = self._too_large_error()
            req.raw.clear()
        except HTTPError as exc:
            req.error = f"HTTPError: {exc}"
        if not req.sent_ns:  # the connect failed: nothing was sent
            req.sent_ns = time.perf_counter_ns()
        req.end_ns = time.perf_counter_ns()
        return req

    async def _send_counted(
        self, client: httpx.AsyncClient | StreamingClient, r: Req, sem: asyncio.Semaphore | None, prog: Ticker
    ) -> None:
        """Send within the client-side concurrency limit (if any) and count the result."""
        if sem:
            async with sem:
                r.ready_ns = time.perf_counter_ns()
                await self.send(client, r)
        else:
            await self.send(client, r)
        prog.tick(r.error is None)

    def rows(self, reqs: list[Req], cell_id: str = "", repeat: int = 0) -> list[dict[str, Any]]:
        return [request_row(r, self.t0_ns, self.isl, self.osl, self.endpoint, cell_id, repeat) for r in reqs]

    # -- phases -----------------------------------------------------------------------------
    # Each phase returns what it measured (its requests and the client's CPU over its traffic
    # window); turning requests into rows (stream decoding) happens afterwards, outside it.
    async def _timed(self, reqs: list[Req], traffic: Callable[[], Awaitable[None]]) -> Measured:
        # A full garbage collection during the traffic stops every read while it scans: 15-19 ms
        # for what an `almanac bench` process holds after start-up (measured), late by as much
        # for every chunk that arrives meanwhile. So collect once before the traffic and keep
        # what exists then out of the collections until the phase ends (gc.freeze); what the
        # phase allocates is still collected. Phases run one after another; if something had
        # frozen objects already, they are left as they are.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.collect()
            gc.freeze()
        try:
            c0, w0 = time.process_time(), time.perf_counter()
            await traffic()
            return Measured(reqs, time.process_time() - c0, time.perf_counter() - w0)
        finally:
            if freeze:
                gc.unfreeze()

    async def warmup(self, n: int) -> list[Req]:
        """Requests whose results are thrown away (they still must succeed)."""
        reqs = self.new_reqs(n, "warmup")
        async with self.client() as client:
            for r in reqs:
                await self.send(client, r)
        self.warmed = True
        return reqs

    async def sequential(self, n: int) -> Measured:
        reqs = self.new_reqs(n, "sequential")
        prog = self.progress("sequential", n)

        async def traffic() -> None:
            async with self.client() as client:
                for r in reqs:
                    await self.send(client, r)
                    prog.tick(r.error is None)

        return await self._timed(reqs, traffic)

    async def burst(self, n: int, max_concurrency: int | None = None) -> Measured:
        """All n requests submitted at t0 (at most max_concurrency in flight if set)."""
        reqs = self.new_reqs(n, "burst")
        prog = self.progress("burst", n)
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None

        async def traffic() -> None:
            t0 = time.perf_counter_ns()
            async with self.client() as client:
                for r in reqs:
                    r.scheduled_ns = t0
                await asyncio.gather(*(self._send_counted(client, r, sem, prog) for r in reqs))

        return await self._timed(reqs, traffic)

    async def rate(
        self,
        rps: float,
        duration_s: float,
        step: int,
        arrival: str = "constant",
        seed: int = 0,
        max_concurrency: int | None = None,
    ) -> Measured:
        """Open-loop arrivals at `rps` for `duration_s` (constant gaps or Poisson)."""
        offsets = arrival_offsets(rps, duration_s, arrival, seed)
        reqs = self.new_reqs(len(offsets), "sweep", step, target_rps=rps)
        prog = self.progress(f"sweep step {step} @ {rps:.3f} rps", len(reqs))
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None

        async def one(client: httpx.AsyncClient | StreamingClient, r: Req) -> None:
            # uvloop's timers have millisecond resolution and may fire up to 1 ms early: sleep
            # again for what is left (the last sub-millisecond sleeps are plain yields)
            while (delay := (r.scheduled_ns - time.perf_counter_ns()) / 1e9) > 0:
                await asyncio.sleep(delay)
            await self._send_counted(client, r, sem, prog)

        async def traffic() -> None:
            async with self.client() as client:
                t0 = time.perf_counter_ns()
                for r, off in zip(reqs, offsets, strict=True):
                    r.scheduled_ns = t0 + int(off * 1e9)
                await asyncio.gather(*(one(client, r) for r in reqs))

        return await self._timed(reqs, traffic)
