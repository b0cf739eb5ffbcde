"""Snakemake shim: rule analyse_cell -> llm_almanac.analyse.analyse_cell."""
from llm_almanac import logs
from llm_almanac.analyse import analyse_cell
from llm_almanac.files import write_parquet

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
slo = analyse_cell(sm.input.cell, sm.input.requests, sm.input.phases, sm.params.analysis)
write_parquet(sm.output.slo, slo)
for row in slo.iter_rows(named=True):
    print(f"{row['cell_id']} {row['slo']}: max_rps={row['max_rps']} ({row['basis']})")
