"""One definition per record: the columns of every table, file and row this project writes.

`cell.json`, the Parquet files of a cell and the DuckDB tables are all built from these
definitions, so a field is either in all of them or in none (tests/test_tables.py checks it).
A column added here reaches every surface; a column not here is dropped nowhere by accident,
because writing a record with a key this module does not know is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

PERCENTILES = (50, 90, 95, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "min", "max", *(f"p{p}" for p in PERCENTILES))
#: The values of the `phase` column, in the order a cell runs them.
PHASE_NAMES = ("sequential", "burst", "sweep")

#: The columns that name one measured unit (a phase's step in one repeat of one measurement),
#: leading both the requests and the phases tables.
_UNIT: dict[str, Any] = {
    "measurement_id": pl.String,
    "cell_id": pl.String,
    "repeat": pl.Int32,
    "phase": pl.String,
    "step": pl.Int32,
    "target_rps": pl.Float64,
}

#: One row per request (and per repeat of its phase).
REQUESTS: dict[str, Any] = {
    **_UNIT,
    "request_id": pl.Int64,
    "scheduled_s": pl.Float64,
    "sent_s": pl.Float64,
    "end_s": pl.Float64,
    "send_lag_ms": pl.Float64,
    "ttft_ms": pl.Float64,
    "tpot_ms": pl.Float64,
    "e2e_ms": pl.Float64,
    "itl_ms": pl.List(pl.Float64),
    "n_token_events": pl.Int32,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "requested_isl": pl.Int64,
    "requested_osl": pl.Int64,
    "token_mismatch": pl.Boolean,
    "status": pl.String,
    "error": pl.String,
}

#: The load generator's own CPU and wall time per phase unit (joined into `phases`).
CLIENT: dict[str, Any] = {
    "cell_id": pl.String,
    "repeat": pl.Int32,
    "phase": pl.String,
    "step": pl.Int32,
    "client_cpu_s": pl.Float64,
    "client_wall_s": pl.Float64,
}

PHASE_KEYS = ["cell_id", "repeat", "phase", "step"]

#: The DuckDB type of each column type above (aggregate.ddl, and the NULL columns a file of an
#: older version lacks).
DUCK_TYPES: dict[Any, str] = {
    pl.String: "VARCHAR", pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.Float64: "DOUBLE",
    pl.Boolean: "BOOLEAN", pl.List(pl.Float64): "DOUBLE[]",
}

#: The engine's own Prometheus metrics per phase unit (enginemetrics/): one row per series of
#: a sample the engine's module names. `role` is what it measures (ttft, running, ...);
#: counters and histogram sums/counts carry before/after/delta, gauges their samples (before,
#: about once a second during, after) and their peak.
ENGINE_METRICS: dict[str, Any] = {
    "measurement_id": pl.String,
    "cell_id": pl.String,
    "repeat": pl.Int32,
    "phase": pl.String,
    "step": pl.Int32,
    "engine": pl.String,
    "role": pl.String,
    "metric": pl.String,
    "labels": pl.String,
    "kind": pl.String,
    "before": pl.Float64,
    "after": pl.Float64,
    "delta": pl.Float64,
    "peak": pl.Float64,
    "samples": pl.List(pl.Float64),
}

#: Per phase unit, from ENGINE_METRICS (enginemetrics.phase_values) and the checks on it
#: (trust.py). Null where the engine exports no such metric.
ENGINE_PHASE: dict[str, Any] = {
    "engine_ttft_mean_ms": pl.Float64,
    "engine_tpot_mean_ms": pl.Float64,
    "engine_e2e_mean_ms": pl.Float64,
    "engine_queue_mean_ms": pl.Float64,
    "engine_requests": pl.Float64,
    "engine_prefix_cache_queries": pl.Float64,
    "engine_prefix_cache_hits": pl.Float64,
    "engine_preemptions": pl.Float64,
    "engine_spec_acceptance_rate": pl.Float64,
    "engine_spec_mean_accepted_len": pl.Float64,
    "engine_kv_cache_usage_peak": pl.Float64,
    "engine_running_peak": pl.Float64,
    "engine_waiting_peak": pl.Float64,
    "engine_n_samples": pl.Int64,
    "client_minus_engine_ttft_ms": pl.Float64,
    "client_minus_engine_tpot_ms": pl.Float64,
    "engine_gap_flag": pl.Boolean,
    "burst_expected_concurrency": pl.Int64,
    "burst_capped_by": pl.Int64,
    "burst_guard": pl.String,
    "prefix_cache_guard": pl.String,
    "trust_grade": pl.String,
    "trust_reasons": pl.String,
}


def _phases() -> dict[str, Any]:
    schema: dict[str, Any] = {
        **_UNIT,
        "n_ok": pl.Int64,
        "n_failed": pl.Int64,
        "fail_rate": pl.Float64,  # n_failed / all requests: read beside rps, which counts only ok ones
        "n_token_mismatch": pl.Int64,
        "duration_s": pl.Float64,
        "rps": pl.Float64,
        "output_tok_s": pl.Float64,
        "send_lag_p99_ms": pl.Float64,
        "send_lag_max_ms": pl.Float64,
        "client_cpu_s": pl.Float64,
        "client_cpu_util": pl.Float64,
        "client_saturated": pl.Boolean,
    }
    for m in LATENCY_METRICS:
        for s in STATS:
            schema[f"{m}_{s}_ms"] = pl.Float64
    return {**schema, **ENGINE_PHASE}


#: One row per phase unit: (cell, repeat, phase, sweep step).
PHASES: dict[str, Any] = _phases()

#: One row per cell × SLO.
SLO: dict[str, Any] = {
    "measurement_id": pl.String,
    "cell_id": pl.String,
    "slo": pl.String,
    "metric": pl.String,
    "threshold_ms": pl.Float64,
    "max_rps": pl.Float64,
    "basis": pl.String,
    "ci_low_rps": pl.Float64,
    "ci_high_rps": pl.Float64,
    "n_points": pl.Int64,
    "n_repeats": pl.Int64,
    "repeat_cv": pl.Float64,
    "trust_grade": pl.String,
    "trust_reasons": pl.String,
}

#: One row per cell: `cell.json` holds exactly these keys (structured values as JSON, below).
CELLS: dict[str, Any] = {
    "measurement_id": pl.String,  # identity.py: cell × hardware kind × run; the key of every table
    "cell_id": pl.String,  # the grid cell (model × engine × quantization × shape)
    "model": pl.String,
    "engine": pl.String,  # the engine entry: `<e>.<variant>` for a variant (grid.expand_variants)
    "variant": pl.String,  # the engine's variant (engines.<e>.variants); "default": the entry as configured
    "engine_version": pl.String,
    "server_reported_version": pl.String,
    "quantization": pl.String,
    "isl": pl.Int64,
    "osl": pl.Int64,
    "status": pl.String,
    "error": pl.String,
    "hardware": pl.String,
    "hardware_kind": pl.String,  # hardware.kind(): e.g. h100-80gb-hbm3-x1, cpu-amd-epyc-9654-2c
    "run_id": pl.String,
    "n_gpus": pl.Int64,
    "startup_s": pl.Float64,
    "started_at": pl.String,
    "finished_at": pl.String,
    "reproduce": pl.String,
    "server_command": pl.String,
    "server_env": pl.String,
    "server_log": pl.String,
    "tokenize_check": pl.Int64,
    "model_origin": pl.String,
    "notes": pl.String,
    "bench": pl.String,
    "python_version": pl.String,
    "llm_almanac_version": pl.String,
    "engine_packages": pl.String,
    "host": pl.String,
    "slurm_job_id": pl.String,
    "cuda_visible_devices": pl.String,
}

#: Fields of `cell.json` kept as structures there and as JSON text in the `cells` table.
CELL_JSON_FIELDS: dict[str, Any] = {"server_env": {}, "notes": [], "bench": {}, "engine_packages": []}

#: What a `cells` column holds for a record (or a database) written before the column existed.
CELL_COLUMN_DEFAULTS: dict[str, Any] = {"variant": "default"}

#: Computed when the database is built (how to rerun the cell from *that* invocation).
CELL_AGGREGATE_ONLY = frozenset({"reproduce"})

TABLES: dict[str, dict[str, Any]] = {
    "cells": CELLS, "phases": PHASES, "requests": REQUESTS, "slo": SLO,
    "engine_metrics": ENGINE_METRICS,
}

#: Primary keys of the DuckDB tables: a duplicate row fails loudly. A measurement (identity.py)
#: is the unit: the same cell on other hardware or in another run never collides.
KEYS: dict[str, list[str]] = {
    "cells": ["measurement_id"],
    "phases": ["measurement_id", "repeat", "phase", "step"],
    "requests": ["measurement_id", "repeat", "phase", "request_id"],
    "slo": ["measurement_id", "slo"],
    "engine_metrics": ["measurement_id", "repeat", "phase", "step", "metric", "labels"],
}

#: Tables whose key is not an index but one query after the rows are in (aggregate.check_keys):
#: at the Almanac's size (10 M requests) the index on `requests` cost more than all the rest of
#: the insert, and its memory grew with every row.
KEY_CHECKED = frozenset({"requests"})

#: Tables a database keeps outside its own storage, as a view over Parquet files beside it
#: (reqstore.py): the request rows, 95 % of an almanac's bytes (the ITL lists).
EXTERNAL = frozenset({"requests"})

#: Primary keys of the tables the aggregate derives from these (answers.write_tables): a
#: measurement's curve points and answers, and the price of each price key (cost.py).
DERIVED_KEYS: dict[str, list[str]] = {
    "curve": ["measurement_id", "phase", "step"],
    "answers": ["measurement_id", "slo"],
    "prices": ["price_key"],
}

#: Every database names its layout's version per table (identity.SCHEMA_VERSION), so that a
#: result set written by an older version still merges and an unknown one is refused.
SCHEMA_TABLE = "almanac_schema"
SCHEMA_COLUMNS: dict[str, Any] = {"table_name": pl.String, "schema_version": pl.Int64}


def empty(schema: Mapping[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(schema=dict(schema))


def frame(schema: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows (dicts) as a frame of exactly these columns; an unknown key is an error."""
    rows = list(rows)
    unknown = {k for r in rows for k in r} - set(schema)
    if unknown:
        raise KeyError(f"columns not in the table definition: {sorted(unknown)}")
    return pl.DataFrame(rows, schema=dict(schema))


