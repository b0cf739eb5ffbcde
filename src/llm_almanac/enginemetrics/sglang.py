"""SGLang's metric names (served at /metrics with `--enable-metrics`).

From SGLang's collectors (python/sglang/srt/observability/metrics_collector.py upstream:
scheduler gauges `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`;
tokenizer histograms and counters). Not yet checked against a real capture here: the SGLang
branch captures tests/data/metrics/sglang_cpu.txt; until then a name that is absent simply
leaves its column null. TPOT uses the per-token inter-token-latency histogram, which equals
the per-request mean when every request has the same output length (this harness asks for
exactly osl tokens with ignore_eos). Prefix-cache: `cached_tokens_total` of `prompt_tokens_total`.
"""

from . import Names

NAMES = Names(
    engine="sglang",
    histograms={
        "ttft": "sglang:time_to_first_token_seconds",
        "tpot": "sglang:inter_token_latency_seconds",
        "e2e": "sglang:e2e_request_latency_seconds",
        "queue": "sglang:queue_time_seconds",
    },
    counters={
        "prefix_queries": "sglang:prompt_tokens_total",
        "prefix_hits": "sglang:cached_tokens_total",
        "requests": "sglang:num_requests_total",
    },
    gauges={
        "kv_usage": "sglang:token_usage",
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
    },
)
