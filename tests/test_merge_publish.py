"""almanac merge and publish: result sets from two hosts and two runs side by side, identical
measurements once, refused inputs leaving the output untouched, publish -> merge round trip."""

import shutil

import duckdb
import pytest
from resultsets import CELLS, result_set

from llm_almanac.merge import RefusedInput, merge
from llm_almanac.publish import publish, verify


def _q(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return {
        "h100": result_set(root / "h100", "h100-80gb-x1", "run1", seed=0),
        "h200": result_set(root / "h200", "h200-141gb-x1", "run2", seed=10),
        "h100_again": result_set(root / "h100b", "h100-80gb-x1", "run3", seed=20),
    }


def test_two_hosts_and_a_second_run_sit_side_by_side(sets, tmp_path):
    out = tmp_path / "all.duckdb"
    counts = merge([str(sets["h100"]), str(sets["h200"]), str(sets["h100_again"])], out)
    assert counts["cells"] == 6 and counts["duplicates"] == 0
    assert counts["requests"] == 3 * 2 * 2 * 4 * 60
    rows = _q(out, "SELECT cell_id, count(DISTINCT hardware_kind), count(*) FROM cells GROUP BY ALL ORDER BY 1")
    assert rows == [(c, 2, 3) for c in CELLS]
    assert _q(out, "SELECT DISTINCT schema_version FROM almanac_schema") == [(2,)]
    # provenance: every measurement names the input it came from
    assert _q(out, "SELECT count(DISTINCT source) FROM sources") == [(3,)]


def test_identical_measurements_are_stored_once(sets, tmp_path):
    out = tmp_path / "m.duckdb"
    results_folder = sets["h100"].parent  # the same measurements, read from the cell files
    counts = merge([str(sets["h100"]), str(results_folder), str(sets["h200"])], out)
    assert counts["cells"] == 4 and counts["duplicates"] == 2
    assert _q(out, "SELECT count(*) FROM sources") == [(6,)]
    # merging a merge changes nothing
    again = merge([str(out), str(sets["h200"])], tmp_path / "m2.duckdb")
    assert again["cells"] == 4 and again["duplicates"] == 2


def _untouched(out, srcs, match):
    out.write_bytes(b"previous output")
    with pytest.raises(RefusedInput, match=match):
        merge([str(s) for s in srcs], out)
    assert out.read_bytes() == b"previous output"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_corrupt_unknown_version_and_inconsistent_inputs_are_refused(sets, tmp_path):
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"\0not a database" * 100)
    _untouched(tmp_path / "out.duckdb", [sets["h100"], corrupt], "corrupt.duckdb: unreadable or corrupt")

    future = tmp_path / "future.duckdb"
    shutil.copy(sets["h200"], future)
    con = duckdb.connect(str(future))
    con.execute("UPDATE almanac_schema SET schema_version = 99")
    con.close()
    _untouched(tmp_path / "out.duckdb", [sets["h100"], future], r"future.duckdb: schema version \[99\]")

    orphan = tmp_path / "orphan.duckdb"
    shutil.copy(sets["h200"], orphan)
    con = duckdb.connect(str(orphan))
    con.execute("DELETE FROM cells WHERE cell_id = ?", [CELLS[0]])
    con.close()
    _untouched(tmp_path / "out.duckdb", [orphan], "orphan.duckdb: inconsistent")

    edited = tmp_path / "edited.duckdb"
    shutil.copy(sets["h100"], edited)
    con = duckdb.connect(str(edited))
    con.execute("UPDATE requests SET ttft_ms = ttft_ms * 2 WHERE request_id = 3")
    con.close()
    _untouched(tmp_path / "out.duckdb", [sets["h100"], edited], "edited.duckdb: inconsistent with")


def test_publish_then_merge_round_trip(sets, tmp_path):
    merged = tmp_path / "all.duckdb"
    merge([str(sets["h100"]), str(sets["h200"])], merged)
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")
    site = tmp_path / "site"
    manifest = publish(merged, site, report=report)
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {"manifest.json", "report.html", "methodology.md", "tables/cells.parquet",
            "tables/requests.parquet", "tables/slo.parquet", "tables/phases.parquet"} <= names
    assert manifest["schema_version"] == 2 and manifest["tables"]["cells"]["rows"] == 4
    assert verify(site)["files"] == manifest["files"]
    back = merge([str(site)], tmp_path / "back.duckdb")
    assert back == {**merge([str(merged)], tmp_path / "again.duckdb")}
    # same content as the database it came from: merging both stores every measurement once
    both = merge([str(merged), str(site)], tmp_path / "both.duckdb")
    assert both["cells"] == 4 and both["duplicates"] == 4
    # a damaged download is refused
    with open(site / "tables" / "requests.parquet", "r+b") as f:
        f.seek(100)
        f.write(b"XXXX")
    _untouched(tmp_path / "out2.duckdb", [site], "requests.parquet does not match its checksum")
