"""Stream decoding: a recorded SSE response -> its token-bearing events, usage and errors.

Runs after the stream has ended, over the (arrival timestamp, bytes) pairs the transport
recorded, so parsing can never delay a timestamp. An SSE event is stamped with the arrival
time of the read that completed it. Streams in the canonical framing every OpenAI-compatible
server uses take a fast path (byte and array operations over the whole stream, all JSON in one
orjson call); anything else goes event by event, through sseclient-py where the framing is not
canonical. All paths give the same result (tests/test_loadgen.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import orjson
import sseclient


class Decoded(NamedTuple):
    """What a response stream said."""

    token_ns: list[int]  # arrival times of the token-bearing events
    usage: dict[str, Any] | None  # the last `usage` object
    done: bool  # whether `data: [DONE]` arrived
    error: str | None  # an error the stream itself reported, or a malformed event


def _stamped(raw: list[tuple[int, bytes]], now: list[int]) -> Iterator[bytes]:
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


def _full_events(raw: list[tuple[int, bytes]]) -> Iterator[tuple[int, str]]:
    now = [0]
    for ev in sseclient.SSEClient(_stamped(raw, now)).events():
        yield now[0], ev.data


def _stream_error(obj: dict[str, Any]) -> str:
    err = obj["error"]
    return f"server error in stream: {err.get('message', err) if isinstance(err, dict) else err}"


_DONE = b"data: [DONE]\n\n"


def _parse_batch(buf: bytes, stamps: list[int], endpoint: str) -> Decoded | None:
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
    return Decoded(token_ns, usages[-1] if usages else None, done, errors[-1] if errors else None)


def parse_stream(raw: list[tuple[int, bytes]], endpoint: str = "completions") -> Decoded:
    """Decode a recorded SSE stream. Role-only, empty and usage-only events are not
    token-bearing."""
    if not raw:
        return Decoded([], None, False, None)
    canonical = _canonical(raw)
    if canonical is None:
        return _parse_events(_full_events(raw), endpoint)
    out = _parse_batch(*canonical, endpoint)
    if out is not None:
        return out
    buf, stamps = canonical
    return _parse_events(zip(stamps, [e[6:] for e in buf[:-2].split(b"\n\n")] if buf else []), endpoint)


def _parse_events(events: Iterable[tuple[int, bytes | str]], endpoint: str) -> Decoded:
    token_ns: list[int] = []
    usage: dict[str, Any] | None = None
    done = False
    error: str | None = None
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
    return Decoded(token_ns, usage, done, error)


