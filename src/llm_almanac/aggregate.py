"""Build results/almanac.duckdb from the cell files.

The database is rebuilt from scratch every time (into a temporary file that replaces the old
one at the end), so it is idempotent: no duplicate rows, and a reader never sees a half-built
file. Failed cells are rows in `cells` with their error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import duckdb
import polars as pl

from . import answers, metrics
from .analyse import DEFAULT_SLOS, SLO_SCHEMA

log = logging.getLogger(__name__)

CELLS_SCHEMA: dict[str, pl.DataType] = {
    "cell_id": pl.String,
    "model": pl.String,
    "engine": pl.String,
    "engine_version": pl.String,
    "quantization": pl.String,
    "isl": pl.Int64,
    "osl": pl.Int64,
    "status": pl.String,
    "error": pl.String,
    "hardware": pl.String,
    "n_gpus": pl.Int64,
    "startup_s": pl.Float64,
    "started_at": pl.String,
    "finished_at": pl.String,
    "reproduce": pl.String,
    "server_command": pl.String,
    "server_env": pl.String,
    "model_origin": pl.String,
    "notes": pl.String,
    "bench": pl.String,
    "python_version": pl.String,
    "llm_almanac_version": pl.String,
    "engine_packages": pl.String,
    "host": pl.String,
    "slurm_job_id": pl.String,
    "cuda_visible_devices": pl.String,
}

DDL = {
    "cells": "PRIMARY KEY (cell_id)",
    "phases": "PRIMARY KEY (cell_id, repeat, phase, step)",
    "requests": "PRIMARY KEY (cell_id, repeat, phase, request_id)",
    "slo": "PRIMARY KEY (cell_id, slo)",
}


def _cell_row(info: dict) -> dict:
    row = {k: info.get(k) for k in CELLS_SCHEMA}
    for k, empty in (("server_env", {}), ("notes", []), ("bench", {}), ("engine_packages", [])):
        row[k] = json.dumps(info.get(k) or empty, sort_keys=True)
    return row


def aggregate(cell_dirs: list[Path], db_path: Path, reproduce: dict[str, str] | None = None,
              analysis: dict | None = None, prices: dict | None = None) -> dict[str, int]:
    """`analysis` (its `slos`) and `prices` are the config's sections: they decide the `answers`
    table (answers.write_tables)."""
    infos = [json.loads((d / "cell.json").read_text()) for d in cell_dirs]
    for info in infos:
        info["reproduce"] = (reproduce or {}).get(info["cell_id"], info.get("reproduce"))
    cells = pl.DataFrame([_cell_row(i) for i in infos], schema=CELLS_SCHEMA)
    # cells measured by an older version lack newer columns (e.g. the client self-check): null
    phases = pl.concat(
        [metrics.empty_phases(), *(pl.read_parquet(d / "phases.parquet") for d in cell_dirs)],
        how="diagonal_relaxed",
    ).select(list(metrics.PHASE_SCHEMA)).cast(metrics.PHASE_SCHEMA)
    requests = pl.concat(
        [pl.read_parquet(d / "requests.parquet") for d in cell_dirs]
        or [metrics.requests_frame([])],
        how="vertical_relaxed",
    )
    slo = pl.concat(
        [pl.read_parquet(d / "slo.parquet") for d in cell_dirs if (d / "slo.parquet").exists()]
        or [pl.DataFrame(schema=SLO_SCHEMA)],
        how="vertical_relaxed",
    ).cast(SLO_SCHEMA)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        tables = (("cells", cells), ("phases", phases), ("requests", requests), ("slo", slo))
        for name, df in tables:
            con.register(f"{name}_df", df.to_arrow())
            # Create with the key constraint, then insert: a duplicate row fails loudly.
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_df LIMIT 0")
            cols = ", ".join(f'"{c}" {t}' for c, t in con.execute(
                f"SELECT column_name, data_type FROM information_schema.columns "
                f"WHERE table_name = '{name}' ORDER BY ordinal_position").fetchall())
            con.execute(f"DROP TABLE {name}")
            con.execute(f"CREATE TABLE {name} ({cols}, {DDL[name]})")
            con.execute(f"INSERT INTO {name} SELECT * FROM {name}_df")
            con.unregister(f"{name}_df")
        answers.write_tables(con, cells, requests, phases, (analysis or {}).get("slos") or DEFAULT_SLOS, prices)
        counts = {n: con.execute(f"SELECT count(*) FROM {n}").fetchone()[0]
                  for n, _ in tables}
    finally:
        con.close()
    os.replace(tmp, db_path)
    log.info("wrote %s: %s", db_path, counts)
    return counts
