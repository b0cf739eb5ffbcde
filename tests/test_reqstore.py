"""A database's requests are the measurements' Parquet files beside it (reqstore.py): linked, not
copied; readable from anywhere through the view; carried by merge from either layout; a missing
folder is named, not a traceback; a failed build keeps the old folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from resultsets import CELLS, result_set

from llm_almanac import identity, reqstore
from llm_almanac.aggregate import AggregateError, aggregate
from llm_almanac.merge import RefusedInput, merge


def _rows(db, sql="SELECT * FROM requests ORDER BY measurement_id, repeat, phase, request_id"):
    con = reqstore.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_database_links_the_cells_request_files_and_reads_them_as_one_table(tmp_path):
    db = result_set(tmp_path / "r", "h100-80gb-x1", "run1")
    folder = reqstore.folder_of(db)
    files = sorted(folder.iterdir())
    assert folder.name == "almanac.requests" and len(files) == len(CELLS)
    cell_files = {os.stat(tmp_path / "r" / "cells" / c / "requests.parquet").st_ino for c in CELLS}
    assert {os.stat(f).st_ino for f in files} == cell_files  # hard links: no byte copied
    rows = _rows(db, "SELECT measurement_id, count(*), count(DISTINCT request_id) FROM requests GROUP BY ALL ORDER BY 1")
    mids = [r[0] for r in _rows(db, "SELECT measurement_id FROM cells ORDER BY 1")]
    assert [r[0] for r in rows] == mids and all(r[1] == r[2] == 480 for r in rows)
    names = _rows(db, "SELECT file, measurement_id FROM request_files ORDER BY 2")
    assert names == [(reqstore.file_name(m), m) for m in mids]


def test_a_copied_results_folder_answers_from_any_working_directory(tmp_path):
    db = result_set(tmp_path / "r", "h100-80gb-x1", "run1")
    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(tmp_path / "r", moved)
    shutil.rmtree(tmp_path / "r")
    sql = "SELECT count(*) AS n, sum(len(itl_ms)) AS gaps FROM requests"
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "query", sql,
                        "--db", str(moved / db.name)], capture_output=True, text=True, cwd="/", check=False,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["n,gaps", f"{2 * 480},{2 * 480 * 4}"]


def test_a_source_without_its_folder_is_refused_by_name_and_the_output_is_untouched(tmp_path):
    db = result_set(tmp_path / "r", "h100-80gb-x1", "run1")
    shutil.rmtree(reqstore.folder_of(db))
    out = tmp_path / "out.duckdb"
    out.write_bytes(b"previous")
    with pytest.raises(RefusedInput, match=r"almanac\.duckdb: its requests folder .*almanac\.requests is missing"):
        merge([str(db)], out)
    assert out.read_bytes() == b"previous" and not reqstore.folder_of(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_database_that_kept_requests_as_rows_merges_into_files(tmp_path):
    """A version-2 database (requests a table of its own) merges into today's layout: same rows."""
    db = result_set(tmp_path / "r", "h100-80gb-x1", "run1")
    old = tmp_path / "old.duckdb"
    con = reqstore.connect(old, read_only=False)
    con.execute(f"ATTACH '{db}' AS s (READ_ONLY)")
    reqstore.set_search_path(con, db.parent)
    for t in ("cells", "phases", "slo", "engine_metrics", "almanac_schema", "almanac_meta"):
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM s.{t}")
    con.execute("CREATE TABLE requests AS SELECT * FROM s.requests")
    con.execute("UPDATE almanac_schema SET schema_version = 2")
    con.close()
    out = tmp_path / "new.duckdb"
    counts = merge([str(old)], out)
    assert counts["requests"] == 2 * 480 and len(list(reqstore.folder_of(out).iterdir())) == 2
    assert _rows(out) == _rows(db)
    assert _rows(out, "SELECT DISTINCT schema_version FROM almanac_schema") == [(identity.SCHEMA_VERSION,)]


def test_a_failed_aggregate_keeps_the_old_folder(tmp_path):
    db = result_set(tmp_path / "r", "h100-80gb-x1", "run1")
    before = _rows(db)
    bad = tmp_path / "r" / "cells" / CELLS[1] / "requests.parquet"
    bad.unlink()
    bad.write_bytes(b"PAR1 not parquet")
    with pytest.raises(AggregateError, match=CELLS[1]):
        aggregate(sorted((tmp_path / "r" / "cells").iterdir()), db)
    assert _rows(db) == before
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")] == []
