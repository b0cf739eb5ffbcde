"""A test instrument: an OpenAI-compatible streaming server with known, logged behaviour.

It is never an engine and never appears in results; it exists so that the client's timing and
token accounting can be checked against what actually happened. Each request's real timeline
(when the request arrived, when each token event was written) is appended to a JSONL log, so
tests compare measurements with the server's own clock rather than with its configuration.

    python -m llm_almanac.sim --port 8123 --ttft-ms 50 --tpot-ms 10 --tokens-per-chunk 1

Plain asyncio streams and HTTP/1.1 keep-alive with chunked transfer encoding; the request body
is JSON as the OpenAI API takes it (`prompt` or `messages`, `max_tokens`, `stream`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import signal
import socket
import time
import typing
from dataclasses import dataclass

import orjson


@dataclass
class SimConfig:
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    tokens_per_chunk: int = 1
    max_concurrency: int = 0  # 0 = unlimited; excess requests queue (as an engine's scheduler)
    role_chunk: bool = False  # send an empty role-only/first chunk as some servers do
    prompt_tokens: int | None = None  # reported prompt tokens (default: words in the prompt)
    completion_tokens_delta: int = 0  # report usage off by this much (fault mode)
    fault: str | None = None  # see FAULTS
    fault_after: int = 0  # serve this many completions normally before the fault applies
    tokenizer: str | None = None  # count prompt tokens with this tokenizer.json (as an engine would)
    model_name: str = "sim"  # what GET /v1/models lists (any name is accepted in requests)
    also_lists: tuple[str, ...] = ()  # more model ids GET /v1/models lists, after model_name
    interleave: bool = False  # without pacing, yield after every chunk: streams take turns
    log_path: str | None = None


# Per-request faults apply to completions after the first `fault_after`; server faults:
# exit_at_start (exits before listening), no_health (health says 503), crash (the process dies
# on the first completion after `fault_after`); endless: a response whose one SSE line never ends.
FAULTS = ("http500", "truncate", "stall", "malformed", "no_usage", "exit_at_start", "no_health", "crash",
          "endless")


class _StampingProtocol(asyncio.StreamReaderProtocol):
    """Stamps the arrival of a request's first bytes in `data_received`, before the handler
    coroutine gets to run: with many requests arriving at once, the handler of the last one
    runs only after the others' handlers, and a stamp taken there would be late by that much."""

    first_ns = 0

    def data_received(self, data: bytes) -> None:
        if not self.first_ns:
            self.first_ns = time.perf_counter_ns()
        super().data_received(data)


