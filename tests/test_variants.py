"""Engine variants (engines.<e>.variants, a grid entry's `variants:`): named configurations of one
engine, such as speculative decoding, expanded into engine entries `<e>.<variant>` before the grid."""

import copy
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from llm_almanac import reqstore, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.cell import CellInputs, new_record
from llm_almanac.config import load_cells, validate
from llm_almanac.engines import ServerSpec, get_engine
from llm_almanac.files import write_cell
from llm_almanac.grid import ConfigError, expand_grid, expand_variants
from llm_almanac.install import env_id
from llm_almanac.merge import merge
from llm_almanac.publish import publish

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "config" / "grids" / "almanac.yaml"
NGRAM = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}']


def _cfg(variants=("default", "ngram")):
    return {
        "models": {"m": {"source": "hub", "hub": "org/m", "engine_args": {"vllm": ["--model-arg"]},
                         "engine_env": {"vllm": {"M": "1"}}}},
        "engines": {"vllm": {"version": "0.32.0", "args": ["--no-enable-prefix-caching"], "env": {"E": "1"},
                             "variants": {"ngram": {"args": NGRAM, "env": {"V": "2"}},
                                          "eagle": {"args": ["--x"]}}}},
        "grid": [{"models": ["m"], "engines": ["vllm"], "variants": list(variants), "quantizations": ["bf16"],
                  "shapes": [{"isl": 128, "osl": 64}], "engine_args": {"vllm": ["--entry-arg"]}}],
    }


def test_variants_become_engine_entries_with_their_args_and_env_appended():
    cfg = _cfg()
    validate(cfg)
    default, ngram = expand_grid(cfg)
    assert [c.cell_id for c in (default, ngram)] == ["m__vllm__bf16__128-64", "m__vllm.ngram__bf16__128-64"]
    assert (default.engine, default.variant, ngram.engine, ngram.variant) == ("vllm", "default", "vllm.ngram", "ngram")
    # engine args, the variant's, the grid entry's, the model's: what is written for vllm reaches its variants
    assert default.extra_args == ("--no-enable-prefix-caching", "--entry-arg", "--model-arg")
    assert ngram.extra_args == ("--no-enable-prefix-caching", *NGRAM, "--entry-arg", "--model-arg")
    assert dict(default.extra_env) == {"E": "1", "M": "1"}
    assert dict(ngram.extra_env) == {"E": "1", "V": "2", "M": "1"}
    engines = cfg["engines"]
    assert engines["vllm"] == {"version": "0.32.0", "args": ["--no-enable-prefix-caching"], "env": {"E": "1"}}
    assert engines["vllm.ngram"]["module"] == "vllm" and engines["vllm.ngram"]["variant"] == "ngram"
    assert env_id("vllm.ngram", engines["vllm.ngram"]) == env_id("vllm", engines["vllm"])  # one install
    validate(cfg)  # what the expansion made is a valid config, and expanding it again changes nothing
    assert expand_grid(cfg) == [default, ngram]


def test_default_cells_and_engine_entries_are_unchanged_by_variants():
    plain = _cfg(variants=["default"])
    del plain["engines"]["vllm"]["variants"], plain["grid"][0]["variants"]
    with_variants = _cfg(variants=["default"])
    assert expand_grid(with_variants) == expand_grid(plain)
    assert with_variants["engines"]["vllm"] == plain["engines"]["vllm"]
    (cell,) = expand_grid(plain)
    assert "variant" not in cell.to_dict()  # a default cell's job parameters stay what they were
    assert expand_grid(_cfg(variants=["ngram"]))[0].to_dict()["variant"] == "ngram"


def test_a_variant_the_engine_does_not_define_is_named_with_the_defined_ones():
    cfg = _cfg(variants=["default", "eagle3"])
    with pytest.raises(ConfigError, match=r"grid\[0\]: engine 'vllm' has no variant 'eagle3'; its variants: "
                                          r"\['default', 'eagle', 'ngram'\] \(define it under engines.vllm.variants.eagle3\)"):
        load_cells(cfg)
    cfg = _cfg()
    cfg["engines"]["other"] = {"module": "vllm", "version": "1"}
    cfg["grid"][0]["engines"] = ["vllm", "other"]
    with pytest.raises(ConfigError, match=r"engine 'other' has no variant 'ngram'; its variants: \['default'\]"):
        expand_grid(cfg)


@pytest.mark.parametrize("name, match", [
    ("default", "'default' is reserved"),
    ("n.gram", "config.engines.vllm.variants"),  # the schema: no '.' in a variant's name
])
def test_bad_variant_names_are_refused(name, match):
    cfg = _cfg(variants=["default"])
    cfg["engines"]["vllm"]["variants"] = {name: {"args": []}}
    with pytest.raises(ConfigError, match=f"variant name {name!r}"):
        expand_variants(copy.deepcopy(cfg))
    with pytest.raises(ConfigError, match=match):
        load_cells(cfg)


