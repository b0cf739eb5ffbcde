"""almanac merge and publish: result sets from two hosts and two runs side by side, identical
measurements once, refused inputs leaving the output untouched, publish -> merge round trip."""

import json
import re
import subprocess

import pytest
from resultsets import CELLS, copy_db, result_set, update_requests

from llm_almanac import answers, cli, identity, reqstore
from llm_almanac.aggregate import aggregate
from llm_almanac.merge import RefusedInput, merge
from llm_almanac.publish import publish, verify
from llm_almanac.report import build_report

from conftest import CHROME_FLAGS, chromium


def _q(db, sql):
    con = reqstore.connect(db)
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
    assert _q(out, "SELECT DISTINCT schema_version FROM almanac_schema") == [(identity.SCHEMA_VERSION,)]
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
    copy_db(sets["h200"], future)
    con = reqstore.connect(future, read_only=False)
    con.execute("UPDATE almanac_schema SET schema_version = 99")
    con.close()
    _untouched(tmp_path / "out.duckdb", [sets["h100"], future], r"future.duckdb: schema version \[99\]")

    orphan = tmp_path / "orphan.duckdb"
    copy_db(sets["h200"], orphan)
    con = reqstore.connect(orphan, read_only=False)
    con.execute("DELETE FROM cells WHERE cell_id = ?", [CELLS[0]])
    con.close()
    _untouched(tmp_path / "out.duckdb", [orphan], "orphan.duckdb: inconsistent")

    edited = tmp_path / "edited.duckdb"
    copy_db(sets["h100"], edited)
    update_requests(edited, "ttft_ms = ttft_ms * 2", "request_id = 3")
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
    assert manifest["schema_version"] == identity.SCHEMA_VERSION and manifest["tables"]["cells"]["rows"] == 4
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


def test_publish_replaces_only_a_folder_it_wrote(sets, tmp_path, capsys):
    """`almanac publish results` (or any folder of the user's) must not replace that folder."""
    from llm_almanac.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["publish", str(mine), "--db", str(sets["h100"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"almanac publish: {mine} exists and is not a folder that `almanac publish` wrote")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    site = tmp_path / "site"
    assert main(["publish", str(site), "--db", str(sets["h100"])]) == 0
    assert main(["publish", str(site), "--db", str(sets["h200"])]) == 0  # a folder it wrote: replaced
    assert verify(site)["tables"]["cells"]["rows"] == 2
    (tmp_path / "empty").mkdir()
    assert main(["publish", str(tmp_path / "empty"), "--db", str(sets["h100"])]) == 0
    web = tmp_path / "web"  # a web site's own manifest.json is not ours
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    assert main(["publish", str(web), "--db", str(sets["h100"])]) == 2 and (web / "manifest.json").exists()
    # the database inside the (published) folder it would replace
    inside = copy_db(sets["h100"], site / "mine.duckdb")
    capsys.readouterr()
    assert main(["publish", str(site), "--db", str(inside)]) == 2
    assert "holds what is being published" in capsys.readouterr().err and inside.exists()


def test_a_cell_measured_twice_gives_two_answers(sets, tmp_path, capsys):
    """Answers and curve points are per measurement, as every other table: a merged database
    holding each cell from two runs answers for each run (its own requests, never pooled), the
    same as each run's own `slo` rows; so does one aggregate over both runs' cell folders."""
    slo = answers.SLO.from_limits(ttft_ms=1000)
    merged = tmp_path / "twice.duckdb"
    merge([str(sets["h100"]), str(sets["h100_again"])], merged)
    con = reqstore.connect(merged)
    rows = answers.compute(con, [slo]).to_dicts()
    own = dict(con.execute("SELECT measurement_id, max_rps FROM slo WHERE slo = 'ttft_p95<=1000ms'").fetchall())
    con.close()
    assert len(rows) == 4 and {r["cell_id"] for r in rows} == set(CELLS)
    assert {r["measurement_id"]: r["max_rps"] for r in rows} == own  # each run's own answer
    assert len(set(own.values())) == 4  # the two runs differ, so pooling them would show
    assert {(r["hardware_kind"], r["price_key"]) for r in rows} == {("h100-80gb-x1", "h100")}

    assert cli.main(["slo", "--ttft-ms", "1000", "--format", "json", "--db", str(merged)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(r["measurement_id"] for r in got) == sorted(own)
    assert cli.main(["plan", "--qps", "10", "--ttft-ms", "1000", "--isl", "128", "--osl", "32", "--format", "json",
                     "--db", str(merged)]) == 0
    assert sorted(r["measurement_id"] for r in json.loads(capsys.readouterr().out)) == sorted(own)
    assert cli.main(["slo", "--ttft-ms", "1000", "--best", "--format", "json", "--db", str(merged)]) == 0
    [group] = json.loads(capsys.readouterr().out)
    assert group["best"]["max_rps"] == max(own.values())
    assert cli.main(["show", CELLS[0], "--db", str(merged)]) == 0
    assert sum(f"measurement: {CELLS[0]}@" in line for line in capsys.readouterr().out.splitlines()) == 2

    # one aggregate over the cell folders of both runs: the answers and curve tables hold both
    dirs = [s.parent / "cells" / c for s in (sets["h100"], sets["h100_again"]) for c in CELLS]
    db = tmp_path / "both-runs.duckdb"
    aggregate(dirs, db)
    con = reqstore.connect(db)
    table = dict(con.execute("SELECT measurement_id, max_rps FROM answers WHERE slo = 'ttft_p95<=1000ms'").fetchall())
    n_points = con.execute("SELECT count(*), count(DISTINCT measurement_id) FROM curve").fetchall()
    con.close()
    assert table == own and n_points == [(4 * 4, 4)]

    # the report carries each measurement's curve, and its table has a row for each
    report = build_report(merged, tmp_path / "report.html")
    data = json.loads(re.search(r'<script type="application/json" id="almanac-data">(.*?)</script>',
                                report.read_text(), re.S).group(1).replace("<\\/", "</"))
    assert sorted(data["curves"]) == sorted(own) and sorted(c["mid"] for c in data["cells"]) == sorted(own)
    dom = subprocess.run([chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          report.as_uri() + "#model=m&isl=128&osl=32&ttft_ms=1000"],
                         capture_output=True, text=True, timeout=180).stdout
    shown = {mid: float(v) for v, mid in re.findall(r'data-max-rps="([^"]*)" [^>]*data-measurement-id="([^"]*)"', dom)}
    assert shown == own
