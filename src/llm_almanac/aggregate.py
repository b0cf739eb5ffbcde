"""Build results/almanac.duckdb from the cell files.

The database is rebuilt from scratch every time into a temporary file that replaces the old
one at the end, so it is idempotent (no duplicate rows) and a reader never sees a half-built
file. Failed cells are rows in `cells` with their error. The tables follow tables.py; DuckDB
reads the per-cell Parquet files itself (columns a file lacks, from an older version, are null),
so request rows never pass through Python.

The last good database survives any failure: every cell file is checked before anything is
written, a failed build leaves the old file and no temporary one, and the error names the bad
file. (Snakemake deletes a job's declared outputs before running it, so rule aggregate declares
a manifest, `results/aggregate.json`, written after the database, not the database itself.)
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from . import tables
from .files import read_json, replacing, write_json

log = logging.getLogger(__name__)


class AggregateError(RuntimeError):
    """A cell file that cannot go into the database; the message names it."""

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
    try:
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        cols = ", ".join(f'"{c}"' if c in have else f'NULL::{_DUCK_TYPES[t]} AS "{c}"'
                         for c, t in tables.TABLES[name].items())
        con.execute(f"INSERT INTO {name} SELECT {cols} FROM {src}")
    except (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException):
        for f in files:  # which file? (only on the way out: one read each)
            try:
                con.execute(f"SELECT count(*) FROM read_parquet({str(f)!r})").fetchall()
            except duckdb.Error as one:
                raise AggregateError(f"bad cell file {f}: {one}") from None
        raise


def check_cell_files(cell_dirs: list[Path]) -> list[dict[str, Any]]:
    """Every cell's record, after checking that each of its files can be read (cell.json whole,
    each Parquet file's footer and columns); AggregateError names the first bad file."""
    records = []
    for d in cell_dirs:
        f = d / "cell.json"
        try:
            record = read_json(f)
            if not isinstance(record, dict) or not record.get("cell_id"):
                raise ValueError("not a cell record (no cell_id)")
        except (OSError, ValueError) as exc:
            raise AggregateError(f"bad cell file {f}: {exc}") from None
        records.append(record)
        for fname, schema in (("requests.parquet", tables.REQUESTS), ("phases.parquet", tables.PHASES),
                              ("slo.parquet", tables.SLO)):
            p = d / fname
            if not p.exists():
                continue
            try:
                cols = pl.read_parquet_schema(p)
            except Exception as exc:  # noqa: BLE001 - polars raises several kinds for a bad file
                raise AggregateError(f"bad cell file {p}: {exc}") from None
            if "cell_id" not in cols or not set(cols) & (set(schema) - {"cell_id"}):
                raise AggregateError(f"bad cell file {p}: not a {fname} of this project (columns {sorted(cols)[:8]})")
    return records


def aggregate(cell_dirs: list[Path], db_path: Path, reproduce: dict[str, str] | None = None) -> dict[str, int]:
    """Write every cell's files into one database at db_path; returns the row count per table.
    On any failure the old database is left as it was (AggregateError names a bad cell file)."""
    rows = []
    for record in check_cell_files(cell_dirs):
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
                                ("slo", "slo.parquet")):
                _insert_parquet(con, name, [d / fname for d in cell_dirs if (d / fname).exists()])
            counts = {n: len(con.table(n)) for n in tables.TABLES}
        finally:
            con.close()
            Path(f"{tmp}.wal").unlink(missing_ok=True)
    log.info("wrote %s: %s", db_path, counts)
    return counts


def write_manifest(path: Path, db_path: Path, counts: dict[str, int], cell_dirs: list[Path]) -> None:
    """What the last successful aggregate built (rule aggregate's declared output)."""
    write_json(path, {"database": str(db_path), "built_at": datetime.now(UTC).isoformat(), "rows": counts,
                      "cells": sorted(d.name for d in cell_dirs)})
