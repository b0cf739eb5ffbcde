"""The store's shortcuts give what the long way gives: the aggregate reading each cell's
curve.parquet (rule analyse_cell's) instead of computing the points, only while it matches the
cell's files."""

import os

import duckdb
import polars as pl
from resultsets import CELLS, write_cell

from llm_almanac.aggregate import aggregate
from llm_almanac.analyse import analyse_cell_files, curve_inputs, fresh_curve, write_curve


def _curve(db):
    con = duckdb.connect(str(db), read_only=True)
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
