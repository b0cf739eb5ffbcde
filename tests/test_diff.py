"""almanac diff as a regression gate: a set against itself is unchanged (exit 0); against a copy
in which one cell's requests were made slower, that cell regressed (exit 1)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from resultsets import CELLS, copy_db, result_set, update_requests

from llm_almanac import reqstore
from llm_almanac.diff import _classify, diff, gate

SRC = Path(__file__).resolve().parents[1] / "src"  # this tree's package, also in the subprocess


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return result_set(tmp_path_factory.mktemp("base"), seed=0)


def _almanac(*args):
    return subprocess.run([sys.executable, "-m", "llm_almanac.cli", *args], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)})


def test_a_set_against_itself_is_unchanged_and_exits_0(base):
    p = _almanac("diff", str(base), str(base), "--format", "json", "--bootstrap", "100")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert {r["status"] for r in rows} == {"unchanged"} and {r["engine"] for r in rows} == {"eng-a", "eng-b"}
    assert all(r["change_pct"] == 0 for r in rows)


def test_the_table_into_a_pipe_cuts_no_value(base):
    """Piped or redirected, the table is as wide as it needs: no `smollm…` ellipses."""
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "diff", str(base), str(base), "--bootstrap", "100"],
                       capture_output=True, text=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)})
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout and "max_rps[" in p.stdout and "unchanged" in p.stdout


def test_a_diff_that_matches_no_cell_fails_the_gate(base, tmp_path):
    """Two sets on different hardware kinds compare nothing: exit 2, never a passing gate."""
    other = result_set(tmp_path / "other", kind="h200-141gb-x1", seed=0)
    p = _almanac("diff", str(base), str(other), "--bootstrap", "50")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "nothing was compared" in p.stderr and "only-in-base" in p.stdout


def test_a_slower_cell_regresses_and_exits_1(base, tmp_path):
    slow = tmp_path / "slow.duckdb"
    # a copy of the base in which one cell's requests took 20 % longer
    copy_db(base, slow)
    update_requests(slow, "ttft_ms = ttft_ms * 1.2, tpot_ms = tpot_ms * 1.2, "
                    "itl_ms = list_transform(itl_ms, lambda x: x * 1.2)", "cell_id = ?", [CELLS[0]])
    con = reqstore.connect(slow, read_only=False)
    con.execute("UPDATE cells SET engine_version = '1.1', run_id = 'later'")
    con.close()
    p = _almanac("diff", str(base), str(slow), "--bootstrap", "100", "--format", "markdown")
    assert p.returncode == 1, p.stderr
    lines = [line for line in p.stdout.splitlines() if "| m |" in line]
    assert all(("regressed" in line) == ("eng-a" in line) for line in lines if "max_rps" not in line)
    assert any("eng-a" in line and "tpot_p50_ms" in line and "regressed" in line for line in lines)
    assert "regressed" in p.stderr
    # csv is one header and one line per metric
    p = _almanac("diff", str(base), str(slow), "--bootstrap", "50", "--format", "csv")
    assert p.returncode == 1 and p.stdout.splitlines()[0].startswith("model,engine")


def test_cells_on_one_side_only_and_a_threshold_above_the_change(base, tmp_path):
    other = result_set(tmp_path / "o", seed=3, cells=[CELLS[0], "m__eng-z__bf16__128-32"],
                       slower={CELLS[0]: 1.08})
    res = diff(str(base), str(other), threshold=0.05, n_boot=100)
    st = {(r["engine"], r["metric"]): r["status"] for r in res.iter_rows(named=True)}
    assert st[("eng-b", "-")] == "only-in-base" and st[("eng-z", "-")] == "only-in-new"
    assert st[("eng-a", "tpot_p50_ms")] == "regressed" and gate(res) == 1
    assert gate(diff(str(base), str(other), threshold=0.5, n_boot=100)) == 0


def test_classification_needs_the_threshold_and_a_ci_that_excludes_zero():
    assert _classify(0.10, 0.05, 0.15, True, 0.05) == "regressed"
    assert _classify(0.10, -0.01, 0.2, True, 0.05) == "unchanged"  # CI includes zero
    assert _classify(0.04, 0.02, 0.06, True, 0.05) == "unchanged"  # below the threshold
    assert _classify(-0.10, -0.15, -0.05, False, 0.05) == "regressed"  # fewer req/s
    assert _classify(0.10, 0.05, 0.15, False, 0.05) == "improved"
    assert _classify(None, None, None, False, 0.05) == "not-comparable"


def test_a_corrupt_input_is_refused_with_its_name(base, tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"garbage" * 50)
    p = _almanac("diff", str(base), str(bad))
    assert p.returncode == 2 and "bad.duckdb" in p.stderr


def test_two_engine_entries_of_one_set_compare_cell_by_cell(base):
    """Two versions of an engine, or tuned against default flags, are two engine entries of one
    grid: `--base-engine A --new-engine B` diffs them within one result set, shape by shape."""
    res = diff(str(base), str(base), threshold=0.05, n_boot=100, engines=("eng-a", "eng-b"))
    assert set(res["engine"]) == {"eng-a -> eng-b"}
    ids = set(zip(res["base_measurement"], res["new_measurement"], strict=True))
    assert all("eng-a" in b and "eng-b" in n for b, n in ids) and len(ids) >= 1
    assert "only-in-base" not in set(res["status"]) and "only-in-new" not in set(res["status"])
    p = _almanac("diff", str(base), str(base), "--base-engine", "eng-a", "--new-engine", "eng-nope")
    assert p.returncode == 2 and "--new-engine eng-nope: no ok cell of that engine" in p.stderr and "eng-b" in p.stderr
    p = _almanac("diff", str(base), str(base), "--base-engine", "eng-a")
    assert p.returncode == 1 and "go together" in p.stderr
