"""Small DuckDB helpers shared by the CLI and the report."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

#: Where the pipeline writes the database and where the CLI looks for it (relative to the
#: workflow's working directory).
DB_PATH = "results/almanac.duckdb"
#: What rule aggregate declares as its output: the database's manifest, written after the
#: database (Snakemake deletes a job's declared outputs before it runs; see aggregate.py).
MANIFEST_PATH = "results/aggregate.json"


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """Run a query and return its whole result as a polars DataFrame."""
    df = pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
    assert isinstance(df, pl.DataFrame)  # a table, never a single column
    return df


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first value of a query's first row (a count, a max)."""
    row = con.execute(sql, params or []).fetchone()
    assert row is not None, f"no row from {sql}"
    return row[0]
