"""`almanac publish DIR`: a folder any static host can serve and anyone can download raw.

    DIR/report.html           the report (copied when results/report.html exists)
    DIR/summary.*             the generated summary, when present
    DIR/methodology.md        how the numbers are measured (docs/methodology.md)
    DIR/tables/<table>.parquet every table of the database, rows in key order
    DIR/manifest.json         schema version, row counts, and the sha256 of every file above

The folder is written beside DIR and renamed into place when whole. `almanac merge DIR` reads
it back after checking every checksum (verify), so a damaged download is refused, not merged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__, identity, reqstore, tables
from .db import scalar
from .files import read_json, write_json

MANIFEST = "manifest.json"
METHODOLOGY = Path(__file__).resolve().parents[2] / "docs" / "methodology.md"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write(db: Path, out: Path, extras: list[Path]) -> dict[str, Any]:
    con = reqstore.connect(db)
    try:
        have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        version = (scalar(con, f"SELECT max(schema_version) FROM {tables.SCHEMA_TABLE}")
                   if tables.SCHEMA_TABLE in have else 1)
        if version != identity.SCHEMA_VERSION:
            raise ValueError(f"{db}: schema version {version}; run `almanac merge {db} --out NEW.duckdb` "
                             f"to bring it to version {identity.SCHEMA_VERSION} first")
        (out / "tables").mkdir(parents=True)
        table_info = {}
        for name in [*tables.TABLES, *(["sources"] if "sources" in have else [])]:
            rel = f"tables/{name}.parquet"
            order = ", ".join(tables.KEYS.get(name, ["measurement_id", "source"]))
            con.execute(f"COPY (SELECT * FROM {name} ORDER BY {order}) TO '{out / rel}' (FORMAT parquet)")
            rows = scalar(con, f"SELECT count(*) FROM {name}")
            table_info[name] = {"file": rel, "rows": rows}
    finally:
        con.close()
    for f in extras:
        shutil.copyfile(f, out / f.name)
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"schema_version": version, "llm_almanac_version": __version__,
                "published_at": datetime.now(UTC).isoformat(), "tables": table_info, "files": files}
    write_json(out / MANIFEST, manifest)
    return manifest


def _ours(folder: Path) -> bool:
    """Whether `folder` holds a manifest that `almanac publish` wrote (a web site's own
    manifest.json is not one)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"schema_version", "llm_almanac_version", "tables", "files"} <= set(manifest)


def publish(db: Path, out: Path, report: Path | None = None, summaries: list[Path] | None = None,
            methodology: Path | None = METHODOLOGY) -> dict[str, Any]:
    """Write the published folder at `out` (replacing one there only once the new one is whole).
    An existing `out` is replaced only when it is empty or an earlier publish wrote it (its
    manifest is there): ValueError otherwise, and nothing is touched."""
    if out.exists() and not (out.is_dir() and not out.is_symlink() and (not any(out.iterdir()) or _ours(out))):
        raise ValueError(f"{out} exists and is not a folder that `almanac publish` wrote (no {MANIFEST} of ours in "
                         "it); give a new or empty folder, or one published before")
    if any(p and p.resolve().is_relative_to(out.resolve()) for p in (db, report)):
        raise ValueError(f"{out} holds what is being published ({db}); publish to another folder")
    extras = [p for p in [report, methodology, *(summaries or [])] if p and p.exists()]
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        tmp.mkdir(parents=True)
        manifest = _write(db, tmp, extras)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def verify(folder: Path) -> dict[str, Any]:
    """The folder's manifest, once every file it lists has its checksum and the schema version
    is known; ValueError naming the first thing that is not so."""
    manifest = read_json(folder / MANIFEST)
    if manifest.get("schema_version") not in identity.KNOWN_SCHEMA_VERSIONS:
        raise ValueError(f"schema version {manifest.get('schema_version')!r} is not one this almanac reads "
                         f"(known: {list(identity.KNOWN_SCHEMA_VERSIONS)})")
    for rel, digest in manifest["files"].items():
        f = folder / rel
        if not f.is_file():
            raise ValueError(f"{rel} is listed in the manifest but missing")
        if sha256(f) != digest:
            raise ValueError(f"{rel} does not match its checksum in the manifest (damaged or edited)")
    missing = set(tables.TABLES) - set(manifest["tables"])
    if missing:
        raise ValueError(f"the manifest lacks tables {sorted(missing)}")
    return dict(manifest)
