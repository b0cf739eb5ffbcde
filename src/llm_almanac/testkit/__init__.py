"""Test instrumentation: code that exists only so the tests can run real engines on a CPU.

Nothing here is an engine or part of a measurement. Cells that run with it are labelled as test
instruments in results (see `engines.sglang.SGLangStandIn`).

- `sgl_kernel_standin/`: a stand-in for SGLang's `sgl_kernel` package on a CPU without Intel
  AMX, put on the SGLang server's PYTHONPATH by the `sglang-standin` engine module.
"""

from pathlib import Path

#: The directory to put on PYTHONPATH so that `import sgl_kernel` finds the stand-in.
SGL_KERNEL_STANDIN_PATH = Path(__file__).resolve().parent / "sgl_kernel_standin"
