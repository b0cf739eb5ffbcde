"""Identity: hardware kinds, measurement ids, older result sets, and the no-op aggregate."""

from resultsets import result_set

from llm_almanac import identity, reqstore
from llm_almanac.aggregate import aggregate
from llm_almanac.hardware import kind_of
from llm_almanac.merge import merge


def test_hardware_kinds_are_short_normalized_keys():
    assert kind_of(["NVIDIA H100 80GB HBM3"], ["81559 MiB"], "", 0) == "h100-80gb-hbm3-x1"
    assert kind_of(["NVIDIA A10G"] * 4, ["23028 MiB"] * 4, "", 0) == "a10g-22gb-x4"
    assert kind_of([], [], "AMD EPYC 9654 96-Core Processor", 2) == "cpu-amd-epyc-9654-96-2c"
    assert kind_of([], [], "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 8) == "cpu-intel-xeon-platinum-8375c-8c"


def test_a_generic_cpu_name_is_told_apart_by_family_model_and_isa():
    """Two virtual machines that both say "AMD EPYC" (this project's: an AVX2-only one and a
    family-26 one with AVX-512 and BF16) are two hardware kinds, never one."""
    from llm_almanac.hardware import cpu_detail

    old = {"model name": "AMD EPYC", "cpu family": "23", "model": "49", "flags": "fpu sse2 avx avx2 fma"}
    new = {"model name": "AMD EPYC", "cpu family": "26", "model": "2", "flags": "avx2 avx512f avx512_bf16"}
    sapphire = {"model name": "Intel Xeon Processor (SapphireRapids)", "cpu family": "6", "model": "143",
                "flags": "avx2 avx512f avx512_bf16 amx_tile amx_bf16"}
    kinds = [kind_of([], [], i["model name"], 2, cpu_detail(i)) for i in (old, new, sapphire)]
    assert kinds == ["cpu-amd-epyc-f23m49-avx2-2c", "cpu-amd-epyc-f26m2-avx512bf16-2c",
                     "cpu-intel-xeon-sapphirerapids-f6m143-amx-2c"]
    named = {"model name": "AMD EPYC 9654 96-Core Processor", "cpu family": "25", "model": "17", "flags": "avx512f"}
    assert cpu_detail(named) == ""  # the name says it already: cpu-amd-epyc-9654-96-2c, as before


def test_older_records_get_a_stable_derived_identity():
    old = {"cell_id": "c", "hardware": "CPU: AMD EPYC 9654 96-Core Processor (2 logical cores)",
           "host": "h", "started_at": "2026-01-01T00:00:00"}
    a, b = identity.identify(old), identity.identify(dict(old))
    assert a["hardware_kind"] == "cpu-amd-epyc-9654-96-2c" and a == b
    assert a["measurement_id"] == f"c@cpu-amd-epyc-9654-96-2c@{a['run_id']}"
    assert identity.identify({**old, "started_at": "later"})["measurement_id"] != a["measurement_id"]
    assert identity.kind_from_summary("2x NVIDIA H100 80GB HBM3 (driver 550.1)") == "h100-80gb-hbm3-x2"


def test_aggregate_again_on_unchanged_inputs_is_a_no_op(tmp_path):
    db = result_set(tmp_path / "r")
    dirs = sorted((tmp_path / "r" / "cells").iterdir())
    before = db.stat().st_mtime_ns
    assert aggregate(dirs, db)["requests"] == 960 and db.stat().st_mtime_ns == before
    (dirs[0] / "cell.json").write_text((dirs[0] / "cell.json").read_text())  # touched: rebuilt
    aggregate(dirs, db)
    assert db.stat().st_mtime_ns != before


def test_a_version_1_result_set_still_merges(tmp_path):
    v2 = result_set(tmp_path / "r", run="r9")
    v1 = tmp_path / "v1.duckdb"
    con = reqstore.connect(v1, read_only=False)
    con.execute(f"ATTACH '{v2}' AS s (READ_ONLY)")
    reqstore.set_search_path(con, v2.parent)  # its requests view reads the folder beside it
    for t in ("cells", "phases", "requests", "slo"):
        con.execute(f"CREATE TABLE {t} AS SELECT * EXCLUDE (measurement_id"
                    f"{', hardware_kind, run_id' if t == 'cells' else ''}) FROM s.{t}")
    con.close()
    out = tmp_path / "m.duckdb"
    counts = merge([str(v1)], out)
    assert counts["cells"] == 2 and counts["requests"] == 960
    con = reqstore.connect(out)
    ids = con.execute("SELECT DISTINCT measurement_id FROM requests ORDER BY 1").fetchall()
    kinds = con.execute("SELECT DISTINCT hardware_kind FROM cells").fetchall()
    con.close()
    assert len(ids) == 2 and all("@" in i[0] for i in ids) and kinds == [("h100-80gb-x1-x1",)]  # derived from "1x h100-80gb-x1"