class SimServer:
    def __init__(self, cfg: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.cfg = cfg
        self.host, self.port = host, port
        self._server: asyncio.base_events.Server | None = None
        self._sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        # one os.write per record on an O_APPEND descriptor: worker processes share the file
        self._log = os.open(cfg.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if cfg.log_path else None
        self.records: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self._served = 0
        # a fake Prometheus /metrics in vLLM's names, from the sim's own clock (a test instrument:
        # it lets tests run the engine-metrics path end to end; see enginemetrics/)
        self.running = self.waiting = 0
        self.prom: dict[str, float] = {}
        self.connections = 0  # TCP connections accepted (tests check keep-alive use)
        self._unix_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._frames: dict[tuple[int, bool], bytes] = {}
        self._tok = None
        if cfg.tokenizer:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(cfg.tokenizer)

    async def start(self, sock=None) -> int:
        loop = asyncio.get_running_loop()

        def factory() -> _StampingProtocol:
            return _StampingProtocol(asyncio.StreamReader(limit=2**20, loop=loop), self._handle, loop=loop)

        if sock is not None:  # a listening socket shared by worker processes
            self._server = await loop.create_server(factory, sock=sock)
        else:
            self._server = await loop.create_server(factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for t in list(self._tasks):  # stalled or streaming handlers (fault modes)
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server:
            await self._server.wait_closed()
        if self._log is not None:
            os.close(self._log)
            self._log = None

    def _record(self, rec: dict) -> None:
        self.records.append(rec)
        if self._log is not None:
            os.write(self._log, orjson.dumps(rec) + b"\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a handler always runs in its own task
        self._tasks.add(task)
        self.connections += 1
        proto = typing.cast(_StampingProtocol, writer.transport.get_protocol())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = proto.first_ns or time.perf_counter_ns()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                proto.first_ns = 0  # the next request's first bytes get a fresh stamp
                if method == "GET" and path == "/metrics":
                    await self._respond(writer, 200, self.metrics_text().encode())
                elif method == "GET" and path in ("/health", "/v1/models"):
                    ok = self.cfg.fault != "no_health"
                    body = (orjson.dumps({"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "llm-almanac-sim"}
                        for m in (self.cfg.model_name, *self.cfg.also_lists)]})
                        if path == "/v1/models" else b'{"status":"ok"}')
                    await self._respond(writer, 200 if ok else 503, body)
                elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
                    await self._complete(writer, orjson.loads(body), path, arrived,
                                         headers.get("x-request-id"))
                else:
                    await self._respond(writer, 404, b'{"error":"not found"}')
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, code: int, body: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()

    async def _complete(self, writer, req: dict, path: str, arrived: int, request_id: str | None = None) -> None:
        self._served += 1
        fault = self.cfg.fault if self._served > self.cfg.fault_after else None
        if await self._fail_early(writer, fault):
            return
        chat = path.endswith("chat/completions")
        prompt, n_prompt = self._prompt(req, chat)
        n_out = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        started = arrived  # the TTFT clock starts when the request arrived...
        if self._sem:
            self.waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
            started = max(arrived, time.perf_counter_ns())  # ...or when a slot freed
        self.running += 1
        try:
            events, sent = await self._stream(writer, chat, n_prompt, n_out, started, fault)
        finally:
            self.running -= 1
            if self._sem:
                self._sem.release()
        self._observe(arrived, started, events, sent)
        self._record({"arrived_ns": arrived, "started_ns": started, "event_ns": events,
                      "tokens": sent, "prompt_tokens": n_prompt,
                      # pairing keys for clients that log wall-clock times or their prompts
                      "arrived_unix_ns": arrived + self._unix_offset_ns,
                      "prompt_sha1": hashlib.sha1(prompt.encode()).hexdigest(),
                      "x_request_id": request_id, "model": req.get("model")})

    async def _fail_early(self, writer, fault: str | None) -> bool:
        """The faults that happen before any token: a crash, an HTTP 500, an endless line."""
        if fault == "crash":
            print(f"simulated crash on completion {self._served}", flush=True)
            os._exit(70)
        if fault == "http500":
            await self._respond(writer, 500, b'{"error":{"message":"simulated failure"}}')
            return True
        if fault == "endless":  # one data line that never ends: only the client's cap stops it
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            piece = self._framed_raw(b'data: {"choices":[{"index":0,"text":"' + b"x" * 65536)
            filler = self._framed_raw(b"x" * 65536)
            writer.write(piece)
            while True:
                writer.write(filler)
                await writer.drain()
        return False

    def _prompt(self, req: dict, chat: bool) -> tuple[str, int]:
        """The request's prompt text and its token count (fixed, by the tokenizer, or by words)."""
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        if isinstance(prompt, list):  # content parts, or a batch of one prompt
            prompt = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in prompt)
        if self.cfg.prompt_tokens is not None:
            return prompt, self.cfg.prompt_tokens
        if self._tok is not None:
            return prompt, len(self._tok.encode(prompt, add_special_tokens=True).ids)
        return prompt, len(prompt.split())

    async def _stream(self, writer, chat: bool, n_prompt: int, n_out: int, started: int,
                      fault: str | None) -> tuple[list[int], int]:
        """Stream n_out tokens paced from `started`, then usage and [DONE]; return each event's
        send time and the tokens sent."""
        cfg, now = self.cfg, time.perf_counter_ns
        events: list[int] = []
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        if cfg.role_chunk:
            writer.write(self._framed(self._chunk("", chat, role=True)))
        t_next = started + int(cfg.ttft_ms * 1e6)
        step_ns = int(cfg.tpot_ms * 1e6)
        paced = cfg.ttft_ms > 0 or cfg.tpot_ms > 0
        interleave = cfg.interleave and not paced
        sent = 0
        while sent < n_out:
            k = min(cfg.tokens_per_chunk, n_out - sent)
            if paced:
                delay = (t_next - now()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            if fault == "truncate" and sent >= n_out // 2:
                break
            if fault == "stall" and sent >= n_out // 2:
                await asyncio.sleep(3600)
            frame = self._token_frame(k, chat)
            events.append(now())  # stamped before the write: the event's true send time
            writer.write(frame)
            await writer.drain()
            if interleave:
                await asyncio.sleep(0)
            sent += k
            t_next += step_ns * k
        if fault == "malformed":
            writer.write(b"d\r\ndata: {oops\n\n\r\n")
        usage = {"prompt_tokens": n_prompt, "completion_tokens": sent + cfg.completion_tokens_delta,
                 "total_tokens": n_prompt + sent + cfg.completion_tokens_delta}
        if fault != "no_usage":
            writer.write(self._framed(orjson.dumps({"choices": [], "usage": usage})))
        writer.write(self._framed(b"[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        return events, sent

    def _observe(self, arrived: int, started: int, events: list[int], sent: int) -> None:
        """Add one request to the Prometheus sums the sim's /metrics serves."""
        if not events:
            return
        p = self.prom
        for stat, v in (("ttft", (events[0] - arrived) / 1e9), ("e2e", (events[-1] - arrived) / 1e9),
                        ("queue", (started - arrived) / 1e9),
                        ("tpot", (events[-1] - events[0]) / 1e9 / max(1, sent - 1))):
            p[f"{stat}_sum"] = p.get(f"{stat}_sum", 0.0) + v
            p[f"{stat}_count"] = p.get(f"{stat}_count", 0.0) + 1

    def metrics_text(self) -> str:
        """The sim's state as Prometheus text under vLLM's metric names (no buckets)."""
        p, lab = self.prom, '{model_name="' + self.cfg.model_name + '"}'
        hist = {"ttft": "vllm:time_to_first_token_seconds", "e2e": "vllm:e2e_request_latency_seconds",
                "queue": "vllm:request_queue_time_seconds", "tpot": "vllm:request_time_per_output_token_seconds"}
        out = []
        for k, name in hist.items():
            out += [f"# TYPE {name} histogram", f"{name}_sum{lab} {p.get(f'{k}_sum', 0.0)}",
                    f"{name}_count{lab} {p.get(f'{k}_count', 0.0)}"]
        for name, v in (("vllm:request_success", p.get("e2e_count", 0.0)), ("vllm:prefix_cache_queries", 0.0),
                        ("vllm:prefix_cache_hits", 0.0), ("vllm:num_preemptions", 0.0)):
            out += [f"# TYPE {name} counter", f"{name}_total{lab} {v}"]
        for name, v in (("vllm:num_requests_running", self.running), ("vllm:num_requests_waiting", self.waiting),
                        ("vllm:kv_cache_usage_perc", 0.0)):
            out += [f"# TYPE {name} gauge", f"{name}{lab} {float(v)}"]
        return "\n".join(out) + "\n"

    @staticmethod
    def _framed_raw(data: bytes) -> bytes:
        """Bytes as one HTTP chunk."""
        return b"%x\r\n%s\r\n" % (len(data), data)

    @staticmethod
    def _framed(obj: bytes) -> bytes:
        """One SSE event as one HTTP chunk."""
        data = b"data: " + obj + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(data), data)

    def _token_frame(self, k: int, chat: bool) -> bytes:
        key = (k, chat)
        frame = self._frames.get(key)
        if frame is None:  # every token event of a kind is the same bytes: build it once
            frame = self._frames[key] = self._framed(self._chunk(" tok" * k, chat))
        return frame

    @staticmethod
    def _chunk(text: str, chat: bool, role: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant"} if role else {"content": text}
            return orjson.dumps({"choices": [{"index": 0, "delta": delta}]})
        return orjson.dumps({"choices": [{"index": 0, "text": text}]})


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The simulator's options (`python -m llm_almanac.sim` and `almanac sim` alike)."""
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--port", type=int, default=8123, help="port to listen on (0: any free one, printed)")
    ap.add_argument("--ttft-ms", type=float, default=0.0, help="time to the first token of each response")
    ap.add_argument("--tpot-ms", type=float, default=0.0, help="time between output tokens")
    ap.add_argument("--tokens-per-chunk", type=int, default=1, help="output tokens per streamed chunk")
    ap.add_argument("--max-concurrency", type=int, default=0,
                    help="requests served at once, the rest queue; 0 = unlimited")
    ap.add_argument("--fault", choices=FAULTS, help="misbehave this way (a test of the client) (default: none)")
    ap.add_argument("--fault-after", type=int, default=0, help="completions served normally first")
    ap.add_argument("--tokenizer", help="tokenizer.json to count prompt tokens with "
                                        "(default: none; words are counted)")
    ap.add_argument("--prompt-tokens", type=int, help="report this many prompt tokens (no counting) (default: off)")
    ap.add_argument("--log", help="JSONL file of what the server actually did (default: none)")
    ap.add_argument("--model-name", default="sim", help="the model id GET /v1/models lists")
    ap.add_argument("--also-lists", action="append", default=[], metavar="MODEL",
                    help="another model id GET /v1/models lists (repeatable) (default: none)")
    ap.add_argument("--uvloop", action="store_true", help="serve on uvloop (faster zero-delay mode)")
    ap.add_argument("--interleave", action="store_true",
                    help="without delays, yield after every chunk, so that concurrent streams take turns "
                         "chunk by chunk as in an engine's front end (default: each response in one go)")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes sharing the port (so that the server is not what limits a client benchmark)")
    ap.add_argument("--echo-env", action="append", default=[], metavar="VAR",
                    help="print VAR=value at start (tests check that secrets are scrubbed from the log) (default: none)")


def main(argv: list[str] | None = None) -> None:
    from .cli import HelpWithDefaults

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpWithDefaults)
    add_arguments(ap)
    serve(ap.parse_args(argv))


def serve(a: argparse.Namespace) -> None:
    """Run the simulator with parsed options until SIGTERM or Ctrl-C."""
    for var in a.echo_env:
        print(f"{var}={os.environ.get(var, '')}", flush=True)
    if a.fault == "exit_at_start":
        print("simulated startup failure: exiting before listening", flush=True)
        raise SystemExit(3)
    cfg = SimConfig(a.ttft_ms, a.tpot_ms, a.tokens_per_chunk, a.max_concurrency,
                    fault=a.fault, fault_after=a.fault_after, tokenizer=a.tokenizer, log_path=a.log,
                    model_name=a.model_name, prompt_tokens=a.prompt_tokens, interleave=a.interleave,
                    also_lists=tuple(a.also_lists))
    if a.workers <= 1:
        _serve_one(a, cfg, None, announce=True)
        return
    sock = socket.create_server((a.host, a.port), backlog=4096, reuse_port=False)
    sock.setblocking(False)
    a.port = sock.getsockname()[1]
    _serve_workers(a, cfg, sock)


def _serve_one(a: argparse.Namespace, cfg: SimConfig, sock: socket.socket | None, announce: bool) -> None:
    """One event loop serving until Ctrl-C (on `sock` when given, shared with other workers)."""
    # The simulator's log is the timing reference, and a full garbage collection stalls its loop
    # while it scans everything it holds (the records grow with every request): requests that
    # arrived during one were stamped 20-25 ms after the client wrote them (timing_truth.py,
    # always in the first run of a stage). Young collections still run; full ones never do, so
    # cyclic garbage that reaches the oldest generation stays until the simulator exits (it is a
    # test instrument, run for one benchmark or test). On Python 3.11 (the project's), the third
    # threshold is what starts a full collection.
    gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], 2**31 - 1)

    async def run() -> None:
        srv = SimServer(cfg, a.host, a.port)
        port = await srv.start(sock)
        if announce:
            print(f"simulator listening on http://{a.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await srv.close()

    try:
        if a.uvloop:
            import uvloop

            uvloop.run(run())
        else:
            asyncio.run(run())
    except KeyboardInterrupt:
        pass


def _serve_workers(a: argparse.Namespace, cfg: SimConfig, sock: socket.socket) -> None:
    """a.workers forked processes on one listening socket; SIGTERM/SIGINT stop them all."""
    children = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own event loop on the shared listening socket
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _serve_one(a, cfg, sock, announce=False)
            os._exit(0)
        children.append(pid)
    print(f"simulator listening on http://{a.host}:{a.port} ({a.workers} workers)", flush=True)

    def stop(*_):
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
