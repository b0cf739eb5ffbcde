"""Snakemake shim: rule aggregate -> llm_almanac.aggregate.aggregate."""
from pathlib import Path

from llm_almanac import logs
from llm_almanac.aggregate import aggregate

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
aggregate([Path(p).parent for p in sm.input.cells], Path(sm.output.db), sm.params.reproduce,
          sm.params.analysis, sm.params.prices)
