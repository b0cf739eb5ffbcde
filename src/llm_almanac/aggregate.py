"""Build results/almanac.duckdb from the cell files.

The database is rebuilt from scratch every time into a temporary file that replaces the old
one at the end, so it is idempotent (no duplicate rows) and a reader never sees a half-built
file. Failed cells are rows in `cells` with their error. The tables follow tables.py; DuckDB
reads the per-cell Parquet files itself (columns a file lacks, from an older version, are null).
Every table's rows go in by one statement (`INSERT ... SELECT ... FROM read_parquet([...])`):
DuckDB decodes the files on every core and writes row groups straight to the file, never a row
in Python. The curve points are each cell's curve.parquet, written by rule analyse_cell from the
same files (analyse.fresh_curve says whether it still matches them); only for a cell without a
fresh one (older results, a file changed since) are they computed here, from its requests in
batches of cells, as Arrow. The requests' key (tables.KEY_CHECKED) is checked by one query, not
kept as an index.

The last good database survives any failure: every cell file is checked before anything is
written, a failed build leaves the old file and no temporary one, and the error names the bad
file. (Snakemake deletes a job's declared outputs before running it, so rule aggregate declares
a manifest, `results/aggregate.json`, written after the database, not the database itself.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from . import analyse, answers, identity, reqstore, tables
from . import curve as curve_mod
from .config import defaults
from .db import frame, scalar
from .files import read_json, replacing, write_json

log = logging.getLogger(__name__)


class AggregateError(RuntimeError):
    """A cell file that cannot go into the database; the message names it."""


#: DuckDB's memory for building a database: bounded (it spills to disk beyond it), so that a
#: 10 M-request almanac builds in a few GB; ALMANAC_DUCKDB_MEMORY overrides it.
MEMORY_LIMIT = "3GB"


def connect_for_build(path: Path) -> duckdb.DuckDBPyConnection:
    """A connection that writes a database: bounded memory, insertion order not kept."""
    import os

    con = duckdb.connect(str(path))
    con.execute(f"SET memory_limit = '{os.environ.get('ALMANAC_DUCKDB_MEMORY', MEMORY_LIMIT)}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")  # a minute-long INSERT would draw one into the job's log
    return con


def ddl(name: str) -> str:
    """CREATE TABLE for one of tables.TABLES, with its primary key (a duplicate row fails), but
    for the tables whose key check_keys checks instead (tables.KEY_CHECKED)."""
    schema = tables.TABLES[name]
    cols = ", ".join(f'"{c}" {tables.DUCK_TYPES[t]}' for c, t in schema.items())
    if name in tables.KEY_CHECKED:
        return f"CREATE TABLE {name} ({cols})"
    return f'CREATE TABLE {name} ({cols}, PRIMARY KEY ({", ".join(tables.KEYS[name])}))'


def check_keys(con: duckdb.DuckDBPyConnection) -> None:
    """What the primary key of a KEY_CHECKED table would enforce, as queries: no key column null,
    no key twice (duckdb.ConstraintException, as the index would raise). Rows are grouped by the
    hash of their key (one integer: half the time of grouping by the key's columns at 10 M rows);
    only keys whose hash is found twice, if any, are then compared themselves."""
    for name in tables.KEY_CHECKED:
        keys = ", ".join(tables.KEYS[name])
        nulls = " OR ".join(f"{k} IS NULL" for k in tables.KEYS[name])
        bad = con.execute(f"SELECT {keys}, 1 FROM {name} WHERE {nulls} LIMIT 1").fetchone()
        twice = [r[0] for r in con.execute(
            f"SELECT hash({keys}) AS h FROM {name} GROUP BY h HAVING count(*) > 1").fetchall()]
        if not bad and twice:
            bad = con.execute(f"SELECT {keys}, count(*) FROM {name} WHERE hash({keys}) IN (SELECT unnest(?)) "
                              "GROUP BY ALL HAVING count(*) > 1 LIMIT 1", [twice]).fetchone()
        if bad:
            raise duckdb.ConstraintException(
                f"{name}: duplicate or null key ({keys}) = {bad[:-1]!r} ({bad[-1]} rows)")


def schema_ddl() -> list[str]:
    """The tables that say which layout the database has (one row per table) and how it was
    built (`almanac_meta`: key/value)."""
    return [f"CREATE TABLE {tables.SCHEMA_TABLE} (table_name VARCHAR PRIMARY KEY, schema_version INTEGER)",
            "CREATE TABLE almanac_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
            *(f"INSERT INTO {tables.SCHEMA_TABLE} VALUES ('{t}', {identity.SCHEMA_VERSION})"
              for t in tables.TABLES)]


def _select(con: duckdb.DuckDBPyConnection, name: str, files: list[Path]) -> str:
    """The files' rows in the table's columns: DuckDB reads them itself; each row's
    measurement_id comes from its cell's record (the `ids` view: file name -> measurement_id),
    so files of older versions get one too, and columns a file lacks are null."""
    src = f"read_parquet({[str(f) for f in files]!r}, union_by_name = true, filename = true)"
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = ", ".join(
        "ids.measurement_id" if c == "measurement_id"
        else f'src."{c}"' if c in have else f'NULL::{tables.DUCK_TYPES[t]} AS "{c}"'
        for c, t in tables.TABLES[name].items())
    return f"SELECT {cols} FROM {src} AS src JOIN ids ON src.filename = ids.filename"


@contextlib.contextmanager
def _naming_bad_file(con: duckdb.DuckDBPyConnection, files: list[Path]) -> Iterator[None]:
    """A file DuckDB cannot read: AggregateError naming it (found only on the way out)."""
    try:
        yield
    except (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException):
        for f in files:
            try:
                con.execute(f"SELECT count(*) FROM read_parquet({str(f)!r})").fetchall()
            except duckdb.Error as one:
                raise AggregateError(f"bad cell file {f}: {one}") from None
        raise


def _insert_parquet(con: duckdb.DuckDBPyConnection, name: str, files: list[Path]) -> None:
    if files:
        with _naming_bad_file(con, files):
            con.execute(f"INSERT INTO {name} {_select(con, name, files)}")


#: Request files of cells whose points must be computed here are read this many bytes of Parquet
#: at a time (about 250 k requests with their ITL lists, a few hundred MB in memory).
BATCH_BYTES = 64 * 2**20


def _batches(cell_dirs: list[Path], mids: list[str]) -> Iterator[tuple[list[Path], list[str]]]:
    """(request files, measurement ids) of consecutive cells, about BATCH_BYTES of files each."""
    files: list[Path] = []
    ids: list[str] = []
    size = 0
    for d, mid in zip(cell_dirs, mids, strict=True):
        f = d / "requests.parquet"
        if f.exists():
            files.append(f)
            size += f.stat().st_size
        ids.append(mid)
        if size >= BATCH_BYTES:
            yield files, ids
            files, ids, size = [], [], 0
    if ids:
        yield files, ids


def _computed_points(con: duckdb.DuckDBPyConnection, cell_dirs: list[Path], mids: list[str]) -> list[pl.DataFrame]:
    """curve.points of these cells, from their requests as the database has them read (in
    batches of cells, as Arrow: the request rows are never all in memory at once)."""
    phases = frame(con, "SELECT * FROM phases")
    parts = []
    for files, ids in _batches(cell_dirs, mids):
        if files:
            with _naming_bad_file(con, files):
                requests = pl.from_arrow(con.sql(_select(con, "requests", files)).to_arrow_table())
            assert isinstance(requests, pl.DataFrame)
        else:
            requests = tables.empty(tables.REQUESTS)
        parts.append(curve_mod.points(requests, phases.filter(pl.col("measurement_id").is_in(ids))))
        del requests
    return parts


def _points(con: duckdb.DuckDBPyConnection, cell_dirs: list[Path], mids: list[str]) -> pl.DataFrame:
    """The curve points (curve.points) of every measurement. A cell's own curve.parquet (rule
    analyse_cell computed it from the same files) is read when it is fresh (analyse.fresh_curve):
    computing the points means decoding every request's ITL list in Python, most of a build's
    time; the points of the other cells (older results, a changed file) are computed here."""
    fresh = [analyse.fresh_curve(d) for d in cell_dirs]
    parts = _computed_points(con, [d for d, f in zip(cell_dirs, fresh, strict=True) if not f],
                             [m for m, f in zip(mids, fresh, strict=True) if not f])
    read = {str(d / "curve.parquet"): m for d, m, f in zip(cell_dirs, mids, fresh, strict=True) if f}
    if read:
        try:
            got = pl.read_parquet(list(read), include_file_paths="_file")
        except Exception as exc:  # noqa: BLE001 - polars raises several kinds for a bad file
            raise AggregateError(f"bad cell curve file among {len(read)} ({exc})") from None
        parts.append(got.with_columns(pl.col("_file").replace_strict(read).alias("measurement_id"))
                     .select(list(curve_mod.CURVE_SCHEMA)).cast(pl.Schema(curve_mod.CURVE_SCHEMA)))
    points = pl.concat(parts) if parts else pl.DataFrame(schema=curve_mod.CURVE_SCHEMA)
    return points.sort(["measurement_id", "rps", "phase", "step"], nulls_last=True)


def _place_requests(con: duckdb.DuckDBPyConnection, cell_dirs: list[Path], mids: list[str], staged: Path) -> None:
    """Each cell's requests.parquet into the staging folder (reqstore: linked, not copied) and
    into `request_files`; the view `requests` reads them from there until the build ends."""
    rows = []
    for d, mid in zip(cell_dirs, mids, strict=True):
        f = d / "requests.parquet"
        if f.exists():
            name = reqstore.file_name(mid)
            reqstore.place(f, staged / name)
            rows.append((name, mid))
    if rows:
        con.executemany(f"INSERT INTO {reqstore.FILES_TABLE} VALUES (?, ?)", rows)
    reqstore.set_search_path(con, staged.parent)
    with _naming_bad_file(con, [d / "requests.parquet" for d in cell_dirs if (d / "requests.parquet").exists()]):
        reqstore.create_view(con, staged.name)


def _fingerprint(cell_dirs: list[Path], settings: dict[str, Any]) -> str:
    """What the database is built from: every input file's path, size and mtime, the settings
    (reproduce commands, SLOs, prices) and the schema version. Equal fingerprints: rebuilding
    would write the same."""
    # the tables' columns too: a database built before a column was added is built again
    layout = {name: list(schema) for name, schema in tables.TABLES.items()}
    h = hashlib.sha256(f"{identity.SCHEMA_VERSION}|{json.dumps([settings, layout], sort_keys=True, default=str)}"
                       .encode())
    for d in cell_dirs:
        for fname in ("cell.json", "phases.parquet", "requests.parquet", "slo.parquet", "engine_metrics.parquet",
                      "curve.parquet"):
            f = d / fname
            st = f.stat() if f.exists() else None
            h.update(f"{f}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _built_from(db_path: Path) -> str | None:
    if not db_path.exists():
        return None
    try:
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            row = con.execute("SELECT value FROM almanac_meta WHERE key = 'inputs'").fetchone()
        finally:
            con.close()
    except duckdb.Error:
        return None
    return row[0] if row else None


def counts_of(db_path: Path) -> dict[str, int]:
    con = reqstore.connect(db_path)
    try:
        return {n: scalar(con, f"SELECT count(*) FROM {n}") for n in tables.TABLES}
    finally:
        con.close()


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
                              ("slo.parquet", tables.SLO), ("engine_metrics.parquet", tables.ENGINE_METRICS)):
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


def aggregate(cell_dirs: list[Path], db_path: Path, reproduce: dict[str, str] | None = None,
              analysis: dict[str, Any] | None = None, prices: dict[str, Any] | None = None) -> dict[str, int]:
    """Write every cell's files into one database at db_path; returns the row count per table.
    `analysis` (its `slos`) and `prices` are the config's sections: they decide the `answers`
    table (answers.write_tables). When the database was already built from exactly these files
    and settings, nothing is rewritten. On any failure the old database is left as it was
    (AggregateError names a bad cell file)."""
    slos = (analysis or {}).get("slos") or defaults("analysis")["slos"]
    fingerprint = _fingerprint(cell_dirs, {"reproduce": reproduce, "slos": slos, "prices": prices})
    if _built_from(db_path) == fingerprint and reqstore.folder_of(db_path).is_dir():
        log.info("%s is up to date with its %d cells", db_path, len(cell_dirs))
        return counts_of(db_path)
    rows, ids = [], []
    for d, checked in zip(cell_dirs, check_cell_files(cell_dirs), strict=True):
        record = identity.identify(checked)
        record["reproduce"] = (reproduce or {}).get(record["cell_id"], record.get("reproduce"))
        rows.append(tables.cell_row(record))
        ids += [{"filename": str(d / f), "measurement_id": record["measurement_id"]}
                for f in ("phases.parquet", "requests.parquet", "slo.parquet", "engine_metrics.parquet")]
    cells = tables.frame(tables.CELLS, rows)
    folder = reqstore.folder_of(db_path)
    with replacing(db_path) as tmp:
        staged = reqstore.staging(folder)
        con = connect_for_build(tmp)
        try:
            con.execute("BEGIN TRANSACTION")  # committed per table: the file is renamed only when whole
            for stmt in [*(ddl(name) for name in tables.TABLES if name not in tables.EXTERNAL), *schema_ddl(),
                         reqstore.FILES_DDL]:
                con.execute(stmt)
            con.register("cells_df", cells.to_arrow())
            con.execute("INSERT INTO cells SELECT * FROM cells_df")
            con.register("ids", pl.DataFrame(ids, schema={"filename": pl.String, "measurement_id": pl.String})
                         .to_arrow())
            for name, fname in (("phases", "phases.parquet"), ("slo", "slo.parquet"),
                                ("engine_metrics", "engine_metrics.parquet")):
                _insert_parquet(con, name, [d / fname for d in cell_dirs if (d / fname).exists()])
                con.execute("COMMIT")  # a transaction holds its rows in memory; the file is still a temporary one
                con.execute("BEGIN TRANSACTION")
            _place_requests(con, cell_dirs, cells["measurement_id"].to_list(), staged)
            points = _points(con, cell_dirs, cells["measurement_id"].to_list())
            check_keys(con)
            answers.write_tables(con, cells, points, slos, prices)
            counts = {n: scalar(con, f"SELECT count(*) FROM {n}") for n in tables.TABLES}
            reqstore.create_view(con, folder.name, staged)  # what readers see: the folder's final name
            con.execute("INSERT INTO almanac_meta VALUES ('inputs', ?)", [fingerprint])
            con.execute("COMMIT")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        finally:
            con.close()
            Path(f"{tmp}.wal").unlink(missing_ok=True)
        reqstore.swap_in(staged, folder)
    log.info("wrote %s: %s", db_path, counts)
    return counts


def write_manifest(path: Path, db_path: Path, counts: dict[str, int], cell_dirs: list[Path]) -> None:
    """What the last successful aggregate built (rule aggregate's declared output)."""
    write_json(path, {"database": str(db_path), "built_at": datetime.now(UTC).isoformat(), "rows": counts,
                      "cells": sorted(d.name for d in cell_dirs)})