def test_a_variant_may_not_shadow_an_engine_entry():
    cfg = _cfg()
    cfg["engines"]["vllm.ngram"] = {"module": "vllm", "version": "1"}
    with pytest.raises(ConfigError, match=r"engines.vllm.variants.ngram makes engine 'vllm.ngram', which the "
                                          "config already defines"):
        expand_grid(cfg)


def test_exclusions_match_a_variant_by_engine_or_by_variant():
    cfg = _cfg(variants=["default", "ngram", "eagle"])
    cfg["exclude"] = [{"variant": "eagle"}]
    assert [c.engine for c in expand_grid(cfg)] == ["vllm", "vllm.ngram"]
    cfg = _cfg(variants=["default", "ngram", "eagle"])
    cfg["exclude"] = [{"engine": "vllm.ngram"}, {"engine": "vllm", "variant": "default"}]
    assert [c.engine for c in expand_grid(cfg)] == ["vllm.eagle"]
    cfg = _cfg()
    cfg["exclude"] = [{"engine": ["vllm"]}, {"model": "m"}]  # the base engine's name covers its variants
    with pytest.raises(ConfigError, match="no cells"):
        expand_grid(cfg)


def _record(tmp_path, cell):
    ci = CellInputs(cell=cell.to_dict(), engine_cfg={}, model_cfg={}, bench={}, installed={"version": "0.32.0"},
                    model={}, out_dir=tmp_path)
    return {**new_record(ci, tmp_path / "server.log"), "status": "ok", "hardware_kind": "cpu-x", "run_id": "r1"}


def test_the_cells_record_carries_the_variant_in_cell_json_parquet_and_duckdb(tmp_path):
    cells = expand_grid(_cfg())
    dirs = []
    for cell in cells:
        d = tmp_path / "cells" / cell.cell_id
        write_cell(d, _record(tmp_path, cell), tables.empty(tables.REQUESTS), tables.empty(tables.PHASES))
        assert json.loads((d / "cell.json").read_text())["variant"] == cell.variant
        dirs.append(d)
    db = tmp_path / "a.duckdb"
    aggregate(dirs, db)
    con = reqstore.connect(db)
    rows = con.execute("SELECT engine, variant FROM cells ORDER BY engine").fetchall()
    con.close()
    assert rows == [("vllm", "default"), ("vllm.ngram", "ngram")]
    publish(db, tmp_path / "pub", methodology=None)  # the published Parquet tables
    parquet = pl.read_parquet(tmp_path / "pub" / "tables" / "cells.parquet")
    assert parquet.columns == list(tables.CELLS)
    assert sorted(zip(parquet["engine"], parquet["variant"])) == rows


def test_records_and_databases_from_before_variants_read_as_default(tmp_path):
    (cell,) = expand_grid(_cfg(variants=["default"]))
    rec = _record(tmp_path, cell)
    del rec["variant"]  # a cell.json written before the column existed
    d = tmp_path / "cells" / cell.cell_id
    d.mkdir(parents=True)
    write_cell(d, rec, tables.empty(tables.REQUESTS), tables.empty(tables.PHASES))
    db = tmp_path / "old.duckdb"
    aggregate([d], db)
    con = reqstore.connect(db, read_only=False)
    assert con.execute("SELECT variant FROM cells").fetchall() == [("default",)]
    con.execute("ALTER TABLE cells DROP COLUMN variant")  # a database built before the column existed
    con.close()
    out = tmp_path / "merged.duckdb"
    merge([str(db)], out)
    con = reqstore.connect(out)
    assert con.execute("SELECT variant FROM cells").fetchall() == [("default",)]
    con.close()


@pytest.fixture(scope="module")
def almanac():
    config = yaml.safe_load(GRID.read_text())
    return config, load_cells(config)


def test_almanac_variant_cells_carry_their_variants_flags_in_the_server_command(almanac):
    config, cells = almanac
    variant_cells = [c for c in cells if c.variant != "default"]
    assert {c.variant for c in variant_cells} >= {"ngram"}
    assert len(variant_cells) <= 8  # a few cells, not a second grid
    defined = yaml.safe_load(GRID.read_text())["engines"]
    ids = {c.cell_id for c in cells}
    for c in variant_cells:
        base = c.engine.removesuffix(f".{c.variant}")
        flags = defined[base]["variants"][c.variant]["args"]
        ecfg = config["engines"][c.engine]
        spec = ServerSpec(python="/env/bin/python", model_path=f"/models/{c.model}", served_name=c.model,
                          quantization=c.quantization, port=8000, tensor_parallel=max(1, c.n_gpus),
                          max_model_len=config["models"][c.model].get("max_model_len"), device="cuda",
                          extra_args=c.extra_args, workdir="/cells/x")
        cmd = get_engine(ecfg["module"]).server_command(spec)
        at = cmd.index(flags[0])
        assert cmd[at:at + len(flags)] == flags, (c.cell_id, cmd)
        for i in range(1, len(flags), 2):
            if flags[i - 1] == "--speculative-config":
                assert json.loads(flags[i])["num_speculative_tokens"] >= 1
        # its baseline, the default variant of the same cell, is in the grid too
        assert c.cell_id.replace(f"__{c.engine}__", f"__{base}__") in ids
