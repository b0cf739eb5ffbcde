"""One almanac from many result sets: `almanac merge SRC... --out DB`.

A source is a DuckDB file, a `results/` folder (its cell files are aggregated first) or a folder
written by `almanac publish` (its manifest's checksums are verified first). Every source is
checked before anything is written: it must open, name a known schema version, and be internally
consistent (every phase, request and SLO row belongs to a measurement in its `cells`, with the
same cell_id). A source that fails is refused with a message naming it, and the output is not
touched: the merged database is built beside it and replaces it only when whole. When the first source is
a DuckDB file in exactly today's layout, the output starts as a byte copy of it (its derived
tables dropped), so that only the other sources' rows are decoded and compressed again.

Measurements are the unit (identity.py). A measurement found in several sources with the same
content (its cells row but the invocation-specific `reproduce` and `server_log`, and every row of
its phases, requests and slo) is stored once; the same measurement_id with different content is
an inconsistency between the sources and refused. Different measurements of one cell sit side by
side. The `sources` table says in which input(s) each measurement was found (carried on through
later merges and publish round trips).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from . import identity, reqstore, tables
from .aggregate import check_keys, connect_for_build, ddl, schema_ddl
from .db import scalar
from .files import replacing

#: Columns that describe the invocation that built a database, not the measurement.
NOT_CONTENT = ("reproduce", "server_log")
SOURCES_DDL = "CREATE TABLE sources (measurement_id VARCHAR, source VARCHAR, PRIMARY KEY (measurement_id, source))"


class RefusedInput(Exception):
    """A source that cannot be merged; the message names it and says why."""


@dataclass
class Source:
    name: str  # as the user gave it
    db: Path  # a DuckDB file with the tables (built in a temporary folder for non-DB inputs)
    version: int = 0
    has_sources: bool = False
    #: measurement_id -> its file in `folder` (a database kept in reqstore's layout), else None:
    #: its requests are rows of the database (older versions, published folders)
    request_files: dict[str, str] | None = None

    @property
    def folder(self) -> Path:
        return reqstore.folder_of(self.db)


def _results_cells(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("**/cell.json"))


def _from_published(folder: Path, tmp: Path) -> Path:
    from .publish import verify

    manifest = verify(folder)
    db = tmp / "published.duckdb"
    con = duckdb.connect(str(db))
    try:
        con.execute(f"CREATE TABLE {tables.SCHEMA_TABLE} (table_name VARCHAR, schema_version INTEGER)")
        for name, entry in manifest["tables"].items():
            path = str((folder / entry["file"]).absolute())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
            con.execute(f"INSERT INTO {tables.SCHEMA_TABLE} VALUES (?, ?)", [name, manifest["schema_version"]])
    finally:
        con.close()
    return db


def resolve(src: str, tmp: Path) -> Source:
    """The source as a DuckDB file, refusing what cannot be read."""
    from .aggregate import aggregate

    p = Path(src)
    if not p.exists():
        raise RefusedInput(f"{src}: no such file or folder")
    try:
        if p.is_dir() and (p / "manifest.json").exists():
            return Source(src, _from_published(p, Path(tempfile.mkdtemp(dir=tmp))))
        if p.is_dir():
            cells = _results_cells(p)
            if cells:
                db = Path(tempfile.mkdtemp(dir=tmp)) / "results.duckdb"
                aggregate(cells, db)
                return Source(src, db)
            if (p / "almanac.duckdb").exists():
                return Source(src, p / "almanac.duckdb")
            raise RefusedInput(f"{src}: neither a published almanac (manifest.json), nor a results folder "
                               "(cells/*/cell.json), nor one with almanac.duckdb")
        duckdb.connect(str(p), read_only=True).close()
        return Source(src, p)
    except RefusedInput:
        raise
    except (duckdb.Error, OSError, ValueError, KeyError) as exc:
        raise RefusedInput(f"{src}: unreadable or corrupt ({type(exc).__name__}: {exc})") from exc


#: Tables every result set has had since the first version; newer ones (engine_metrics) may be missing.
CORE_TABLES = ("cells", "phases", "requests", "slo")


def _version(con: duckdb.DuckDBPyConnection, alias: str, name: str) -> int:
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? UNION "
        "SELECT view_name FROM duckdb_views() WHERE database_name = ?", [alias, alias]).fetchall()}
    if not set(CORE_TABLES) <= have:
        raise RefusedInput(f"{name}: not an almanac result set (missing tables: "
                           f"{sorted(set(CORE_TABLES) - have)})")
    if tables.SCHEMA_TABLE not in have:
        return 1  # written before tables named their version
    versions = {r[0] for r in con.execute(f"SELECT DISTINCT schema_version FROM {alias}.{tables.SCHEMA_TABLE}").fetchall()}
    unknown = versions - set(identity.KNOWN_SCHEMA_VERSIONS)
    if unknown or len(versions) != 1:
        raise RefusedInput(f"{name}: schema version {sorted(versions)} is not one this almanac reads "
                           f"(known: {list(identity.KNOWN_SCHEMA_VERSIONS)})")
    return versions.pop()


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _views(con: duckdb.DuckDBPyConnection, alias: str, version: int, source: Source) -> None:
    """Temporary views `{alias}_<table>` in today's columns over the source's tables (a
    version-1 source gets its measurement ids derived from its cells, as aggregate does)."""
    if version == 1:
        rows = con.execute(f"SELECT * FROM {alias}.cells").fetchall()
        cols = [d[0] for d in con.description]  # type: ignore[union-attr]
        ids = [(r["cell_id"], identity.identify(r)["measurement_id"],
                identity.identify(r)["hardware_kind"], identity.identify(r)["run_id"])
               for r in (dict(zip(cols, row, strict=True)) for row in rows)]
        con.execute(f"CREATE OR REPLACE TEMP TABLE {alias}_ids (cell_id VARCHAR, measurement_id VARCHAR, "
                    "hardware_kind VARCHAR, run_id VARCHAR)")
        if ids:
            con.executemany(f"INSERT INTO {alias}_ids VALUES (?, ?, ?, ?)", ids)
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? UNION "
        "SELECT view_name FROM duckdb_views() WHERE database_name = ?", [alias, alias]).fetchall()}
    for name, schema in tables.TABLES.items():
        if name == "requests" and source.request_files is not None:  # its folder, wherever it is
            missing = [f for f in source.request_files.values() if not (source.folder / f).is_file()]
            if missing:
                raise RefusedInput(f"{source.name}: its requests folder {source.folder} is missing "
                                   f"{'' if source.folder.is_dir() else '(altogether) '}"
                                   f"{len(missing)} of its {len(source.request_files)} files; the folder "
                                   "belongs beside the database, under its name (x.duckdb, x.requests/)")
            folder = str(source.folder.resolve())
            sql = reqstore.view_sql(con, folder, f"{alias}.{reqstore.FILES_TABLE}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW {alias}_requests AS {sql}")
            continue
        if name not in present:  # a table added after the source was written: empty there
            nulls = ", ".join(f'NULL::{tables.DUCK_TYPES[t]} AS "{c}"' for c, t in schema.items())
            con.execute(f"CREATE OR REPLACE TEMP VIEW {alias}_{name} AS SELECT {nulls} WHERE false")
            continue
        have = {r[0] for r in con.execute(f"DESCRIBE {alias}.{name}").fetchall()}
        sel = []
        for c, t in schema.items():
            if version == 1 and c in ("measurement_id", "hardware_kind", "run_id") and c not in have:
                sel.append(f"ids.{c}")
            elif c in have:
                sel.append(f't."{c}"')
            elif name == "cells" and c in tables.CELL_COLUMN_DEFAULTS:  # as aggregate writes it
                sel.append(f"{_sql_text(tables.CELL_COLUMN_DEFAULTS[c])}::{tables.DUCK_TYPES[t]} AS \"{c}\"")
            else:
                sel.append(f'NULL::{tables.DUCK_TYPES[t]} AS "{c}"')
        join = f" JOIN {alias}_ids AS ids USING (cell_id)" if version == 1 else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW {alias}_{name} AS SELECT {', '.join(sel)} "
                    f"FROM {alias}.{name} AS t{join}")


def _check(con: duckdb.DuckDBPyConnection, alias: str, name: str) -> None:
    """Internally consistent: ids unique and present, rows belong to a measurement of `cells`
    with the same cell_id."""
    dup = con.execute(f"SELECT measurement_id FROM {alias}_cells GROUP BY ALL HAVING count(*) > 1 "
                      "OR measurement_id IS NULL LIMIT 1").fetchone()
    if dup:
        raise RefusedInput(f"{name}: inconsistent: measurement {dup[0]!r} appears more than once in cells")
    for t in ("phases", "requests", "slo"):
        bad = con.execute(
            f"SELECT t.measurement_id, t.cell_id FROM {alias}_{t} AS t LEFT JOIN {alias}_cells AS c "
            "USING (measurement_id) WHERE c.measurement_id IS NULL OR c.cell_id IS DISTINCT FROM t.cell_id "
            "LIMIT 1").fetchone()
        if bad:
            raise RefusedInput(f"{name}: inconsistent: {t} rows of measurement {bad[0]!r} (cell {bad[1]!r}) "
                               "have no matching row in cells")


def _fingerprints(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """`{alias}_fp`: one content hash per measurement. Only a measurement that is in several
    sources (the `overlap` table) is compared with another, so only its phases, requests and
    slo rows are hashed (its cells row, always): hashing every request row and its ITL list
    was most of a merge's time, for measurements that could not clash."""
    cell_cols = ", ".join(f'"{c}"' for c in tables.CELLS if c not in NOT_CONTENT)
    parts = [f"SELECT measurement_id, hash(struct_pack({cell_cols})) AS h FROM {alias}_cells"]
    overlapping = con.execute("SELECT 1 FROM overlap LIMIT 1").fetchone()
    for t in ("phases", "requests", "slo") if overlapping else ():  # (reading no request file at all)
        parts.append(f"SELECT measurement_id, hash(bit_xor(hash(t)), count(*)) FROM {alias}_{t} AS t "
                     "SEMI JOIN overlap USING (measurement_id) GROUP BY ALL")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {alias}_fp AS SELECT measurement_id, "
                f"bit_xor(h) AS fp FROM ({' UNION ALL '.join(parts)}) GROUP BY ALL")


