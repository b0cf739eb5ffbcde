"""Snakemake shim: rule analyse_cell -> llm_almanac.analyse.analyse_cell_files: the cell's `slo`
rows, and its curve points for the aggregate (which then need not read every request again)."""
from llm_almanac import logs
from llm_almanac.analyse import analyse_cell_files, curve_inputs, write_curve
from llm_almanac.files import write_parquet

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
inputs = curve_inputs(sm.input.requests, sm.input.phases)
slo, points = analyse_cell_files(sm.input.cell, sm.input.requests, sm.input.phases, sm.params.analysis)
write_parquet(sm.output.slo, slo)
write_curve(sm.output.curve, points, inputs)
for row in slo.iter_rows(named=True):
    print(f"{row['cell_id']} {row['slo']}: max_rps={row['max_rps']} ({row['basis']})")
