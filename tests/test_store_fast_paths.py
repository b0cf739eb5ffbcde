"""The store's shortcuts give what the long way gives: the aggregate reading each cell's
curve.parquet (rule analyse_cell's) instead of computing the points, only while it matches the
cell's files; a merge starting from a byte copy of its first source."""

import os

import polars as pl
import pytest
from resultsets import CELLS, result_set, write_cell

from llm_almanac import merge as merge_mod
from llm_almanac import reqstore, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.analyse import analyse_cell_files, curve_inputs, fresh_curve, write_curve


def _curve(db):
    con = reqstore.connect(db)
    try:
        return pl.from_arrow(con.sql("SELECT * FROM curve ORDER BY measurement_id, phase, step").to_arrow_table())
    finally:
        con.close()


def _write_curve(d):
    inputs = curve_inputs(d / "requests.parquet", d / "phases.parquet")
    _, points = analyse_cell_files(str(d / "cell.json"), str(d / "requests.parquet"), str(d / "phases.parquet"))
    write_curve(d / "curve.parquet", points, inputs)


def test_aggregate_reads_fresh_cell_curves_and_computes_stale_ones(tmp_path):
    dirs = [write_cell(tmp_path, cid, "h100-80gb-x1", "r1", seed=i) for i, cid in enumerate(CELLS)]
    db = tmp_path / "almanac.duckdb"
    aggregate(dirs, db)
    computed = _curve(db)
    assert computed.height == 8 and computed["n_ok"].min() > 0

    for d in dirs:
        _write_curve(d)
        assert fresh_curve(d)
    aggregate(dirs, db)
    assert _curve(db).equals(computed)  # the same bits, measurement ids the database's own

    # the file is what is read: a curve.parquet saying otherwise (but naming the same inputs) shows
    f = dirs[0] / "curve.parquet"
    inputs = pl.read_parquet_metadata(f)["almanac_curve_inputs"]
    write_curve(f, pl.read_parquet(f).with_columns(pl.col("rps") * 2), inputs)
    aggregate(dirs, db)
    cid0 = pl.col("cell_id") == CELLS[0]
    assert _curve(db).filter(cid0)["rps"].to_list() == [2 * r for r in computed.filter(cid0)["rps"]]

    # ... until the requests change: then the points are computed again from them
    st = (dirs[0] / "requests.parquet").stat()
    os.utime(dirs[0] / "requests.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not fresh_curve(dirs[0]) and fresh_curve(dirs[1])
    aggregate(dirs, db)
    assert _curve(db).equals(computed)


def test_a_corrupt_curve_file_is_computed_instead(tmp_path):
    dirs = [write_cell(tmp_path, cid, "h100-80gb-x1", "r1", seed=i) for i, cid in enumerate(CELLS)]
    aggregate(dirs, tmp_path / "a.duckdb")
    (dirs[0] / "curve.parquet").write_bytes(b"PAR1 not a parquet file")
    assert not fresh_curve(dirs[0])
    aggregate(dirs, tmp_path / "b.duckdb")
    assert _curve(tmp_path / "b.duckdb").equals(_curve(tmp_path / "a.duckdb"))


def _tables(db):
    con = reqstore.connect(db)
    try:
        names = sorted(r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall())
        rows = {n: sorted(map(repr, con.execute(f"SELECT * EXCLUDE (value) FROM {n}" if n == "almanac_meta"
                                                 else f"SELECT * FROM {n}").fetchall())) for n in names}
        return names, rows
    finally:
        con.close()


@pytest.mark.parametrize("first_merged", [False, True])
def test_a_merge_from_a_copy_of_its_first_source_is_the_merge_from_scratch(tmp_path, monkeypatch, first_merged):
    a = result_set(tmp_path / "a", "h100-80gb-x1", "run1", seed=0)
    b = result_set(tmp_path / "b", "h200-141gb-x1", "run2", seed=10)
    c = result_set(tmp_path / "c", "h100-80gb-x1", "run1", seed=0, cells=CELLS[:1])  # a's first measurement again
    first = a
    if first_merged:  # a merged database (with its `sources` table) as the first source
        first = tmp_path / "ab.duckdb"
        merge_mod.merge([str(a), str(b)], first)
    srcs = [str(first), str(b), str(c)]

    copies = []
    real = merge_mod._copy_first
    monkeypatch.setattr(merge_mod, "_copy_first", lambda s, t: copies.append(real(s, t)) or copies[-1])
    fast = merge_mod.merge(srcs, tmp_path / "fast.duckdb")
    monkeypatch.setattr(merge_mod, "_copy_first", lambda s, t: False)
    slow = merge_mod.merge(srcs, tmp_path / "slow.duckdb")

    assert copies == [True]
    assert fast == slow and fast["duplicates"] >= 1
    names, rows = _tables(tmp_path / "fast.duckdb")
    assert (names, rows) == _tables(tmp_path / "slow.duckdb")
    assert "curve" not in names and set(tables.TABLES) <= set(names)


def test_a_source_of_another_layout_is_not_copied(tmp_path):
    a = result_set(tmp_path / "a", "h100-80gb-x1", "run1", seed=0)
    con = reqstore.connect(a, read_only=False)
    con.execute("ALTER TABLE slo ADD COLUMN extra VARCHAR")
    con.close()
    out = tmp_path / "out.duckdb"
    assert not merge_mod._copy_first(merge_mod.Source(str(a), a), out) and not out.exists()
    merge_mod.merge([str(a)], out)
    con = reqstore.connect(out)
    assert "extra" not in [r[0] for r in con.execute("DESCRIBE slo").fetchall()]
    con.close()
