"""Snakemake shim: rule bench_cell -> llm_almanac.cell.run_cell."""
import sys
from pathlib import Path

from llm_almanac import logs
from llm_almanac.cell import run_cell
from llm_almanac.config import GUARD_RAILS

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
bench_cfg = sm.config.get("bench", {})
info = run_cell(
    cell=sm.params.cell,
    engine_cfg=sm.params.engine_cfg,
    model_cfg=sm.params.model_cfg,
    # guard rails (config.GUARD_RAILS) come from the config, not the params: they re-measure nothing
    bench={**sm.params.bench, **{k: bench_cfg[k] for k in GUARD_RAILS if k in bench_cfg}},
    installed_json=Path(sm.input.installed),
    model_json=Path(sm.input.model),
    out_dir=Path(sm.output.cell).parent,
)

# bench.retries: a failed cell fails its job while attempts remain, so Snakemake retries it
# (measured phases are kept and not re-measured); the last attempt records the failure as data.
attempt, retries = int(sm.resources.attempt), int(bench_cfg.get("retries", 0))
if info["status"] == "failed" and attempt <= retries:
    sys.exit(f"cell {info['cell_id']} failed (attempt {attempt} of {retries + 1}); Snakemake retries it")
