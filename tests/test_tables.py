"""One definition per record: cell.json, the Parquet files and the DuckDB tables agree."""

import json

import polars as pl
import pytest

from llm_almanac import reqstore, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.config import defaults
from llm_almanac.files import write_cell
from llm_almanac.grid import converter_engine, expand_grid, model_needs


def test_a_new_cell_record_has_every_cells_column_but_the_aggregate_ones():
    rec = tables.new_cell_record(cell_id="c", status="ok")
    assert set(rec) == set(tables.CELLS) - tables.CELL_AGGREGATE_ONLY
    assert rec["notes"] == [] and rec["server_env"] == {}
    with pytest.raises(KeyError, match="not in the cells table: \\['no_such_field'\\]"):
        tables.new_cell_record(cell_id="c", no_such_field=1)


def test_cell_json_and_database_hold_the_same_fields(tmp_path):
    rec = tables.new_cell_record(cell_id="m__e__q__8-4", model="m", engine="e", quantization="q", isl=8,
                                 osl=4, status="ok", server_reported_version="0.9", tokenize_check=8,
                                 notes=["n"], bench={"seed": 0})
    d = tmp_path / "cells" / rec["cell_id"]
    write_cell(d, rec, tables.empty(tables.REQUESTS), tables.empty(tables.PHASES))
    on_disk = json.loads((d / "cell.json").read_text())
    db = tmp_path / "a.duckdb"
    aggregate([d], db, {rec["cell_id"]: "snakemake ..."})
    con = reqstore.connect(db)
    cols = [r[0] for r in con.execute("DESCRIBE cells").fetchall()]
    row = dict(zip(cols, con.execute("SELECT * FROM cells").fetchone()))
    con.close()
    assert set(on_disk) <= set(cols)  # nothing in cell.json is dropped before the database
    assert cols == list(tables.CELLS)
    # fields that were once silently dropped
    assert row["server_reported_version"] == "0.9" and row["tokenize_check"] == 8
    assert json.loads(row["notes"]) == ["n"] and row["reproduce"] == "snakemake ..."
    with pytest.raises(KeyError, match="stray"):
        write_cell(d, {**rec, "stray": 1}, tables.empty(tables.REQUESTS), tables.empty(tables.PHASES))


def test_conform_fills_missing_columns_with_nulls_and_drops_unknown_ones():
    old = pl.DataFrame({"cell_id": ["c"], "phase": ["burst"], "legacy": [1]})
    got = tables.conform(tables.PHASES, old)
    assert got.columns == list(tables.PHASES) and got["rps"].to_list() == [None]


def test_every_table_has_its_key_columns():
    for name, schema in tables.TABLES.items():
        assert set(tables.KEYS[name]) <= set(schema), name


def test_bench_and_analysis_defaults_come_from_the_schema():
    bench = defaults("bench")
    assert bench["sequential_requests"] == 8 and bench["transport"] == "fast" and bench["repeats"] == 1
    analysis = defaults("analysis")
    assert analysis["bootstrap"] == 200 and len(analysis["slos"]) == 4


def test_model_needs_and_converter_engine(default_config):
    cells = expand_grid(default_config)
    assert model_needs("smollm2-135m", default_config, cells) == ["gguf", "hf", "tokenizer"]
    assert converter_engine("smollm2-135m", default_config, cells) == "vllm-cpu"
    only_llama = [c for c in cells if c.engine == "llama-cpp"]
    assert model_needs("smollm2-135m", default_config, only_llama) == ["gguf", "tokenizer"]
    assert converter_engine("smollm2-135m", default_config, only_llama) is None
    hub = {**default_config, "models": {"smollm2-135m": {"source": "hub", "hub": "org/x"}}}
    assert converter_engine("smollm2-135m", hub, cells) is None  # a hub model comes in hf format
