"""SGLang: `python -m sglang.launch_server` on GPUs, and its CPU mode as a test instrument.

`SGLang` (module `sglang`) is the GPU adapter of the Almanac grid. `SGLangStandIn` (module
`sglang-standin`) runs the same real server in SGLang's CPU mode with llm-almanac's stand-in for
the `sgl_kernel` package (llm_almanac.testkit): it exists so the adapter is verified by running,
and its cells are labelled as a test instrument, never as an engine result (docs/engines.md).

Flags as declared in SGLang's `python/sglang/srt/server_args.py` (ServerArgs.add_cli_args):
`--model-path`, `--served-model-name` (one string), `--host`, `--port`, `--tp-size`,
`--quantization`, `--dtype`, `--context-length`, `--disable-radix-cache`. `--tp` only works as an
argparse abbreviation of `--tp-size`, so the full name is used. Health: `/health` (refuses
connections while the model loads, answers 503 while SGLang warms itself up, then 200). Tokenize:
`/tokenize` (alias of `/v1/tokenize`), `{"model", "prompt", "add_special_tokens"}` -> `{"tokens",
"count", "max_model_len"}`. Version: `GET /get_server_info` -> `version`. `/v1/completions` accepts
`ignore_eos` and `min_tokens` (each alone forces the length) and, with
`stream_options.include_usage`, sends usage in a last `choices: []` chunk.
All of this was seen on sglang 0.5.23 running (CPU mode); docs/engines.md has the details.
"""

from __future__ import annotations

from typing import Any

from .base import PythonModuleEngine, ServerSpec, UnsupportedQuantization

# The flags this adapter emits, as SGLang's server_args.py declares them (checked in tests).
DOCUMENTED_FLAGS = {
    "--model-path", "--served-model-name", "--host", "--port", "--tp-size", "--quantization",
    "--dtype", "--context-length", "--disable-radix-cache", "--mem-fraction-static",
    "--trust-remote-code", "--pp-size", "--device", "--sleep-on-idle",
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
            raise UnsupportedQuantization(
                "sglang is set up here for GPUs only (device: cuda): its CPU mode needs SGLang's C++ "
                "CPU kernels, which are not on PyPI. Module sglang-standin runs the CPU mode with a "
                "stand-in for them, as a test instrument only")
        return super().quant_flags(quantization, device)

    def request_extras(self, osl: int) -> dict[str, Any]:
        return {"ignore_eos": True, "min_tokens": osl}

    def tokenize_payload(self, model: str, prompt: str) -> dict[str, Any]:
        return {"model": model, "prompt": prompt, "add_special_tokens": True}


class SGLangStandIn(SGLang):
    """The real SGLang server in its CPU mode, with llm-almanac's stand-in `sgl_kernel`.

    A test instrument: it proves the SGLang adapter (command line, health, /tokenize, usage in
    the stream, exact output length, shutdown of SGLang's scheduler and detokenizer processes)
    by running it, but its numbers are not SGLang's: without SGLang's CPU kernels every layer
    runs in plain PyTorch. Cells say so in `hardware`; configs must set allow_simulator: true.
    """

    name = "sglang-standin"
    simulated = True  # labelled as a test instrument in results, like the simulator
    LABEL = "test instrument: SGLang with stand-in CPU kernels"
    # CPU dtypes only; SGLang's CPU quantized paths (fp8, int4, w8a8) need its C++ kernels
    cpu_quant_table: dict[str, list[str]] = {
        "bf16": ["--dtype", "bfloat16"],
        "fp32": ["--dtype", "float32"],
    }

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        if device != "cpu":
            raise UnsupportedQuantization(
                "sglang-standin runs SGLang's CPU mode only (device: cpu); on GPUs use module sglang")
        if quantization not in self.cpu_quant_table:
            raise UnsupportedQuantization(
                f"sglang-standin serves {sorted(self.cpu_quant_table)} on CPU, not {quantization!r}")
        return list(self.cpu_quant_table[quantization])

    def server_command(self, spec: ServerSpec) -> list[str]:
        cmd = super().server_command(spec)
        at = cmd.index("--port") + 2
        # --sleep-on-idle: an idle scheduler otherwise busy-polls its sockets (~70 % of a core
        # measured here), taking CPU from the load generator that shares the machine; it waits
        # on a zmq poller instead, which wakes on the next request.
        return cmd[:at] + ["--device", "cpu", "--sleep-on-idle"] + cmd[at:]

    def server_env(self, spec: ServerSpec) -> dict[str, str]:
        from ..testkit import SGL_KERNEL_STANDIN_PATH

        # SGLANG_USE_CPU_ENGINE=1 is what makes SGLang take its CPU paths (is_cpu()); the stand-in
        # is found first on the path, in the server and in the processes it spawns.
        return {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": str(SGL_KERNEL_STANDIN_PATH)}
