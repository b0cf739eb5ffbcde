"""Files on disk: atomic writes (a reader, or a crash, never sees half a file), and a cell's
own files — `cell.json`, `requests.parquet`, `phases.parquet` — written and read in one place."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from . import tables


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (not yet existing) that replaces `path` when the block
    succeeds and is removed when it fails: the old file stays until the new one is whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: str | Path, df: pl.DataFrame) -> None:
    with replacing(path) as tmp:
        df.write_parquet(tmp)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


CELL_FILES = ("cell.json", "requests.parquet", "phases.parquet")


def write_cell(out_dir: Path, record: dict[str, Any], requests: pl.DataFrame, phases: pl.DataFrame,
               engine_metrics: pl.DataFrame | None = None) -> None:
    """A cell's files, each in its table's columns; `cell.json` last, since it marks the cell
    as done for Snakemake and for `almanac rerun-failed`."""
    unknown = set(record) - set(tables.CELLS)
    if unknown:
        raise KeyError(f"cell.json fields not in the cells table: {sorted(unknown)}")
    mid = pl.lit(record.get("measurement_id"), pl.String).alias("measurement_id")
    write_parquet(out_dir / "requests.parquet", tables.conform(tables.REQUESTS, requests.with_columns(mid)))
    write_parquet(out_dir / "phases.parquet", tables.conform(tables.PHASES, phases.with_columns(mid)))
    if engine_metrics is not None:  # the engine's own /metrics per phase (enginemetrics/)
        write_parquet(out_dir / "engine_metrics.parquet",
                      tables.conform(tables.ENGINE_METRICS, engine_metrics.with_columns(mid)))
    write_json(out_dir / "cell.json", record)
