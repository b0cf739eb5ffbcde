"""Snakemake shim: rule aggregate -> llm_almanac.aggregate.aggregate (then its manifest).

On failure the last good database stays in place: one line names the bad cell file."""
import sys
from pathlib import Path

import duckdb

from llm_almanac import logs
from llm_almanac.aggregate import AggregateError, aggregate, write_manifest

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
dirs = [Path(p).parent for p in sm.input.cells]
db = Path(sm.params.db)
try:
    counts = aggregate(dirs, db, sm.params.reproduce, sm.params.analysis, sm.params.prices)
except (AggregateError, duckdb.Error) as exc:
    kept = f"the last good database {db} is kept as it was" if db.exists() else f"no database at {db} yet"
    sys.exit(f"aggregate failed: {exc}; {kept}; fix or remove that cell's files (rerun the cell) and run again")
write_manifest(Path(sm.output.manifest), db, counts, dirs)
