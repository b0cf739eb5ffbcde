"""Metric definitions (DESIGN.md / docs/methodology.md), as pure functions.

Per request, from the send time and the arrival times of *token-bearing* SSE events:
  ttft_ms = first token-bearing event - send
  e2e_ms  = last token-bearing event - send
  tpot_ms = (e2e - ttft) / (completion_tokens - 1)      (server-reported completion tokens)
  itl_ms  = gaps between consecutive token-bearing events (raw list per request)
Per phase (and sweep step), over successful requests:
  rps          = n_ok / (last completion - first send)
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

NS_PER_MS = 1_000_000

PERCENTILES = (50, 90, 95, 99)
# The client runs on one event loop: above 90% of a core it has no slack left to read and send
# on time; a p99 send lag above 10 ms means requests left measurably later than the workload
# said (the TTFT error budget of benchmarks/timing_truth.py at concurrency 64 is 10 ms p99).
SATURATED_CPU_UTIL = 0.9
SATURATED_LAG_MS = 10.0
CLIENT_SCHEMA: dict[str, Any] = {
    "cell_id": pl.String, "repeat": pl.Int32, "phase": pl.String, "step": pl.Int32,
    "client_cpu_s": pl.Float64, "client_wall_s": pl.Float64,
}
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")

REQUEST_SCHEMA: dict[str, Any] = {
    "cell_id": pl.String,
    "repeat": pl.Int32,
    "phase": pl.String,
    "step": pl.Int32,
    "target_rps": pl.Float64,
    "request_id": pl.Int64,
    "scheduled_s": pl.Float64,
    "sent_s": pl.Float64,
    "end_s": pl.Float64,
    "send_lag_ms": pl.Float64,
    "ttft_ms": pl.Float64,
    "tpot_ms": pl.Float64,
    "e2e_ms": pl.Float64,
    "itl_ms": pl.List(pl.Float64),
    "n_token_events": pl.Int32,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "requested_isl": pl.Int64,
    "requested_osl": pl.Int64,
    "token_mismatch": pl.Boolean,
    "status": pl.String,
    "error": pl.String,
}


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


def requests_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=REQUEST_SCHEMA)


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


PHASE_KEYS = ["cell_id", "repeat", "phase", "step"]


def summarize(requests: pl.DataFrame, client: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (cell, repeat, phase, step) with throughput and latency statistics.

    `client` (CLIENT_SCHEMA: the load generator's CPU and wall seconds per phase) adds the
    client self-check columns; without it they are null and the flag rests on send lag alone."""
    if requests.is_empty():
        return empty_phases()
    ok = pl.col("status") == "ok"
    window = pl.col("end_s").filter(ok).max() - pl.col("sent_s").min()
    aggs = [
        pl.col("target_rps").first(),
        ok.sum().cast(pl.Int64).alias("n_ok"),
        (~ok).sum().cast(pl.Int64).alias("n_failed"),
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
        client = pl.DataFrame(schema=CLIENT_SCHEMA)
    out = out.join(client.cast(CLIENT_SCHEMA).select(list(CLIENT_SCHEMA)), on=PHASE_KEYS, how="left")
    util = pl.col("client_cpu_s") / pl.col("client_wall_s")
    out = out.with_columns(util.alias("client_cpu_util")).with_columns(
        ((pl.col("client_cpu_util") >= SATURATED_CPU_UTIL).fill_null(False)
         | (pl.col("send_lag_p99_ms") > SATURATED_LAG_MS).fill_null(False)).alias("client_saturated"))
    return out.select(list(PHASE_SCHEMA)).cast(PHASE_SCHEMA)


def _phase_schema() -> dict[str, Any]:
    schema: dict[str, Any] = {
        "cell_id": pl.String,
        "repeat": pl.Int32,
        "phase": pl.String,
        "step": pl.Int32,
        "target_rps": pl.Float64,
        "n_ok": pl.Int64,
        "n_failed": pl.Int64,
        "n_token_mismatch": pl.Int64,
        "duration_s": pl.Float64,
        "rps": pl.Float64,
        "output_tok_s": pl.Float64,
        "send_lag_p99_ms": pl.Float64,
        "send_lag_max_ms": pl.Float64,
        "client_cpu_s": pl.Float64,
        "client_cpu_util": pl.Float64,
        "client_saturated": pl.Boolean,
    }
    for m in LATENCY_METRICS:
        for s in ("mean", "min", "max", *(f"p{p}" for p in PERCENTILES)):
            schema[f"{m}_{s}_ms"] = pl.Float64
    return schema


PHASE_SCHEMA = _phase_schema()


def empty_phases() -> pl.DataFrame:
    return pl.DataFrame(schema=PHASE_SCHEMA)


def sweep_rates(seq_rps: float, burst_rps: float, k: int) -> list[float]:
    """K rates evenly spaced strictly between the two anchors (endpoints excluded)."""
    lo, hi = sorted((seq_rps, burst_rps))
    if k <= 0 or not hi > lo:
        return []
    return [lo + (hi - lo) * i / (k + 1) for i in range(1, k + 1)]
