"""Snakemake shim: rule analyse_cell -> llm_almanac.analyse.analyse."""
import json

import polars as pl

from llm_almanac import logs
from llm_almanac.analyse import analyse
from llm_almanac.files import write_parquet

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
a = sm.params.analysis
ok = json.loads(open(sm.input.cell).read())["status"] == "ok"
# A failed cell may keep some phases, but not a whole curve: no SLO answer is read from it.
req = pl.read_parquet(sm.input.requests)
ph = pl.read_parquet(sm.input.phases)
slo = analyse(req, ph if ok else ph.clear(), a.get("slos"), int(a.get("bootstrap", 200)))
write_parquet(sm.output.slo, slo)
for row in slo.iter_rows(named=True):
    print(f"{row['cell_id']} {row['slo']}: max_rps={row['max_rps']} ({row['basis']})")
