"""Snakemake shim: rule bench_cell -> llm_almanac.cell.run_cell."""
import sys
from pathlib import Path

from llm_almanac import logs
from llm_almanac.cell import run_cell

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
info = run_cell(
    cell=sm.params.cell,
    engine_cfg=sm.params.engine_cfg,
    model_cfg=sm.params.model_cfg,
    bench=sm.params.bench,
    installed_json=Path(sm.input.installed),
    model_json=Path(sm.input.model),
    out_dir=Path(sm.output.cell).parent,
)

# bench.retries: a failed cell fails its job while attempts remain, so Snakemake retries it
# (measured phases are kept and not re-measured); the last attempt records the failure as data.
attempt, retries = int(sm.resources.attempt), int(sm.config.get("bench", {}).get("retries", 0))
if info["status"] == "failed" and attempt <= retries:
    sys.exit(f"cell {info['cell_id']} failed (attempt {attempt} of {retries + 1}); Snakemake retries it")
