"""What one measurement is, and the key that keeps it apart from every other.

A *cell* (`cell_id`) is a point of the grid: model × engine × quantization × shape (× variant).
A *measurement* is one run of a cell on one kind of hardware: (cell, hardware kind, run). Its
`measurement_id` is the primary key of every table, so the same cell measured on an H100 and an
H200, at two engine versions, or twice on one host, lives side by side and nothing collides;
`cell_id` keeps meaning the grid cell, so Snakemake's paths do not change.

`run_id` is new for every run of a cell (a fresh uuid when the cell starts). Records written
before these fields existed get them derived deterministically when the database is built: the
hardware kind from the `hardware` summary, the run id from host and start time, so rebuilding an
old result set gives the same ids every time.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Any

#: The version of the tables' layout (tables.py). 1: keyed by cell_id, no identity columns.
#: 2: measurement_id (cell × hardware kind × run) keys every table; `almanac_schema` names it.
SCHEMA_VERSION = 3
KNOWN_SCHEMA_VERSIONS = (1, 2, 3)

#: What `diff` matches two result sets by: the cell's meaning and the hardware, not versions.
MATCH_KEY = ("model", "engine", "quantization", "isl", "osl", "hardware_kind")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def measurement_id(cell_id: str, hardware_kind: str, run_id: str) -> str:
    """`<cell_id>@<hardware kind>@<run id>`: readable, and unique as long as its parts are."""
    return f"{cell_id}@{hardware_kind}@{run_id}"


def kind_from_summary(summary: str | None) -> str:
    """A hardware kind read back from an older record's `hardware` summary text."""
    if not summary:
        return "unknown"
    m = re.match(r"(\d+)x (.+?)( \(driver.*)?$", summary)
    if m:
        from .hardware import kind_of

        return kind_of([m.group(2)] * int(m.group(1)), [], "", 0)
    m = re.match(r"CPU: (.+) \((\d+) logical cores\)", summary)
    if m:
        from .hardware import kind_of

        return kind_of([], [], m.group(1), int(m.group(2)))
    return re.sub(r"[^a-z0-9]+", "-", summary.lower()).strip("-")[:40] or "unknown"


def identify(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with `hardware_kind`, `run_id` and `measurement_id` set (derived where an
    older record lacks them)."""
    rec = dict(record)
    if not rec.get("hardware_kind"):
        rec["hardware_kind"] = kind_from_summary(rec.get("hardware"))
    if not rec.get("run_id"):
        seed = f"{rec.get('host')}|{rec.get('started_at')}|{rec.get('cell_id')}"
        rec["run_id"] = hashlib.sha256(seed.encode()).hexdigest()[:12]
    if not rec.get("measurement_id"):
        rec["measurement_id"] = measurement_id(rec["cell_id"], rec["hardware_kind"], rec["run_id"])
    return rec