def _open(con: duckdb.DuckDBPyConnection, stack: contextlib.ExitStack, sources: list[Source]) -> None:
    """Attach and check every source (a refusal comes before any work on the output), and find
    the measurements that more than one of them holds (`overlap`)."""
    for i, s in enumerate(sources):
        stack.enter_context(_attached(con, s.db, f"s{i}", s.name))
        s.version = _version(con, f"s{i}", s.name)
        s.has_sources = bool(con.execute(
            "SELECT 1 FROM duckdb_tables() WHERE database_name = ? AND table_name = 'sources' UNION "
            "SELECT 1 FROM duckdb_views() WHERE database_name = ? AND view_name = 'sources'",
            [f"s{i}", f"s{i}"]).fetchone())
        s.request_files = reqstore.files_of(con, f"s{i}")
        _views(con, f"s{i}", s.version, s)
        _check(con, f"s{i}", s.name)
    ids = " UNION ALL ".join(f"SELECT measurement_id FROM s{i}_cells" for i in range(len(sources)))
    con.execute(f"CREATE TEMP TABLE overlap AS SELECT measurement_id FROM ({ids}) GROUP BY ALL HAVING count(*) > 1")


def _copy_first(source: Source, tmp: Path) -> bool:
    """Copy the first source's file to `tmp` when it can be the output's start (_copyable)."""
    con = duckdb.connect()
    try:
        try:
            con.execute(f"ATTACH '{source.db}' AS src (READ_ONLY)")
        except duckdb.Error:
            return False  # refused, with its message, when opened for the merge
        source.version = _version(con, "src", source.name)
        ok = _copyable(con, "src", source)
    finally:
        con.close()
    if ok:
        shutil.copyfile(source.db, tmp)
    return ok


