"""Engine registry: config `module:` names map to adapter classes, one module per engine."""

from __future__ import annotations

from typing import Any

from .base import LOOPBACK, Engine, ServerSpec, UnsupportedQuantization, connect_host, requested_host
from .llamacpp import LlamaCpp
from .sglang import SGLang, SGLangStandIn
from .sim import Simulator
from .trtllm import TensorRTLLM
from .vllm import VLLM

_REGISTRY: dict[str, type[Engine]] = {
    "vllm": VLLM, "sglang": SGLang, "trtllm": TensorRTLLM, "llamacpp": LlamaCpp, "sim": Simulator,
    "sglang-standin": SGLangStandIn,  # test instrument: SGLang's CPU mode with a stand-in kernel package
}


def get_engine(module: str) -> Engine:
    try:
        return _REGISTRY[module]()
    except KeyError:
        raise ValueError(
            f"unknown engine module {module!r}; known: {sorted(_REGISTRY)}"
        ) from None


def adapter_for(name: str, engine_cfg: dict[str, Any]) -> Engine:
    """The adapter of a config's engine entry: its `module:`, or the entry's own name."""
    return get_engine(engine_cfg.get("module", name))


def known_engines() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["LOOPBACK", "Engine", "ServerSpec", "UnsupportedQuantization", "adapter_for", "connect_host", "get_engine",
           "known_engines", "requested_host"]
