"""STAND-IN for SGLang's `sgl_kernel`, written in llm-almanac as TEST INSTRUMENTATION.

It is not SGLang's kernel package and holds no code of it. It exists so that the real SGLang
server (`sglang==0.5.23`) can serve in its CPU mode (`SGLANG_USE_CPU_ENGINE=1`, `--device cpu`)
on a machine without SGLang's C++ CPU kernels, which are not on PyPI (the PyPI `sglang-kernel`
wheel is the CUDA build and does not import without a GPU).

Why it can be this small: on a CPU without Intel AMX, SGLang's CPU mode runs every layer in
plain PyTorch (`cpu_has_amx_support()` is false, so norms, activations, rotary embedding and KV
stores take their PyTorch paths, attention falls back to the `torch_native` backend, and the
request-to-token table is written with plain tensor writes). What needs `sgl_kernel` at all are
module-level `from sgl_kernel import ...` statements guarded by `is_cpu()`, whose functions only
speculative decoding and KV-cache moves call. This module provides exactly those names as
placeholders: importing them works, calling one raises NotImplementedError saying what it is.
Running the server under load with every placeholder raising showed that the plain
prefill/decode path calls none of them (including `assign_req_to_token_pool_cpu`, which only
speculative decoding's slot allocation uses); a call would crash SGLang's scheduler, and the
end-to-end test would fail.

Any other name raises AttributeError (ImportError for `from sgl_kernel import X`), naming this
file. No `torch.ops.sgl_kernel` operator is registered, on purpose: SGLang takes its Intel AMX
paths only when such operators exist, so they stay off even on an AMX machine.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.0.0+llm-almanac-standin"
#: True: tells this stand-in from a real sgl_kernel.
STAND_IN = True

_WHAT = "llm-almanac's sgl_kernel stand-in (test instrumentation, not SGLang's kernels)"

#: Names SGLang 0.5.23 imports at start in CPU mode -> what calls them.
IMPORT_ONLY = {
    # sglang/kernels/ops/kvcache/cache_move.py: moving KV entries between slots
    "copy_all_layer_kv_cache_cpu": "KV-cache moves",
    # sglang/srt/mem_cache/allocation.py: slot allocation of speculative decoding
    "assign_req_to_token_pool_cpu": "speculative decoding (slot allocation)",
    # sglang/kernels/ops/speculative/*: EAGLE and tree speculative decoding
    "rotate_input_ids_cpu": "speculative decoding (multi-layer EAGLE)",
    "fill_accept_out_cache_loc_cpu": "speculative decoding (EAGLE)",
    "fill_bonus_tokens_cpu": "speculative decoding (EAGLE)",
    "assign_draft_cache_locs_contiguous_cpu": "speculative decoding (draft cache slots)",
    "assign_extend_cache_locs_cpu": "speculative decoding (draft cache slots)",
    "build_tree_kernel_efficient_cpu": "speculative decoding (draft trees)",
    "verify_tree_greedy_cpu": "speculative decoding (tree verification)",
}


def _placeholder(name: str, used_for: str):
    def call(*_args: Any, **_kwargs: Any) -> None:
        raise NotImplementedError(
            f"sgl_kernel.{name} ({used_for}) is not implemented by {_WHAT}: it serves only SGLang's "
            "plain CPU prefill/decode path, which needs no sgl_kernel function. Run without that "
            "feature, or install SGLang's real CPU kernels (built from SGLang's repository).")

    call.__name__ = call.__qualname__ = name
    return call


for _name, _used_for in IMPORT_ONLY.items():
    globals()[_name] = _placeholder(_name, _used_for)
del _name, _used_for


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"sgl_kernel.{name} is not provided by {_WHAT}; it has only import-only placeholders "
        f"({', '.join(sorted(IMPORT_ONLY))})")
