"""The simulator as a pseudo-engine, for fault and pipeline tests only.

It runs `llm_almanac.sim` (an OpenAI-compatible streaming server with known behaviour and fault
modes) through the same cell code path as a real engine. It is never a benchmark result: the
config must say `allow_simulator: true` to use it, and its cells are labelled as simulated in
`engine_version` and `hardware`.
"""

from __future__ import annotations

from .base import Engine, ServerSpec


class Simulator(Engine):
    name = "sim"
    default_package = ""
    model_format = "tokenizer"  # the simulator only needs the tokenizer to count prompt tokens
    needs_install = False
    simulated = True
    health_path = "/health"
    tokenize_path = None
    version_path = None
    startup_timeout_s = 60.0
    LABEL = "SIMULATOR (test instrument, not an engine)"

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        return []

    def server_command(self, spec: ServerSpec) -> list[str]:
        return [spec.python, "-m", "llm_almanac.sim", "--host", spec.host, "--port", str(spec.port),
                "--tokenizer", spec.model_path, *spec.extra_args]

    def request_extras(self, osl: int) -> dict:
        return {"ignore_eos": True}
