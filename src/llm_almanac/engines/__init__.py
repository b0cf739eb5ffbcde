"""Engine registry: config `module:` names map to adapter classes, one module per engine."""

from __future__ import annotations

from .base import Engine, ServerSpec, UnsupportedQuantization
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


def known_engines() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["Engine", "ServerSpec", "UnsupportedQuantization", "get_engine", "known_engines"]
