"""TensorRT-LLM's metric names (`trtllm-serve` serves them at /prometheus/metrics, not /metrics).

Source (no GPU here, so not captured): TensorRT-LLM's own example
examples/serve/prometheus_metrics.py (https://nvidia.github.io/TensorRT-LLM/latest/examples/prometheus_metrics.html:
METRICS_URL ".../prometheus/metrics", prefix "trtllm_") and NVIDIA Dynamo's TensorRT-LLM
metrics page (https://docs.nvidia.com/dynamo/latest/backends/trtllm/prometheus.html), which lists
the five metrics of TensorRT-LLM 1.1.0rc5: request_success_total, e2e_request_latency_seconds,
time_to_first_token_seconds, time_per_output_token_seconds, request_queue_time_seconds. Later
versions add KV-cache gauges (trtllm_kv_cache_utilization, trtllm_kv_cache_hit_rate); the
running/waiting request counts are not documented as Prometheus metrics, so the burst guard
reads "unknown" for this engine until they are. tests/data/metrics/trtllm_docs.txt is built
from these documented names.
"""

from . import Names

NAMES = Names(
    engine="trtllm",
    path="/prometheus/metrics",
    histograms={
        "ttft": "trtllm_time_to_first_token_seconds",
        "tpot": "trtllm_time_per_output_token_seconds",
        "e2e": "trtllm_e2e_request_latency_seconds",
        "queue": "trtllm_request_queue_time_seconds",
    },
    counters={"requests": "trtllm_request_success_total"},
    gauges={"kv_usage": "trtllm_kv_cache_utilization"},
)
