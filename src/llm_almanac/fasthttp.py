"""A lean HTTP/1.1 client for streaming responses: asyncio protocols + llhttp (httptools).

Why not only httpx: per network read, httpx runs several layers of Python (httpcore's
connection state machine, h11's parser, async iterators) before our code sees the bytes; at
high concurrency with small models that costs tens of microseconds per chunk and the client
becomes the bottleneck (see benchmarks/client_ceiling.py for the figures). Here a read
costs one `perf_counter_ns()`, one call into llhttp (C) that strips the chunked framing, and
one list append per body piece; nothing else happens until the response is complete.

The timestamp is taken first thing in `data_received`, before any parsing, so the framing work
can never delay it. Connections are pooled per client (keep-alive, idle expiry like httpx's)
and are reused only after a complete response whose server allowed keep-alive.

Read pacing (`pace_ms`, 1 ms by default): once a response has brought its first PACE_FROM_EVENT
SSE events, a connection that reads within `pace_ms` of its previous read (or finds data waiting
when a pause ends) stops reading for `pace_ms` after that read, so a fast stream's chunks queue
in the kernel and come in one read. A reader that always waits in epoll makes every server write
wake it, and an emptied socket makes the kernel acknowledge and send smaller segments: the
server pays for both, per chunk, and a one-process HTTP front end delivers fewer chunks per
second for it (docs/methodology.md, "What reading costs the server"). A connection's own pauses
never hold a response's first three events (a role chunk, an empty chunk and the first token may
come within a millisecond: TTFT is on arrival), nor any chunk more than 2 ms after the
connection's previous read (every token of a stream at an engine's pace, the last one included);
loop-wide naps (below) can hold any chunk. A chunk that arrives during a pause (the usage chunk
or [DONE] right behind the last token, a chunk of a stream faster than one per `pace_ms`) is
stamped when the pause ends: at most `pace_ms` rounded up to whole milliseconds plus 1 ms late
(uvloop's timers), plus a loop-wide nap that was under way when the pause fell due (the nap due
in the iteration where a pause ends is skipped).

Across connections (`_Naps`): while the client's reads come less than `pace_ms` apart, as they do
when many streams each bring a chunk now and then (an engine's front end writes one chunk per
stream in turn, so no one connection reads twice within a millisecond), its event loop polls at
most once per `pace_ms` and sleeps in between, so that the server's writes wake nobody. A chunk
that arrives while the loop sleeps is stamped when it wakes: up to `pace_ms` (plus the kernel's
timer slack, about 0.06 ms) late, and this can hold any stream's chunks, its first token
included, once other streams keep the loop busy. A single stream slower than one chunk per
`pace_ms` is never held. Every read counts towards "reads less than `pace_ms` apart", but only
a read of a connection that is not pausing by itself may start a nap. The naps are per client;
`almanac bench` runs one client per event loop at a time.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import sys
import termios
import time
from urllib.parse import urlsplit

import httptools

_now = time.perf_counter_ns

# Read pacing (see the module's docstring and _Conn.data_received): the default chosen with
# benchmarks/read_pacing.py and client_ceiling.py (docs/methodology.md, "What reading costs the
# server"). 0 turns it off: every read as soon as the data arrives.
PACE_MS = 1.0
# A response's first SSE events are never held (a role chunk, an empty first chunk and the first
# token can come within a millisecond): pausing starts once this many have arrived.
PACE_FROM_EVENT = 3
# ... and once this many gaps in a row were shorter than pace_ms. 1 measured best for the server
# (benchmarks/read_pacing.py cost --extra 'after3={"pace_ms":1,"pace_after":3}': at concurrency
# 64 the server spent 4.95 us per chunk with 3 against 4.34 with 1 and 4.10 with the aiohttp loop)
PACE_AFTER = 1


def _bytes_waiting(fd: int) -> int:
    """Bytes in a socket's receive queue (FIONREAD); 0 if it cannot be asked."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
    except (OSError, ValueError):
        return 0


class HTTPError(Exception):
    """A transport-level failure: refused, reset, closed mid-response, unparsable."""


class ResponseTooLarge(HTTPError):
    """The response's body went over the caller's cap (`post(max_bytes=)`): cut, connection closed."""


