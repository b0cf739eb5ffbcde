"""The report in a real headless browser, and the CLI on a constructed database."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_almanac import reqstore
from llm_almanac.aggregate import aggregate
from llm_almanac.analyse import analyse
from llm_almanac.report import build_report

from conftest import frames as _frames
from conftest import render

ROOT = Path(__file__).resolve().parents[1]


def _cell(root, cid, engine, points, status="ok"):
    d = root / cid
    d.mkdir(parents=True)
    req, ph = _frames(points) if status == "ok" else _frames([])
    req = req.with_columns(req["cell_id"].str.replace("c", cid, literal=True))
    ph = ph.with_columns(ph["cell_id"].str.replace("c", cid, literal=True))
    req.write_parquet(d / "requests.parquet")
    ph.write_parquet(d / "phases.parquet")
    analyse(req, ph, bootstrap=50).write_parquet(d / "slo.parquet")
    (d / "cell.json").write_text(json.dumps({
        "cell_id": cid, "model": "m", "engine": engine, "engine_version": "1.0", "quantization": "bf16",
        "isl": 128, "osl": 32, "status": status,
        "error": None if status == "ok" else "ServerStartupError: bad flag", "hardware": "CPU: test",
        "n_gpus": 0, "startup_s": 3.0, "server_command": f"{engine} serve m", "notes": []}))
    return d


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("db")
    curve_a = [("sequential", 0, 1.0, 200.0), ("sweep", 0, 2.0, 600.0), ("sweep", 1, 3.0, 1400.0), ("burst", 0, 4.0, 5000.0)]
    curve_b = [("sequential", 0, 1.5, 100.0), ("sweep", 0, 3.0, 250.0), ("burst", 0, 6.0, 800.0)]
    dirs = [_cell(root / "cells", "m__eng-a__bf16__128-32", "eng-a", curve_a),
            _cell(root / "cells", "m__eng-b__bf16__128-32", "eng-b", curve_b),
            _cell(root / "cells", "m__eng-c__bf16__128-32", "eng-c", [], status="failed")]
    db = root / "almanac.duckdb"
    aggregate(dirs, db, {d.name: f"snakemake --cores all --forcerun results/cells/{d.name}/cell.json" for d in dirs})
    return db


def _almanac(*args):
    # the package of this checkout (PYTHONPATH=src in a worktree), not whatever the venv installed
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", *args], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_slo_table_in_db(fixture_db):
    con = reqstore.connect(fixture_db)
    rows = con.execute("SELECT cell_id, max_rps, basis FROM slo WHERE slo = 'ttft_p95<=1000ms' ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["m__eng-a__bf16__128-32", "m__eng-b__bf16__128-32"]
    assert rows[0][2] == "interpolated" and 2.0 < rows[0][1] < 3.0
    assert rows[1][2] == "above-range" and rows[1][1] == pytest.approx(6.0, rel=0.05)


def test_cli_slo_one_row_per_ok_cell(fixture_db):
    out = _almanac("slo", "--ttft-ms", "1000", "--db", str(fixture_db), "--bootstrap", "20")
    lines = [ln for ln in out.splitlines() if "eng-" in ln]
    assert len(lines) == 2 and "eng-c" not in out
    assert "interpolated" in lines[0] and "above-range" in lines[1]
    out = _almanac("slo", "--ttft-ms", "150", "--engine", "eng-a", "--db", str(fixture_db))
    assert "below-range" in out and "eng-b" not in out


def test_cli_show_query_export(fixture_db, tmp_path):
    out = _almanac("show", "m__eng-c__bf16__128-32", "--db", str(fixture_db))
    assert "status=failed" in out and "ServerStartupError: bad flag" in out
    out = _almanac("show", "m__eng-a__bf16__128-32", "--db", str(fixture_db))
    assert "sequential" in out and "burst" in out and "ttft_p95<=1000ms" in out
    out = _almanac("query", "SELECT count(*) AS n FROM requests", "--db", str(fixture_db))
    assert out.splitlines() == ["n", "560"]  # into a pipe: CSV
    out = _almanac("query", "SELECT count(*) AS n FROM requests", "--format", "table", "--db", str(fixture_db))
    assert "│ 560 │" in out.replace("┃", "│")
    _almanac("export", "--format", "csv", "--out", str(tmp_path / "x"), "--db", str(fixture_db))
    header, first = (tmp_path / "x" / "requests.csv").read_text().splitlines()[:2]
    assert "itl_ms" in header and "[10.0,10.0,10.0]" in first.replace(", ", ",")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "almanac_meta.csv", "almanac_schema.csv", "answers.csv", "cells.csv", "curve.csv", "engine_metrics.csv",
        "phases.csv", "prices.csv", "requests.csv", "slo.csv"]





def test_report_renders_plots_and_filters_in_chromium(fixture_db, tmp_path):
    out = build_report(fixture_db, tmp_path / "report.html")
    text = out.read_text()
    # self-contained: plotly.js inline, no script or stylesheet fetched from the network
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=", text)
    assert re.search(r"\* plotly\.js (\(basic - minified\) )?v\d", text) and "Plotly.react(" in text
    dom, png = render(out, tmp_path)
    # plotly drew its SVGs: the TTFT and TPOT curves and the cross-shape bars, 2 svg layers each
    assert dom.count('class="main-svg"') >= 2 * 3
    assert dom.count('class="scatterlayer') >= 2 and 'class="barlayer' in dom
    for col in ("model", "engine", "quantization", "shape", "hardware", "ttft", "tpot", "stat"):
        assert f'id="f-{col}"' in dom
    assert '<option value="eng-b">eng-b</option>' in dom
    # the first preset SLO answered for both ok cells, the failed one listed with its reason
    assert len(re.findall(r'<tr class="answer-row[^"]*" data-cell-id="m__', dom)) == 3 and 'data-basis="failed"' in dom
    assert "TTFT p95 ≤ 1000 ms" in dom and "ServerStartupError: bad flag" in dom
    assert png.stat().st_size > 30_000  # a page with plots, not a blank one


def test_commands_other_than_bench_start_without_the_measuring_modules():
    """`almanac query` and the other commands run in a process of their own (a user's shell,
    every test that runs one): they must not pay for numpy, uvloop, httptools, httpx and the load
    generator, which only `almanac bench` uses (about half the start-up time)."""
    code = ("import sys, llm_almanac.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('numpy', 'uvloop', 'httptools', 'httpx', 'jsonschema', 'prometheus_client', "
            "'llm_almanac.loadgen', 'llm_almanac.phases', 'llm_almanac.stream') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def test_bench_choices_are_the_config_schemas():
    """The command line offers exactly the values a config may say (and the load generator takes)."""
    from llm_almanac import cli, loadgen, phases

    opts = {a.dest: a for a in cli.build_parser()._subparsers._group_actions[0].choices["bench"]._actions}
    assert opts["arrival"].choices == list(loadgen.ARRIVALS)
    assert sorted(opts["endpoint"].choices) == sorted(loadgen.ENDPOINTS)
    assert opts["transport"].choices == list(loadgen.TRANSPORTS)
    assert opts["phases"].default == ",".join(phases.PHASES)


def test_version_and_query_formats(fixture_db, capsys):
    import json as _json

    from llm_almanac import __version__
    from llm_almanac.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    sql = "SELECT cell_id, avg(rps) AS rps FROM phases WHERE phase = 'burst' GROUP BY 1 ORDER BY 1"
    assert main(["query", sql, "--db", str(fixture_db), "--format", "json"]) == 0
    rows = _json.loads(capsys.readouterr().out)
    assert [r["cell_id"] for r in rows] == ["m__eng-a__bf16__128-32", "m__eng-b__bf16__128-32"]
    assert main(["query", sql, "--db", str(fixture_db)]) == 0  # into a pipe (captured): CSV, no box
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "cell_id,rps" and "┃" not in out and "│" not in out
