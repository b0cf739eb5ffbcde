"""What every engine adapter provides. One module per engine implements this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Addresses that keep a server on this machine.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def requested_host(args: list[str] | tuple[str, ...]) -> str | None:
    """The address engine arguments ask the server to listen on (the last one wins, as in every
    engine's parser), or None. Every adapter's server takes `--host`; argparse-based ones
    (SGLang, the simulator) also take a prefix of it such as `--hos`, and vLLM's parser reads
    `_` as `-`, so those count too."""
    host = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        name = name.replace("_", "-")
        if len(name) >= 4 and "--host".startswith(name):
            if eq:
                host = value
            elif i + 1 < len(args):
                host = args[i + 1]
    return host


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


class UnsupportedQuantization(ValueError):
    """An (engine, quantization) pair the engine cannot serve."""


@dataclass(frozen=True)
class ServerSpec:
    """Everything needed to start one engine server for one cell."""

    python: str  # interpreter of the engine's own virtual environment
    model_path: str  # local directory or file the server loads
    served_name: str  # the name clients put in "model"
    quantization: str
    port: int
    host: str = "127.0.0.1"
    tensor_parallel: int = 1
    max_model_len: int | None = None
    device: str = "cuda"
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    binary: str | None = None  # the server executable, for engines that ship one (llama.cpp)
    workdir: str = "."  # the cell's directory, where config_files() are written


class Engine:
    """Base adapter. Subclasses set the class attributes and implement `server_command`."""

    name: str = ""
    #: PyPI distribution installed for this engine (overridable per config entry).
    default_package: str = ""
    #: Model format the server loads: "hf" (a transformers directory) or "gguf" (one file).
    model_format: str = "hf"
    health_path: str = "/health"
    tokenize_path: str | None = None
    version_path: str | None = None
    startup_timeout_s: float = 900.0
    #: False for the simulator, which runs from this package's own environment.
    needs_install: bool = True
    #: True only for test instruments (the simulator; SGLang with stand-in CPU kernels): their
    #: cells say LABEL in `hardware`, and configs must set allow_simulator: true to use them.
    simulated: bool = False
    LABEL: str = ""
    #: False for servers that close keep-alive connections without saying so.
    client_keepalive: bool = True

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        """Flags for a quantization; raises UnsupportedQuantization for an impossible pair."""
        raise NotImplementedError

    def server_command(self, spec: ServerSpec) -> list[str]:
        raise NotImplementedError

    def request_extras(self, osl: int) -> dict[str, Any]:
        """Fields added to every completion request so that exactly `osl` tokens come back."""
        return {"ignore_eos": True}

    def server_env(self, spec: ServerSpec) -> dict[str, str]:
        """Environment variables the engine needs beyond the user's own."""
        return {}

    def tokenize_payload(self, model: str, prompt: str) -> dict[str, Any]:
        """Body of a request to `tokenize_path` (vLLM's shape by default)."""
        return {"model": model, "prompt": prompt}

    def tokenize_count(self, body: dict[str, Any]) -> int | None:
        """Prompt length from the tokenize response."""
        return body.get("count")

    def config_files(self, spec: ServerSpec) -> dict[str, str]:
        """Files (name -> text) the server command refers to, written into spec.workdir."""
        return {}

    def install_env(self) -> dict[str, str]:
        """Extra environment for `pip install` (e.g. to bound a source build's parallelism)."""
        return {}

    def install_envs(self) -> list[dict[str, str]]:
        """The environments to try the install under, in order: the next one when one fails."""
        return [self.install_env()]

    def post_install(self, python: str) -> dict[str, Any]:
        """Fix-ups after pip install; returns facts to record in installed.json."""
        return {}


class PythonModuleEngine(Engine):
    """An engine started as `python -m MODULE` (vLLM, SGLang) whose quantizations map to flags
    through a table; subclasses name the module, the flags and the table."""

    entry_module: str = ""
    model_flag = "--model"
    tp_flag = "--tensor-parallel-size"
    max_len_flag = "--max-model-len"
    quant_table: dict[str, list[str]] = {}

    def quant_flags(self, quantization: str, device: str) -> list[str]:
        if quantization not in self.quant_table:
            raise UnsupportedQuantization(
                f"{self.name} does not know quantization {quantization!r}; "
                f"supported: {sorted(self.quant_table)}"
            )
        return list(self.quant_table[quantization])

    def server_command(self, spec: ServerSpec) -> list[str]:
        cmd = [
            spec.python, "-m", self.entry_module,
            self.model_flag, spec.model_path,
            "--served-model-name", spec.served_name,
            "--host", spec.host,
            "--port", str(spec.port),
        ]
        cmd += self.quant_flags(spec.quantization, spec.device)
        if spec.tensor_parallel > 1:
            cmd += [self.tp_flag, str(spec.tensor_parallel)]
        if spec.max_model_len:
            cmd += [self.max_len_flag, str(spec.max_model_len)]
        return cmd + list(spec.extra_args)
