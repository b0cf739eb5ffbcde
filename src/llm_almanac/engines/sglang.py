"""SGLang: `python -m sglang.launch_server` (GPU only; proven here by command-line tests).

Flags as declared in SGLang's `python/sglang/srt/server_args.py` (ServerArgs.add_cli_args):
`--model-path`, `--served-model-name` (one string), `--host`, `--port`, `--tp-size`,
`--quantization`, `--dtype`, `--context-length`, `--disable-radix-cache`. `--tp` only works as an
argparse abbreviation of `--tp-size`, so the full name is used. Health: `/health` (answers 503
while starting). Tokenize: `/tokenize` (alias of `/v1/tokenize`), `{"model", "prompt",
"add_special_tokens"}` -> `{"tokens", "count"}`. Version: `GET /get_server_info` -> `version`.
`/v1/completions` accepts `ignore_eos` and `min_tokens` (mapped to min_new_tokens) and, with
`stream_options.include_usage`, sends usage in a last `choices: []` chunk.
"""

from __future__ import annotations

from typing import Any

from .base import PythonModuleEngine, UnsupportedQuantization

# The flags this adapter emits, as SGLang's server_args.py declares them (checked in tests).
DOCUMENTED_FLAGS = {
    "--model-path", "--served-model-name", "--host", "--port", "--tp-size", "--quantization",
    "--dtype", "--context-length", "--disable-radix-cache", "--mem-fraction-static",
    "--trust-remote-code", "--pp-size",
}

_QUANT_FLAGS: dict[str, list[str]] = {
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
    "fp8": ["--quantization", "fp8"],
    "awq": ["--quantization", "awq"],
    "gptq": ["--quantization", "gptq"],
    "w4a16": [],  # compressed-tensors checkpoint: SGLang reads the method from its config
    "mxfp4": [],  # gpt-oss ships MXFP4 weights
}


class SGLang(PythonModuleEngine):
    name = "sglang"
    default_package = "sglang"
    model_format = "hf"
    health_path = "/health"
    tokenize_path = "/tokenize"
    version_path = "/get_server_info"
    startup_timeout_s = 1800.0
    entry_module = "sglang.launch_server"
    model_flag = "--model-path"
    tp_flag = "--tp-size"
    max_len_flag = "--context-length"
    quant_table = _QUANT_FLAGS

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        if device == "cpu":
            raise UnsupportedQuantization("sglang is set up here for GPUs only (device: cuda)")
        return super().quant_flags(quantization, device)

    def request_extras(self, osl: int) -> dict[str, Any]:
        return {"ignore_eos": True, "min_tokens": osl}

    def tokenize_payload(self, model: str, prompt: str) -> dict[str, Any]:
        return {"model": model, "prompt": prompt, "add_special_tokens": True}
