"""TensorRT-LLM: `trtllm-serve MODEL` with the PyTorch backend (GPU only; proven by tests).

Options as declared in TensorRT-LLM's `tensorrt_llm/commands/serve.py` (click command `serve`,
the default of the `trtllm-serve` group): MODEL (positional), `--host`, `--port`, `--backend`
(pytorch | tensorrt | _autodeploy), `--tp_size`, `--max_seq_len`, `--extra_llm_api_options`
(alias `--config`, a YAML file merged into the LLM arguments). Health: `/health`; version:
`/version`; no stable tokenize endpoint. Its OpenAI request models forbid unknown fields
(`max_completion_tokens` on /v1/completions is rejected) and accept `ignore_eos` and
`min_tokens`; with `stream_options` the last chunk before [DONE] carries usage. Some versions
ignored `min_tokens`: every request's completion tokens are checked against OSL regardless.

FP8 follows the recipe `quant_config: {quant_algo: FP8}` in the extra-options YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .base import Engine, ServerSpec, UnsupportedQuantization

DOCUMENTED_FLAGS = {
    "--host", "--port", "--backend", "--tp_size", "--tensor_parallel_size", "--pp_size",
    "--max_seq_len", "--max_num_tokens", "--max_batch_size", "--extra_llm_api_options",
    "--config", "--trust_remote_code", "--free_gpu_memory_fraction", "--ep_size",
}

OPTIONS_FILE = "trtllm_extra_options.yaml"

_QUANT_OPTIONS: dict[str, dict[str, Any]] = {
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
    "fp8": {"quant_config": {"quant_algo": "FP8"}},
    "mxfp4": {},  # gpt-oss ships MXFP4 weights
}


class TensorRTLLM(Engine):
    name = "trtllm"
    default_package = "tensorrt-llm"
    model_format = "hf"
    health_path = "/health"
    tokenize_path = None
    version_path = "/version"
    startup_timeout_s = 3600.0

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        if device == "cpu":
            raise UnsupportedQuantization("tensorrt-llm needs NVIDIA GPUs (device: cuda)")
        if quantization not in _QUANT_OPTIONS:
            raise UnsupportedQuantization(
                f"tensorrt-llm is set up for {sorted(_QUANT_OPTIONS)}, not {quantization!r} "
                "(GGUF files and compressed-tensors w4a16 checkpoints are not its formats)")
        return []

    def extra_options(self, spec: ServerSpec) -> dict[str, Any]:
        self.quant_flags(spec.quantization, spec.device)
        return dict(_QUANT_OPTIONS[spec.quantization])

    def config_files(self, spec: ServerSpec) -> dict[str, str]:
        opts = self.extra_options(spec)
        return {OPTIONS_FILE: yaml.safe_dump(opts, sort_keys=True)} if opts else {}

    def server_command(self, spec: ServerSpec) -> list[str]:
        exe = str(Path(spec.python).with_name("trtllm-serve"))  # the venv's console script
        cmd = [exe, spec.model_path, "--host", spec.host, "--port", str(spec.port), "--backend", "pytorch"]
        if spec.tensor_parallel > 1:
            cmd += ["--tp_size", str(spec.tensor_parallel)]
        if spec.max_model_len:
            cmd += ["--max_seq_len", str(spec.max_model_len)]
        if self.extra_options(spec):
            cmd += ["--extra_llm_api_options", f"{spec.workdir}/{OPTIONS_FILE}"]
        return cmd + list(spec.extra_args)

    def request_extras(self, osl: int) -> dict[str, Any]:
        return {"ignore_eos": True, "min_tokens": osl}
