"""Build results/almanac.duckdb from the cell files.

The database is rebuilt from scratch every time into a temporary file that replaces the old
one at the end, so it is idempotent (no duplicate rows) and a reader never sees a half-built
file. Failed cells are rows in `cells` with their error. The tables follow tables.py; DuckDB
reads the per-cell Parquet files itself (columns a file lacks, from an older version, are null),
so request rows never pass through Python.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from . import answers, tables
from .config import defaults
from .db import frame
from .files import read_json, replacing

log = logging.getLogger(__name__)

_DUCK_TYPES: dict[Any, str] = {
    pl.String: "VARCHAR", pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.Float64: "DOUBLE",
    pl.Boolean: "BOOLEAN", pl.List(pl.Float64): "DOUBLE[]",
}


def ddl(name: str) -> str:
    """CREATE TABLE for one of tables.TABLES, with its primary key (a duplicate row fails)."""
    schema = tables.TABLES[name]
    cols = ", ".join(f'"{c}" {_DUCK_TYPES[t]}' for c, t in schema.items())
    return f'CREATE TABLE {name} ({cols}, PRIMARY KEY ({", ".join(tables.KEYS[name])}))'


def _insert_parquet(con: duckdb.DuckDBPyConnection, name: str, files: list[Path]) -> None:
    if not files:
        return
    src = f"read_parquet({[str(f) for f in files]!r}, union_by_name = true)"
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = ", ".join(f'"{c}"' if c in have else f'NULL::{_DUCK_TYPES[t]} AS "{c}"'
                     for c, t in tables.TABLES[name].items())
    con.execute(f"INSERT INTO {name} SELECT {cols} FROM {src}")


def aggregate(cell_dirs: list[Path], db_path: Path, reproduce: dict[str, str] | None = None,
              analysis: dict[str, Any] | None = None, prices: dict[str, Any] | None = None) -> dict[str, int]:
    """Write every cell's files into one database at db_path; returns the row count per table.
    `analysis` (its `slos`) and `prices` are the config's sections: they decide the `answers`
    table (answers.write_tables)."""
    rows = []
    for d in cell_dirs:
        record = read_json(d / "cell.json")
        record["reproduce"] = (reproduce or {}).get(record["cell_id"], record.get("reproduce"))
        rows.append(tables.cell_row(record))
    cells = tables.frame(tables.CELLS, rows)
    with replacing(db_path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name in tables.TABLES:
                con.execute(ddl(name))
            con.register("cells_df", cells.to_arrow())
            con.execute("INSERT INTO cells SELECT * FROM cells_df")
            for name, fname in (("phases", "phases.parquet"), ("requests", "requests.parquet"),
                                ("slo", "slo.parquet"), ("engine_metrics", "engine_metrics.parquet")):
                _insert_parquet(con, name, [d / fname for d in cell_dirs if (d / fname).exists()])
            slos = (analysis or {}).get("slos") or defaults("analysis")["slos"]
            answers.write_tables(con, cells, frame(con, "SELECT * FROM requests"),
                                 frame(con, "SELECT * FROM phases"), slos, prices)
            counts = {n: len(con.table(n)) for n in tables.TABLES}
        finally:
            con.close()
    log.info("wrote %s: %s", db_path, counts)
    return counts