@contextlib.contextmanager
def _attached(con: duckdb.DuckDBPyConnection, path: Path, alias: str, name: str) -> Iterator[None]:
    try:
        con.execute(f"ATTACH '{path}' AS {alias} (READ_ONLY)")
    except duckdb.Error as exc:
        raise RefusedInput(f"{name}: unreadable or corrupt ({type(exc).__name__}: {exc})") from exc
    try:
        yield
    finally:
        con.execute(f"DETACH {alias}")


#: What the merged database keeps of a copied source beside tables.TABLES (the derived tables
#: the aggregate writes, `curve`, `answers` and `prices`, are not merged: they are dropped).
_KEPT = (tables.SCHEMA_TABLE, "almanac_meta")


def _layout(con: duckdb.DuckDBPyConnection, database: str) -> list[tuple[object, ...]]:
    """The columns (name, type, position) and constraints of tables.TABLES (and of the schema
    and metadata tables) in `database`."""
    names = [*(set(tables.TABLES) - tables.EXTERNAL), *_KEPT, reqstore.FILES_TABLE]
    cols = con.execute("SELECT table_name, column_index, column_name, data_type FROM duckdb_columns() "
                       "WHERE database_name = ? AND table_name IN ? ORDER BY ALL", [database, names]).fetchall()
    cons = con.execute("SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
                       "WHERE database_name = ? AND table_name IN ? ORDER BY ALL", [database, names]).fetchall()
    return [*cols, *cons]


