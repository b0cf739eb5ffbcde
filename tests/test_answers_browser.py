"""The report's explorer in a real headless Chromium, against the CLI: the page's in-browser
answers (web/slo.js) must equal `almanac slo`'s exactly, pickers must redraw the charts, and a
lower-bound answer must say "≥"."""

import html
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import answers_data
import pytest

from llm_almanac import cli
from llm_almanac.report import build_report
from llm_almanac.summary import fmt_usd

from conftest import CHROME_FLAGS, chromium

ROW = re.compile(r'<tr class="answer-row[^"]*" data-cell-id="([^"]*)" data-max-rps="([^"]*)" data-basis="([^"]*)" '
                 r'data-ci-low="([^"]*)" data-ci-high="([^"]*)" data-measurement-id="[^"]*">(.*?)</tr>', re.S)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    db = answers_data.build(root, prices={"h100": 2.0})
    return db, build_report(db, root / "report.html")


def dump(url: str, tmp_path: Path) -> str:
    p = subprocess.run([chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=180)
    assert "<html" in p.stdout, p.stderr[-2000:]
    return p.stdout


def with_probe(report: Path, tmp_path: Path, script: str, data: object = None) -> Path:
    """A copy of the report with a script at the end that drives the page like a user (setting
    pickers and dispatching their events) and writes what it saw into <pre id="probe">."""
    probe = (f'<script type="application/json" id="probe-data">{json.dumps(data)}</script>'
             f'<script>(() => {{ const out = []; {script}; const pre = document.createElement("pre"); '
             f'pre.id = "probe"; pre.textContent = JSON.stringify(out); document.body.appendChild(pre); }})();</script>')
    out = tmp_path / "probed.html"
    out.write_text(report.read_text().replace("</body></html>", probe + "</body></html>"))
    return out


def probed(dom: str) -> list:
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run: " + dom[-2000:]
    return json.loads(html.unescape(m.group(1)))


def cli_answers(capsys, db: Path, *args: str) -> dict[str, dict]:
    capsys.readouterr()
    assert cli.main(["slo", *args, "--format", "json", "--db", str(db)]) == 0
    return {r["cell_id"]: r for r in json.loads(capsys.readouterr().out)}


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


def test_url_hash_answers_equal_the_cli(page, tmp_path, capsys):
    db, report = page
    dom = dump(report.as_uri() + "#model=m1&engine=any&quant=any&isl=128&osl=32&hw=any&ttft_ms=700&stat=p95", tmp_path)
    rows = {m[0]: m[1:] for m in ROW.findall(dom)}
    # the CLI as a user runs it, in its own process
    p = subprocess.run([sys.executable, "-m", "llm_almanac.cli", "slo", "--ttft-ms", "700", "--model", "m1", "--isl",
                        "128", "--osl", "32", "--format", "json", "--db", str(db)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    want = {r["cell_id"]: r for r in json.loads(p.stdout)}
    assert set(rows) == set(want) | {"m1__eng-c__bf16__128-32"} and len(want) == 3
    assert rows["m1__eng-c__bf16__128-32"][:2] == ("", "failed")
    for cid, r in want.items():
        got = rows[cid]
        assert (_num(got[0]), got[1], _num(got[2]), _num(got[3])) == (
            r["max_rps"], r["basis"], r["ci_low_rps"], r["ci_high_rps"]), cid
        assert f'<b class="answer">{r["answer"]}</b>' in got[4]
    # the answer panel: best, runner-up, and the verdict best.py gives
    capsys.readouterr()
    cli.main(["slo", "--ttft-ms", "700", "--model", "m1", "--isl", "128", "--osl", "32", "--best", "--format", "json",
              "--db", str(db)])
    [g] = json.loads(capsys.readouterr().out)
    v = re.search(r'data-verdict="([^"]*)" data-best-cell-id="([^"]*)" data-runner-up-cell-id="([^"]*)"', dom)
    assert (html.unescape(v[1]), v[2], v[3]) == (g["verdict"], g["best"]["cell_id"], g["runner_up"]["cell_id"])
    assert 'id="summary"' in dom and "Executive summary" in dom


def test_random_thresholds_answer_exactly_as_the_cli(page, tmp_path, capsys):
    db, report = page
    rnd = random.Random(13)
    cases = ([{"ttft": round(rnd.uniform(50, 9000), rnd.choice([0, 1, 3])), "tpot": None, "stat": "p95"} for _ in range(20)]
             + [{"ttft": None, "tpot": round(rnd.uniform(3, 120), rnd.choice([0, 2, 4])), "stat": "p95"} for _ in range(20)]
             + [{"ttft": rnd.uniform(100, 5000), "tpot": rnd.uniform(5, 90), "stat": rnd.choice(["p50", "p90", "p99"])}
                for _ in range(6)])
    script = """
      const set = (id, v, ev) => { const el = document.getElementById(id); el.value = v === null ? "" : String(v);
                                   el.dispatchEvent(new Event(ev)); };
      for (const c of JSON.parse(document.getElementById("probe-data").textContent)) {
        set("f-stat", c.stat, "change"); set("f-ttft", c.ttft, "input"); set("f-tpot", c.tpot, "input");
        out.push([...document.querySelectorAll("#answers tr[data-cell-id]")].filter(tr => tr.dataset.basis !== "failed")
          .map(tr => [tr.dataset.cellId, tr.dataset.maxRps, tr.dataset.basis, tr.dataset.ciLow, tr.dataset.ciHigh]));
      }"""
    dom = dump(with_probe(report, tmp_path, script, cases).as_uri() + "#model=any&isl=any&osl=any", tmp_path)
    seen = probed(dom)
    assert len(seen) == len(cases) == 46
    bases = set()
    for case, rows in zip(cases, seen):
        args = ["--percentile", case["stat"]]
        args += ["--ttft-ms", repr(float(case["ttft"]))] if case["ttft"] is not None else []
        args += ["--tpot-ms", repr(float(case["tpot"]))] if case["tpot"] is not None else []
        want = cli_answers(capsys, db, *args)
        got = {r[0]: (_num(r[1]), r[2], _num(r[3]), _num(r[4])) for r in rows}
        assert got == {k: (r["max_rps"], r["basis"], r["ci_low_rps"], r["ci_high_rps"]) for k, r in want.items()}, case
        bases |= {r[1] for r in got.values()}
    assert {"interpolated", "above-range", "below-range", "no-data"} <= bases  # the thresholds span every case


def test_picker_redraws_charts_and_above_range_says_at_least(page, tmp_path, capsys):
    db, report = page
    script = """
      const plot = id => ({names: document.getElementById(id).data.map(t => t.name),
                           svgTraces: document.querySelectorAll("#" + id + " g.trace").length,
                           shapes: (document.getElementById(id).layout.shapes || []).map(s => s.y0)});
      const rows = () => [...document.querySelectorAll("#answers tr[data-cell-id]")].map(tr =>
        [tr.dataset.cellId, tr.dataset.basis, tr.querySelector(".answer").textContent]);
      const maxes = () => [...document.querySelectorAll("#answers tr[data-cell-id]")].map(tr => tr.dataset.maxRps);
      const sorted = [maxes()];
      const th = [...document.querySelectorAll("#answers-head th")].find(h => h.textContent.startsWith("max req/s"));
      th.click();
      sorted.push(maxes());
      out.push({ttft: plot("plot-ttft"), tpot: plot("plot-tpot"), rows: rows(), hash: location.hash, sorted});
      const eng = document.getElementById("f-engine"); eng.value = "eng-a"; eng.dispatchEvent(new Event("change"));
      out.push({ttft: plot("plot-ttft"), tpot: plot("plot-tpot"), rows: rows(), hash: location.hash,
                shapesPlot: document.getElementById("plot-shapes").data.map(t => t.name)});
      eng.value = "any"; eng.dispatchEvent(new Event("change"));
      const t = document.getElementById("f-ttft"); t.value = "100000"; t.dispatchEvent(new Event("input"));
      const q = document.getElementById("f-tpot"); q.value = ""; q.dispatchEvent(new Event("input"));
      out.push({rows: rows(), verdicts: [...document.querySelectorAll(".verdict")].map(v => v.textContent),
                bars: document.getElementById("plot-shapes").data.map(tr => tr.text)});
      t.value = "700"; t.dispatchEvent(new Event("input"));
      const price = document.querySelector('input.price[data-kind="h100"]');
      price.value = "4"; price.dispatchEvent(new Event("input"));
      const col = [...document.querySelectorAll("#answers-head th")].findIndex(th => th.textContent.startsWith("$/1M out"));
      out.push({hash: location.hash, cost: Object.fromEntries([...document.querySelectorAll("#answers tr[data-cell-id]")]
        .map(tr => [tr.dataset.cellId, tr.children[col].textContent]))});"""
    dom = dump(with_probe(report, tmp_path, script).as_uri()
               + "#model=m1&isl=128&osl=32&ttft_ms=700&tpot_ms=40&stat=p95", tmp_path)
    before, after, high, priced = probed(dom)
    # every engine+quantization, with its version in the legend, p50 and p95, and a star per answer
    assert {"eng-a 0.9.1 bf16 p50", "eng-b 2.0.0 bf16 p95", "eng-b 2.0.0 fp8 p50"} <= set(before["ttft"]["names"])
    assert sum("req/s" in n for n in before["ttft"]["names"]) == 3  # operating points
    assert before["ttft"]["shapes"] == [700] and before["tpot"]["shapes"] == [40]  # the SLO lines
    # the table sorts by max req/s, highest first, and a click on its header turns the order round
    down, up = ([float(x) for x in xs if x] for xs in before["sorted"])
    assert len(down) == 3 and down == sorted(down, reverse=True) and up == sorted(down)
    # engine picker -> only eng-a is drawn, in the DOM as well, and the URL says so
    assert after["ttft"]["names"] and all(n.startswith("eng-a") for n in after["ttft"]["names"])
    assert 0 < after["ttft"]["svgTraces"] < before["ttft"]["svgTraces"]
    assert "engine=eng-a" in after["hash"] and "engine=any" in before["hash"]
    assert {r[0] for r in after["rows"]} == {"m1__eng-a__bf16__128-32"}
    assert all(n.startswith("eng-a") for n in after["shapesPlot"])
    # a limit above every measured point: lower bounds, shown "≥" in the table, panel and bars
    ok = [r for r in high["rows"] if r[1] != "failed"]
    assert ok and all(r[1] == "above-range" and r[2].startswith("≥ ") for r in ok)
    assert "≥ " in high["verdicts"][0] and "no clear winner" in high["verdicts"][0]
    assert any(t.startswith("≥ ") for tr in high["bars"] for t in tr if t)
    # the page's own price wins, as --price does on the command line
    want = cli_answers(capsys, db, "--ttft-ms", "700", "--model", "m1", "--isl", "128", "--osl", "32",
                       "--price", "h100=4")
    assert "price_h100=4" in priced["hash"]
    assert {k: v for k, v in priced["cost"].items() if k in want} == {
        k: fmt_usd(r["usd_per_1m_output_tokens"]) for k, r in want.items()}


def test_long_summary_waits_folded_until_opened(page, tmp_path, monkeypatch):
    from llm_almanac import report as report_mod

    db, _ = page
    monkeypatch.setattr(report_mod, "SUMMARY_OPEN_MAX_BLOCKS", 5)
    monkeypatch.setattr(report_mod, "CELLS_INLINE_MAX", 5)
    folded = build_report(db, tmp_path / "folded.html")
    assert '<template id="summary-body">' in folded.read_text() and "<template><table id='cells-table'>" in folded.read_text()
    script = """
      const d = document.getElementById("summary");
      out.push(d.open, d.querySelectorAll("li").length);
      d.open = true;
      d.dispatchEvent(new Event("toggle"));
      out.push(d.querySelectorAll("li").length, document.body.textContent.includes("ServerStartupError: bad flag"));
      const c = document.getElementById("summary").parentElement.querySelectorAll("details.lazy")[1];
      out.push(!!document.getElementById("cells-table"));
      c.open = true;
      c.dispatchEvent(new Event("toggle"));
      out.push(document.querySelectorAll("#cells-table tbody tr").length);"""
    closed, before, after, failure_named, table_before, rows = probed(
        dump(with_probe(folded, tmp_path, script).as_uri(), tmp_path))
    assert closed is False and before == 0 and after > 10 and failure_named
    assert table_before is False and rows == 12
