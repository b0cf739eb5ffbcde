"""Snakemake shim: rule bench_round (bench.interleave) -> llm_almanac.cell.run_round."""
from pathlib import Path

from llm_almanac import logs
from llm_almanac.cell import run_round
from llm_almanac.config import GUARD_RAILS
from llm_almanac.files import write_json

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
bench_cfg = sm.config.get("bench", {})
marker = Path(sm.output[0])
record = run_round(
    cell=sm.params.cell,
    engine_cfg=sm.params.engine_cfg,
    model_cfg=sm.params.model_cfg,
    bench={**sm.params.bench, **{k: bench_cfg[k] for k in GUARD_RAILS if k in bench_cfg}},
    installed_json=Path(sm.input.installed),
    model_json=Path(sm.input.model),
    out_dir=marker.parent.parent,
    repeat=int(sm.wildcards.rep),
)
write_json(marker, record)