def _copyable(con: duckdb.DuckDBPyConnection, alias: str, source: Source) -> bool:
    """Whether the output can start as a byte copy of this source: a DuckDB file (not a published
    folder's views), of today's schema version, whose tables have exactly the columns, types and
    keys `aggregate.ddl` gives them, with nothing in a write-ahead log beside it. Then its rows
    need not be decoded and compressed again, most of a merge's time (the ITL lists)."""
    if source.version != identity.SCHEMA_VERSION or Path(f"{source.db}.wal").exists():
        return False
    base = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                      [alias]).fetchall()}
    if not {*(set(tables.TABLES) - tables.EXTERNAL), *_KEPT, reqstore.FILES_TABLE} <= base:
        return False
    con.execute("ATTACH ':memory:' AS today")
    try:
        for stmt in [*(ddl(name) for name in tables.TABLES if name not in tables.EXTERNAL), *schema_ddl(),
                     reqstore.FILES_DDL]:
            if stmt.startswith("CREATE TABLE "):
                con.execute(stmt.replace("CREATE TABLE ", "CREATE TABLE today.", 1))
        return _layout(con, alias) == _layout(con, "today")
    finally:
        con.execute("DETACH today")


def _start_from_copy(con: duckdb.DuckDBPyConnection) -> None:
    """The output, a copy of the first source, made what merge's own DDL would make: its tables
    and the schema table kept, every other table and view dropped, its build metadata cleared."""
    for kind, name in con.execute(
            "SELECT 'TABLE', table_name FROM duckdb_tables() WHERE database_name = current_database() UNION ALL "
            "SELECT 'VIEW', view_name FROM duckdb_views() WHERE database_name = current_database() "
            "AND NOT internal").fetchall():
        if name not in tables.TABLES and name not in _KEPT and name != reqstore.FILES_TABLE:
            con.execute(f'DROP {kind} "{name}"')
    con.execute("DELETE FROM almanac_meta")
    con.execute(f"DELETE FROM {tables.SCHEMA_TABLE}")
    con.execute(f"INSERT INTO {tables.SCHEMA_TABLE} SELECT table_name, {identity.SCHEMA_VERSION} "
                f"FROM (VALUES {', '.join(f'({t!r})' for t in tables.TABLES)}) AS t(table_name)")
    con.execute(SOURCES_DDL)


def merge(srcs: list[str], out: Path) -> dict[str, int]:
    """Merge the sources into `out`; returns row counts per table (and `duplicates`: measurements
    found again with the same content). Raises RefusedInput, leaving `out` as it was."""
    if not srcs:
        raise RefusedInput("nothing to merge")
    folder = reqstore.folder_of(out)
    with tempfile.TemporaryDirectory(prefix="almanac-merge-") as td, replacing(out) as tmp:
        sources = [resolve(s, Path(td)) for s in srcs]
        copied = _copy_first(sources[0], tmp)
        staged = reqstore.staging(folder)
        con = connect_for_build(tmp)
        reqstore.set_search_path(con, staged.parent)
        stack = contextlib.ExitStack()
        try:
            if copied:
                _start_from_copy(con)
            else:
                for name in tables.TABLES:
                    if name not in tables.EXTERNAL:
                        con.execute(ddl(name))
                for stmt in [*schema_ddl(), reqstore.FILES_DDL]:
                    con.execute(stmt)
                con.execute(SOURCES_DDL)
            con.execute("CREATE TEMP TABLE seen (measurement_id VARCHAR PRIMARY KEY, fp UBIGINT, source VARCHAR)")
            _open(con, stack, sources)
            duplicates = 0
            con.execute("BEGIN TRANSACTION")
            for i, s in enumerate(sources):
                duplicates += _merge_one(con, i, s, copied and i == 0, staged)
                con.execute("COMMIT")  # a transaction holds its rows in memory; the output is a temp file
                con.execute("BEGIN TRANSACTION")
            reqstore.create_view(con, staged.name)
            check_keys(con)
            counts = {n: scalar(con, f"SELECT count(*) FROM {n}") for n in tables.TABLES}
            reqstore.create_view(con, folder.name, staged)  # what readers see: the folder's final name
            con.execute("INSERT INTO almanac_meta VALUES ('merged_from', ?)", [json.dumps(srcs)])
            con.execute("COMMIT")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                stack.close()
            con.close()
        reqstore.swap_in(staged, folder)
    counts["duplicates"] = duplicates
    return counts


