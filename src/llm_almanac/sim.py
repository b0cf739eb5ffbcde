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
import hashlib
import os
import signal
import socket
import time
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
    interleave: bool = False  # without pacing, yield after every chunk: streams take turns
    log_path: str | None = None


# Per-request faults apply to completions after the first `fault_after`; server faults:
# exit_at_start (exits before listening), no_health (health says 503), crash (the process dies
# on the first completion after `fault_after`).
FAULTS = ("http500", "truncate", "stall", "malformed", "no_usage", "exit_at_start", "no_health", "crash")


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
        self._tasks.add(task)
        self.connections += 1
        proto: _StampingProtocol = writer.transport.get_protocol()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = proto.first_ns or time.perf_counter_ns()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                proto.first_ns = 0  # the next request's first bytes get a fresh stamp
                if method == "GET" and path in ("/health", "/v1/models"):
                    ok = self.cfg.fault != "no_health"
                    body = (orjson.dumps({"object": "list", "data": [
                        {"id": self.cfg.model_name, "object": "model", "owned_by": "llm-almanac-sim"}]})
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
        cfg = self.cfg
        self._served += 1
        fault = cfg.fault if self._served > cfg.fault_after else None
        if fault == "crash":
            print(f"simulated crash on completion {self._served}", flush=True)
            os._exit(70)
        if fault == "http500":
            await self._respond(writer, 500, b'{"error":{"message":"simulated failure"}}')
            return
        chat = path.endswith("chat/completions")
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        if isinstance(prompt, list):  # content parts, or a batch of one prompt
            prompt = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in prompt)
        if cfg.prompt_tokens is not None:
            n_prompt = cfg.prompt_tokens
        elif self._tok is not None:
            n_prompt = len(self._tok.encode(prompt, add_special_tokens=True).ids)
        else:
            n_prompt = len(prompt.split())
        n_out = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        started = arrived  # the TTFT clock starts when the request arrived...
        if self._sem:
            await self._sem.acquire()
            started = max(arrived, time.perf_counter_ns())  # ...or when a slot freed
        events: list[int] = []
        now = time.perf_counter_ns
        try:
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
        finally:
            if self._sem:
                self._sem.release()
        self._record({"arrived_ns": arrived, "started_ns": started, "event_ns": events,
                      "tokens": sent, "prompt_tokens": n_prompt,
                      # pairing keys for clients that log wall-clock times or their prompts
                      "arrived_unix_ns": arrived + self._unix_offset_ns,
                      "prompt_sha1": hashlib.sha1(prompt.encode()).hexdigest(),
                      "x_request_id": request_id})

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--tpot-ms", type=float, default=0.0)
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--max-concurrency", type=int, default=0)
    ap.add_argument("--fault", choices=FAULTS)
    ap.add_argument("--fault-after", type=int, default=0, help="completions served normally first")
    ap.add_argument("--tokenizer", help="tokenizer.json to count prompt tokens with")
    ap.add_argument("--prompt-tokens", type=int, help="report this many prompt tokens (no counting)")
    ap.add_argument("--log", help="JSONL file of what the server actually did")
    ap.add_argument("--model-name", default="sim", help="the model id GET /v1/models lists")
    ap.add_argument("--uvloop", action="store_true", help="serve on uvloop (faster zero-delay mode)")
    ap.add_argument("--interleave", action="store_true",
                    help="without delays, yield after every chunk, so that concurrent streams take turns "
                         "chunk by chunk as in an engine's front end (default: each response in one go)")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes sharing the port (so that the server is not what limits a client benchmark)")
    a = ap.parse_args(argv)
    if a.fault == "exit_at_start":
        print("simulated startup failure: exiting before listening", flush=True)
        raise SystemExit(3)
    cfg = SimConfig(a.ttft_ms, a.tpot_ms, a.tokens_per_chunk, a.max_concurrency,
                    fault=a.fault, fault_after=a.fault_after, tokenizer=a.tokenizer, log_path=a.log,
                    model_name=a.model_name, prompt_tokens=a.prompt_tokens, interleave=a.interleave)

    sock = None
    if a.workers > 1:
        sock = socket.create_server((a.host, a.port), backlog=4096, reuse_port=False)
        sock.setblocking(False)
        a.port = sock.getsockname()[1]

    async def run(announce: bool) -> None:
        srv = SimServer(cfg, a.host, a.port)
        port = await srv.start(sock)
        if announce:
            print(f"simulator listening on http://{a.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await srv.close()

    def serve(announce: bool) -> None:
        try:
            if a.uvloop:
                import uvloop

                uvloop.run(run(announce))
            else:
                asyncio.run(run(announce))
        except KeyboardInterrupt:
            pass

    if a.workers <= 1:
        serve(True)
        return
    children = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own event loop on the shared listening socket
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve(False)
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
