"""Snakemake shim: rule bench_cell -> llm_almanac.cell.run_cell."""
from pathlib import Path

from llm_almanac import logs
from llm_almanac.cell import run_cell

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
run_cell(
    cell=sm.params.cell,
    engine_cfg=sm.params.engine_cfg,
    model_cfg=sm.params.model_cfg,
    bench=sm.params.bench,
    installed_json=Path(sm.input.installed),
    model_json=Path(sm.input.model),
    out_dir=Path(sm.output.cell).parent,
)
