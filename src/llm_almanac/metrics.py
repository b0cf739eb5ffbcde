"""Metric definitions (docs/methodology.md), as pure functions.

Per request, from the send time and the arrival times of *token-bearing* SSE events:
  ttft_ms = first token-bearing event - send
  e2e_ms  = last token-bearing event - send
  tpot_ms = (e2e - ttft) / (completion_tokens - 1)      (server-reported completion tokens)
  itl_ms  = gaps between consecutive token-bearing events (raw list per request)
Per phase (and sweep step), over successful requests:
  rps          = n_ok / (last completion - first send): successful requests only, so read it
                 beside fail_rate = n_failed / (n_ok + n_failed) (half the requests timing out
                 would otherwise look like a healthy rate)
  output_tok_s = sum(completion_tokens) / the same window
  percentiles  = linear interpolation between closest ranks (numpy's default, as vLLM's
                 `bench serve` reports them); ITL percentiles pool every gap of every request.
Client self-check, per phase:
  client_cpu_util  = client CPU seconds / wall seconds over the phase's traffic window
  client_saturated = client_cpu_util >= SATURATED_CPU_UTIL or send_lag_p99 > SATURATED_LAG_MS:
                     the client (one event loop, one core), not the server, may have set the pace.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from .stream import Decoded
from .tables import CLIENT, PERCENTILES, PHASE_KEYS, PHASES, conform, empty

NS_PER_MS = 1_000_000

# The client runs on one event loop: above 90% of a core it has no slack left to read and send
# on time; a p99 send lag above 10 ms means requests left measurably later than the workload
# said (the TTFT error budget of benchmarks/timing_truth.py at concurrency 64 is 10 ms p99).
SATURATED_CPU_UTIL = 0.9
SATURATED_LAG_MS = 10.0


def request_timing(
    sent_ns: int, token_event_ns: list[int], completion_tokens: int | None
) -> dict[str, Any]:
    """TTFT, E2E, TPOT and ITL of one request, in milliseconds (None where undefined)."""
    if not token_event_ns:
        return {"ttft_ms": None, "e2e_ms": None, "tpot_ms": None, "itl_ms": []}
    first, last = token_event_ns[0], token_event_ns[-1]
    ttft = (first - sent_ns) / NS_PER_MS
    e2e = (last - sent_ns) / NS_PER_MS
    tpot = None
    if completion_tokens is not None and completion_tokens > 1:
        tpot = (e2e - ttft) / (completion_tokens - 1)
    itl = [(b - a) / NS_PER_MS for a, b in zip(token_event_ns, token_event_ns[1:])]
    return {"ttft_ms": ttft, "e2e_ms": e2e, "tpot_ms": tpot, "itl_ms": itl}


def request_outcome(decoded: Decoded, transport_error: str | None, isl: int, osl: int,
                    endpoint: str) -> dict[str, Any]:
    """Whether a request counts: `status`, `error` and `token_mismatch` of its row.

    A request is ok only when the transport raised nothing, the stream reported no error, had
    a token-bearing event, reported `usage` and ended with [DONE], and its token counts are the
    ones asked for. A mismatch (e.g. a truncated output) is not the workload that was asked for:
    counted, kept with its numbers, and left out of every latency statistic and rate. The chat
    endpoint wraps the prompt in a template, so only the completion is checked there."""
    usage = decoded.usage
    error = transport_error or decoded.error
    if error is None:
        if not decoded.token_ns:
            error = "no token-bearing event in the stream"
        elif usage is None:
            error = "server reported no usage; completion tokens unknown"
        elif not decoded.done:
            error = "stream ended without [DONE]"
    prompt_tokens = usage.get("prompt_tokens") if usage else None
    completion_tokens = usage.get("completion_tokens") if usage else None
    mismatch = usage is not None and ((endpoint != "chat" and prompt_tokens != isl) or completion_tokens != osl)
    if error is None and mismatch:
        error = (f"token counts differ from the request: prompt {prompt_tokens} (asked {isl}), "
                 f"completion {completion_tokens} (asked {osl})")
    return {"token_mismatch": mismatch, "status": "ok" if error is None else "failed", "error": error}


def achieved_rps(rows: list[dict[str, Any]]) -> float | None:
    """A phase's achieved rate from its request rows (the `rps` column's definition below):
    successful requests / (last successful completion - first send)."""
    ok_end = [r["end_s"] for r in rows if r["status"] == "ok"]
    if not ok_end:
        return None
    window = max(ok_end) - min(r["sent_s"] for r in rows)
    return len(ok_end) / window if window > 0 else None


def _stat_exprs(col: str, src: pl.Expr) -> list[pl.Expr]:
    exprs = [
        src.mean().alias(f"{col}_mean_ms"),
        src.min().alias(f"{col}_min_ms"),
        src.max().alias(f"{col}_max_ms"),
    ]
    exprs += [
        src.quantile(p / 100, interpolation="linear").alias(f"{col}_p{p}_ms") for p in PERCENTILES
    ]
    return exprs


def summarize(requests: pl.DataFrame, client: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (cell, repeat, phase, step) with throughput and latency statistics.

    `client` (tables.CLIENT: the load generator's CPU and wall seconds per phase) adds the
    client self-check columns; without it they are null and the flag rests on send lag alone."""
    if requests.is_empty():
        return empty(PHASES)
    ok = pl.col("status") == "ok"
    window = pl.col("end_s").filter(ok).max() - pl.col("sent_s").min()
    aggs = [
        pl.col("target_rps").first(),
        ok.sum().cast(pl.Int64).alias("n_ok"),
        (~ok).sum().cast(pl.Int64).alias("n_failed"),
        ((~ok).sum() / pl.len()).alias("fail_rate"),
        pl.col("token_mismatch").sum().cast(pl.Int64).alias("n_token_mismatch"),
        window.alias("duration_s"),
        (ok.sum() / window).alias("rps"),
        (pl.col("completion_tokens").filter(ok).sum() / window).alias("output_tok_s"),
        pl.col("send_lag_ms").quantile(0.99, interpolation="linear").alias("send_lag_p99_ms"),
        pl.col("send_lag_ms").max().alias("send_lag_max_ms"),
    ]
    for m in ("ttft", "tpot", "e2e"):
        aggs += _stat_exprs(m, pl.col(f"{m}_ms").filter(ok))
    aggs += _stat_exprs("itl", pl.col("itl_ms").filter(ok).explode())
    out = requests.group_by(PHASE_KEYS, maintain_order=True).agg(aggs)
    if client is None or client.is_empty():
        client = empty(CLIENT)
    out = out.join(conform(CLIENT, client), on=PHASE_KEYS, how="left")
    util = pl.col("client_cpu_s") / pl.col("client_wall_s")
    out = out.with_columns(util.alias("client_cpu_util")).with_columns(
        ((pl.col("client_cpu_util") >= SATURATED_CPU_UTIL).fill_null(False)
         | (pl.col("send_lag_p99_ms") > SATURATED_LAG_MS).fill_null(False)).alias("client_saturated"))
    return conform(PHASES, out)


def sweep_rates(seq_rps: float, burst_rps: float, k: int) -> list[float]:
    """K rates evenly spaced strictly between the two anchors (endpoints excluded)."""
    lo, hi = sorted((seq_rps, burst_rps))
    if k <= 0 or not hi > lo:
        return []
    return [lo + (hi - lo) * i / (k + 1) for i in range(1, k + 1)]