def conform(schema: Mapping[str, Any], df: pl.DataFrame) -> pl.DataFrame:
    """`df` with the definition's columns in its order and types; columns it lacks (files
    written by an older version) become null, columns the definition lacks are dropped."""
    missing = [pl.lit(None, dtype).alias(c) for c, dtype in schema.items() if c not in df.columns]
    return df.with_columns(missing).select(list(schema)).cast(pl.Schema(dict(schema)))


def new_cell_record(**values: Any) -> dict[str, Any]:
    """A `cell.json` record: every column of `cells` (but those computed at aggregate time),
    None where not given. Unknown keys are refused, so nothing is written that the database
    would drop."""
    unknown = set(values) - set(CELLS)
    if unknown:
        raise KeyError(f"cell record fields not in the cells table: {sorted(unknown)}")
    rec = {k: None for k in CELLS if k not in CELL_AGGREGATE_ONLY}
    for k, empty_value in CELL_JSON_FIELDS.items():
        rec[k] = type(empty_value)()
    rec.update(values)
    return rec


def cell_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A `cells` row from a `cell.json` record (structured fields as sorted JSON text)."""
    row = {k: record.get(k) for k in CELLS}
    for k, value in CELL_COLUMN_DEFAULTS.items():
        if row[k] is None:
            row[k] = value
    for k, empty_value in CELL_JSON_FIELDS.items():
        row[k] = json.dumps(record.get(k) or empty_value, sort_keys=True)
    return row