class _Naps:
    """Read pacing across a client's connections: while its reads come less than `pace_ms` apart
    (the time it napped not counted), its event loop polls at most once per `pace_ms`: it sleeps
    until `pace_ms` after its previous nap ended before it polls again.

    A loop that is asleep is not waiting in epoll, so the server's writes in the meantime wake
    nobody; the next poll returns them all. This is what holds when many streams each bring a
    chunk now and then (an engine's front end writes one chunk per stream in turn): no one
    connection reads twice within a millisecond, so per-connection pauses never start, yet the
    loop would be woken for nearly every chunk (docs/methodology.md). Only a read of a response
    past its first PACE_FROM_EVENT events and not at its end may start a nap, so a response's
    first token is never held by a nap its own stream started; and only a read of a connection
    that is not pausing by itself (its own read was not "fast": within `pace_ms` of its previous
    read, or of data found waiting when a pause ended): a fast
    stream's chunks are already batched by its pauses, and naps on top of them made a
    one-process server spend 4-15 % more per chunk (benchmarks/read_pacing.py cost, 64 streams
    each written in one go)."""

    __slots__ = ("window_ns", "last", "end", "pending", "count", "resumed")

    def __init__(self, pace_ms: float) -> None:
        self.window_ns = int(pace_ms * 1e6)
        self.last = self.end = 0  # the last read; the end of the last nap
        self.pending = False  # a nap is scheduled for this loop iteration
        self.count = 0  # naps so far
        self.resumed = False  # a connection's pause ended since the last nap

    def resume(self) -> None:
        """A connection's pause just ended: the nap due in this loop iteration does not sleep, so
        that a paused connection's data is not held for a nap on top of its pause."""
        self.resumed = True

    def read(self, ts: int, may_nap: bool) -> None:
        if may_nap and not self.pending and ts - max(self.last, self.end) < self.window_ns:
            self.pending = True
            asyncio.get_running_loop().call_soon(self._nap)
        self.last = ts

    def _nap(self) -> None:
        self.pending = False  # first: a sleep cut short by a signal must not stop all later naps
        # the loop polls at most once per pace_ms: a loop that took that long to handle what
        # its last poll brought does not sleep at all (data is waiting; nobody has to wake it)
        delay = self.end + self.window_ns - _now()
        if delay > 0 and not self.resumed:
            time.sleep(delay / 1e9)  # blocks the loop on purpose: see the class docstring
        self.resumed = False
        self.count += 1
        self.end = _now()


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "raw", "waiter", "status", "keep_alive", "closed",
                 "idle_since", "_ts", "received", "lost_exc", "max_bytes", "n_bytes", "pace_s",
                 "pace_ns", "last_read", "fast_gaps", "resumed", "waiting", "events", "complete", "resume",
                 "pauses", "fd", "naps")

    def __init__(self, pace_ms: float = 0.0, naps: _Naps | None = None) -> None:
        self.naps = naps  # the client's loop-wide pacing, shared by its connections
        # uvloop's timers count whole milliseconds: a pause lasts pace_ms rounded up
        self.pace_s, self.pace_ns = math.ceil(pace_ms) / 1e3, int(pace_ms * 1e6)
        self.last_read = 0
        self.fast_gaps = 0  # gaps in a row between reads shorter than pace_ns
        self.resumed = False  # a pause ended since the last read ...
        self.waiting = False  # ... and data was waiting when it did
        self.fd = -1
        self.events = 0  # SSE event ends (blank lines) in the current response so far
        self.complete = False  # the current response has ended: no pause after its last read
        self.resume: asyncio.TimerHandle | None = None
        self.pauses = 0  # pauses so far
        # set by connection_made, which create_connection calls before it returns the protocol
        self.transport: asyncio.Transport
        self.parser = httptools.HttpResponseParser(self)
        self.raw: list[tuple[int, bytes]] = []  # the current request's body pieces
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0
        self._ts = 0
        self.received = False
        self.lost_exc: BaseException | None = None
        self.max_bytes = 0  # 0: no cap
        self.n_bytes = 0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        ts = self._ts = _now()
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPError(f"unparsable HTTP response: {exc}"))
            self.transport.close()
        if self.pace_ns:  # pacing (module docstring)
            # after a pause the stream is still fast if data was waiting when it ended, not if
            # the next chunk merely came soon after it (a stream 1-2 ms per token stays unpaced)
            fast = self.waiting if self.resumed else ts - self.last_read < self.pace_ns
            self.fast_gaps = self.fast_gaps + 1 if fast else 0
            self.resumed = self.waiting = False
            if (self.fast_gaps >= PACE_AFTER and self.events >= PACE_FROM_EVENT and not self.complete
                    and not self.transport.is_closing()):
                self.transport.pause_reading()
                self.pauses += 1
                self.resume = asyncio.get_running_loop().call_later(self.pace_s, self._resume)
            if self.naps is not None:  # a connection that reads fast is left to its own pauses
                self.naps.read(ts, self.events >= PACE_FROM_EVENT and not self.complete
                               and not self.fast_gaps)
        self.last_read = ts

    def _resume(self) -> None:
        self.resume = None
        if self.transport.is_closing():  # its descriptor may be gone: ask nothing
            return
        self.resumed = True
        self.waiting = _bytes_waiting(self.fd) > 0
        self.transport.resume_reading()
        if self.naps is not None:
            self.naps.resume()

    def unpause(self) -> None:
        """Read again now (a new request on this connection: its first chunk is never held)."""
        if self.resume is not None:
            self.resume.cancel()
            self._resume()
        self.last_read = self.fast_gaps = self.events = 0
        self.complete = self.resumed = self.waiting = False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.resume is not None:
            self.resume.cancel()
            self.resume = None
        self._fail(HTTPError("connection closed by the server before the response ended"
                             + (f" ({exc})" if exc else "")))

    # -- llhttp callbacks -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.raw.append((self._ts, body))
        # counted until pacing may start (a blank line split across two pieces is missed: it
        # starts a little later)
        if self.pace_ns and self.events < PACE_FROM_EVENT:
            self.events += body.count(b"\n\n")
        if self.max_bytes:
            self.n_bytes += len(body)
            if self.n_bytes > self.max_bytes:
                self._fail(ResponseTooLarge(f"response larger than {self.max_bytes} bytes"))
                self.transport.close()

    def on_message_complete(self) -> None:
        self.complete = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)


