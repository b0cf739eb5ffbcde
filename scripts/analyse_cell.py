"""Snakemake shim: rule analyse_cell -> llm_almanac.analyse.analyse."""
import polars as pl

from llm_almanac import logs
from llm_almanac.analyse import analyse
from llm_almanac.io import write_parquet

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
a = sm.params.analysis
slo = analyse(pl.read_parquet(sm.input.requests), pl.read_parquet(sm.input.phases),
              a.get("slos"), int(a.get("bootstrap", 200)))
write_parquet(sm.output.slo, slo)
for row in slo.iter_rows(named=True):
    print(f"{row['cell_id']} {row['slo']}: max_rps={row['max_rps']} ({row['basis']})")
