"""Where a database keeps its request rows: Parquet files beside it, read by DuckDB as a view.

A 10 M-request almanac is 1.3 G ITL values. Copying them into DuckDB's own storage costs 10-16
CPU s per million requests whatever the column type (DOUBLE[], FLOAT[], INTEGER[], BLOB:
benchmarks/itl_encodings.py, docs/benchmarks.md), more than the whole build may take. So the
`requests` of `almanac.duckdb` are the measurements' own Parquet files, one per measurement, in
the folder `almanac.requests/` beside it: hard links to the cells' requests.parquet when on the
same file system (no byte copied), copies otherwise. The database holds the table
`request_files` (file name -> measurement_id) and the view `requests`, which reads the folder
with the columns of tables.REQUESTS, so every query sees one table as before.

The view names the folder relatively (a moved or downloaded results folder still works), and
DuckDB resolves a relative path against `file_search_path`: `connect` sets it to the database's
folder. Another program opening the file runs `SET file_search_path = '<its folder>'` first, or
starts in that folder (README, "the folder belongs beside the database").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import duckdb

from . import tables

FILES_TABLE = "request_files"
FILES_DDL = f"CREATE TABLE {FILES_TABLE} (file VARCHAR PRIMARY KEY, measurement_id VARCHAR UNIQUE NOT NULL)"


def folder_of(db_path: str | Path) -> Path:
    """`results/almanac.duckdb` -> `results/almanac.requests`."""
    p = Path(db_path)
    return p.with_name(f"{p.stem}.requests")


#: A file's name is this many hex digits of its measurement_id's SHA-256 (merge computes it in SQL too).
NAME_CHARS = 24


def file_name(measurement_id: str) -> str:
    """A measurement's file in the folder (its id hashed: ids hold `@`, `/` is possible)."""
    return hashlib.sha256(measurement_id.encode()).hexdigest()[:NAME_CHARS] + ".parquet"


def connect(db_path: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """The database, with relative paths (its `requests` folder) resolved beside it."""
    con = duckdb.connect(str(db_path), read_only=read_only)
    set_search_path(con, Path(db_path).resolve().parent)
    return con


def set_search_path(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    con.execute("SET file_search_path = '" + str(folder).replace("'", "''") + "'")


def place(src: Path, dst: Path) -> None:
    """dst as a hard link to src, or a copy where a link cannot be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def view_sql(con: duckdb.DuckDBPyConnection, folder: str, files_table: str = FILES_TABLE) -> str:
    """SELECT the requests of every file in `folder` (a path as DuckDB resolves it) in the
    columns of tables.REQUESTS: measurement_id from `files_table`, columns a file lacks (an
    older version's) null; no files: no rows, same columns."""
    nulls = {c: f'NULL::{tables.DUCK_TYPES[t]} AS "{c}"' for c, t in tables.REQUESTS.items()}
    names = [r[0] for r in con.execute(f"SELECT file FROM {files_table} ORDER BY ALL").fetchall()]
    if not names:
        return f"SELECT {', '.join(nulls.values())} WHERE false"
    # the files by name, not a glob: one missing is an error when read, never rows quietly absent
    paths = ", ".join("'" + f"{folder}/{n}".replace("'", "''") + "'" for n in names)
    src = f"read_parquet([{paths}], union_by_name = true, filename = true)"
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = ", ".join("f.measurement_id" if c == "measurement_id" else f'src."{c}"' if c in have else nulls[c]
                     for c in tables.REQUESTS)
    return f"SELECT {cols} FROM {src} AS src JOIN {files_table} AS f ON parse_filename(src.filename) = f.file"


def create_view(con: duckdb.DuckDBPyConnection, folder: str, staged: Path | None = None) -> None:
    """The view `requests` over `folder` (relative to the search path). DuckDB checks a view's
    files when it is created; while the files are still in the staging folder, the view is
    created with the search path pointing at a link named `folder` to it."""
    if staged is None:
        con.execute(f"CREATE OR REPLACE VIEW requests AS {view_sql(con, folder)}")
        return
    bind = staged.with_name(f"{staged.name}.bind")
    bind.mkdir()
    try:
        (bind / folder).symlink_to(staged.resolve(), target_is_directory=True)
        set_search_path(con, bind)
        con.execute(f"CREATE OR REPLACE VIEW requests AS {view_sql(con, folder)}")
    finally:
        set_search_path(con, staged.parent)
        shutil.rmtree(bind, ignore_errors=True)


def repoint(db_path: str | Path) -> None:
    """After a database and its folder were copied or renamed together (`x.duckdb`, `x.requests/`):
    its view reads the folder beside it under its new name."""
    con = connect(db_path, read_only=False)
    try:
        create_view(con, folder_of(db_path).name)
    finally:
        con.close()


def staging(final: Path) -> Path:
    """A new, empty folder beside `final` to fill before swap_in."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, final: Path) -> None:
    """Put the filled folder `tmp` where `final` is (the old one removed after)."""
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def files_of(con: duckdb.DuckDBPyConnection, alias: str) -> dict[str, Any] | None:
    """measurement_id -> file name of an attached database kept in this layout, else None."""
    have = con.execute("SELECT 1 FROM duckdb_tables() WHERE database_name = ? AND table_name = ?",
                       [alias, FILES_TABLE]).fetchone()
    if not have:
        return None
    return dict(con.execute(f"SELECT measurement_id, file FROM {alias}.{FILES_TABLE}").fetchall())
