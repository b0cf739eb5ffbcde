"""Small DuckDB helpers shared by the CLI and the report."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """Run a query and return its whole result as a polars DataFrame."""
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