class StreamingClient:
    """POSTs a body and records every body piece with its read's arrival time.

    Use as `async with StreamingClient(base_url) as c: status = await c.post(path, body, raw)`.
    """

    def __init__(self, base_url: str, keepalive: bool = True, keepalive_expiry_s: float = 2.0,
                 connect_timeout_s: float = 30.0, pace_ms: float = PACE_MS) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http":
            raise ValueError(f"the fast client speaks plain http only, not {u.scheme!r}: {base_url}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.keepalive = keepalive
        self.expiry_ns = int(keepalive_expiry_s * 1e9)
        self.connect_timeout_s = connect_timeout_s
        if not 0 <= pace_ms <= 100:
            raise ValueError(f"pace_ms must be between 0 and 100, not {pace_ms!r}")
        self.pace_ms = pace_ms
        self._naps = _Naps(pace_ms) if pace_ms else None
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        host_hdr = self.host if self.port == 80 else f"{self.host}:{self.port}"
        self._head = ("POST {path} HTTP/1.1\r\nHost: " + host_hdr + "\r\n"
                      "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                      + ("" if keepalive else "Connection: close\r\n")
                      + "{extra}Content-Length: {n}\r\n\r\n")

    async def __aenter__(self) -> StreamingClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for c in list(self._all):
            if c.transport is not None:
                c.transport.close()
        self._all.clear()
        self._idle.clear()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Conn(self.pace_ms, self._naps), self.host, self.port)
        except TimeoutError:
            raise HTTPError(f"connect to {self.host}:{self.port} timed out after "
                            f"{self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise HTTPError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Conn | None:
        now = _now()
        while self._idle:
            c = self._idle.pop()
            if not c.closed and now - c.idle_since < self.expiry_ns:
                return c
            c.transport.close()
            self._all.discard(c)
        return None

    def request_bytes(self, path: str, body: bytes, request_id: str | None = None) -> bytes:
        extra = ""
        if request_id is not None:
            if not request_id.isprintable() or not request_id.strip():
                raise ValueError(f"not a valid X-Request-Id header value: {request_id!r}")
            extra = f"X-Request-Id: {request_id}\r\n"
        return self._head.format(path=self.prefix + path, extra=extra, n=len(body)).encode() + body

    async def post(self, path: str, body: bytes, raw: list[tuple[int, bytes]], on_send=None,
                   request_id: str | None = None, max_bytes: int = 0) -> int:
        """Send one request; fill `raw` with (arrival ns, body piece); return the HTTP status.

        `on_send()` is called just before the request's bytes are written (to stamp the send
        time); `request_id` goes out as the `X-Request-Id` header. A pooled connection that the
        server had already closed is replaced once, transparently, if nothing of the response
        had arrived on it. A body over `max_bytes` (if set) raises ResponseTooLarge."""
        data = self.request_bytes(path, body, request_id)
        conn = self._take_idle()
        reused = conn is not None
        for attempt in (0, 1):
            if conn is None:
                conn = await self._connect()
            loop = asyncio.get_running_loop()
            conn.waiter = loop.create_future()
            conn.raw = raw
            conn.max_bytes, conn.n_bytes = max_bytes, 0
            conn.received = False
            conn.unpause()
            if on_send is not None:
                on_send()
            conn.transport.write(data)
            try:
                await conn.waiter
            except HTTPError:
                self._all.discard(conn)
                if reused and attempt == 0 and not conn.received and not raw:
                    conn.transport.close()
                    conn, reused = None, False
                    continue
                conn.transport.close()
                raise
            except BaseException:  # cancelled (timeout): the connection is mid-response
                self._all.discard(conn)
                conn.transport.close()
                raise
            break
        assert conn is not None  # the loop ends with a response on a connection, or raises
        conn.waiter = None
        conn.raw = []
        if self.keepalive and conn.keep_alive and not conn.closed:
            conn.idle_since = _now()
            self._idle.append(conn)
        else:
            self._all.discard(conn)
            conn.transport.close()
        return conn.status