def _merge_one(con: duckdb.DuckDBPyConnection, i: int, s: Source, copied: bool, staged: Path) -> int:
    """Source `s{i}`'s measurements not seen in an earlier source into the output (rows, request
    files); returns how many it held that were (same content) already there."""
    a = f"s{i}"
    _fingerprints(con, a)
    clash = con.execute(
        f"SELECT f.measurement_id, seen.source FROM {a}_fp AS f JOIN seen USING (measurement_id) "
        "WHERE f.fp <> seen.fp LIMIT 1").fetchone()
    if clash:
        raise RefusedInput(
            f"{s.name}: inconsistent with {clash[1]}: measurement {clash[0]!r} is in both with different content")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {a}_new AS SELECT measurement_id, fp FROM {a}_fp "
                "ANTI JOIN seen USING (measurement_id)")
    duplicates = scalar(con, f"SELECT count(*) FROM {a}_fp") - scalar(con, f"SELECT count(*) FROM {a}_new")
    for name in tables.TABLES if not copied else ():  # a copy has its rows
        if name not in tables.EXTERNAL:
            con.execute(f"INSERT INTO {name} SELECT * FROM {a}_{name} SEMI JOIN {a}_new USING (measurement_id)")
    _merge_requests(con, a, s, copied, staged)
    con.execute(f"INSERT INTO seen SELECT measurement_id, fp, ? FROM {a}_new", [s.name])
    con.execute(f"INSERT OR IGNORE INTO sources SELECT measurement_id, ? FROM {a}_fp", [s.name])
    if s.has_sources:  # provenance recorded by an earlier merge travels on
        con.execute(f"INSERT OR IGNORE INTO sources SELECT measurement_id, source FROM {a}.sources")
    return int(duplicates)


def _merge_requests(con: duckdb.DuckDBPyConnection, a: str, s: Source, copied: bool, staged: Path) -> None:
    """The requests of the source's new measurements into the output's folder: its own files
    linked (reqstore.place), or, from a source that keeps them as rows (older versions, published
    folders), written by one pass over them, a file per measurement."""
    new = [r[0] for r in con.execute(f"SELECT measurement_id FROM {a}_new ORDER BY ALL").fetchall()]
    if s.request_files is None:
        _write_request_files(con, a, staged)
    rows = []
    for mid in new:
        dst = staged / reqstore.file_name(mid)
        if s.request_files is not None and mid in s.request_files:
            reqstore.place(s.folder / s.request_files[mid], dst)
        if dst.exists():  # (a measurement without requests, a failed cell, has no file)
            rows.append((dst.name, mid))
    if rows and not copied:
        con.executemany(f"INSERT INTO {reqstore.FILES_TABLE} VALUES (?, ?)", rows)


def _write_request_files(con: duckdb.DuckDBPyConnection, a: str, staged: Path) -> None:
    """`{a}_requests` of the new measurements as reqstore's files in `staged`: one COPY,
    partitioned by the file name each measurement gets (reqstore.file_name, in SQL)."""
    parts = staged.with_name(f"{staged.name}.{a}")
    try:
        con.execute(f"COPY (SELECT r.*, left(sha256(r.measurement_id), {reqstore.NAME_CHARS}) AS part "
                    f"FROM {a}_requests AS r SEMI JOIN {a}_new USING (measurement_id)) "
                    f"TO {_sql_text(str(parts))} (FORMAT parquet, PARTITION_BY (part))")
        for d in parts.glob("part=*"):
            files = sorted(d.glob("*.parquet"))
            dst = staged / f"{d.name.removeprefix('part=')}.parquet"
            if len(files) == 1:
                files[0].rename(dst)
            else:
                listed = ", ".join(_sql_text(str(f)) for f in files)
                con.execute(f"COPY (SELECT * FROM read_parquet([{listed}])) TO {_sql_text(str(dst))} (FORMAT parquet)")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
