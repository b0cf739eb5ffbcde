"""results/report.html: one self-contained page (plotly.js inline; opens without network).

plotly.js is its "basic" bundle where `make setup` installed it, else plotly.py's full one
(plotlyjs.py says which, and why).

- the executive summary (summary.py), written from the data;
- an explorer: pickers for model, engine ("any" included), quantization, shape, price key (the GPU
  model, or cpu) and
  the SLO (free TTFT/TPOT limits on p50|p90|p95|p99, presets from the config) drive the answer
  panel (best, runner-up, "no clear winner"), the curves (TTFT and TPOT p50/p95 against achieved
  req/s, one colour per engine+quantization, the SLO as a line, each operating point a star), a
  sortable table of answers (`#answers`) and capacity across shapes. State lives in the URL hash.
- every cell's status, with the reason of a failure.

The page carries each ok cell's curve points (curve.py: rates, tokens/s, and the TTFT/TPOT
percentiles with their 95% intervals) and answers any SLO in the browser with web/slo.js, a port
of slo.py, so its answers equal `almanac slo`'s. Python writes no answer into the page except the
summary: one definition, computed where the user asks.
"""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from . import answers, cost, plotlyjs, reqstore, summary
from .files import write_text

CURVE_KEYS = {"rps": "rps", "output_tok_s": "out", "input_tok_s": "in"}
PAGE_METRICS = ("ttft", "tpot")
PAGE_STATS = ("p50", "p90", "p95", "p99")
SUMMARY_OPEN_MAX_BLOCKS = 40  # a longer executive summary starts folded (and inert until opened)
CELLS_INLINE_MAX = 50  # a longer (folded) table of cells stays inert until opened


def _web(name: str) -> str:
    return resources.files("llm_almanac").joinpath("web", name).read_text()


def _finite(xs: list) -> list:
    return [x if x is None or math.isfinite(x) else None for x in xs]


def _curves(points: pl.DataFrame) -> dict[str, dict[str, list]]:
    """Per ok measurement (measurement_id), the columns the browser needs (exact floats: JSON
    keeps every bit)."""
    out: dict[str, dict[str, list]] = {}
    for (mid,), g in points.group_by(["measurement_id"], maintain_order=True):
        d: dict[str, list] = {short: _finite(g[col].to_list()) for col, short in CURVE_KEYS.items()}
        d["ph"] = [p if p != "sweep" else f"sweep[{s}]" for p, s in zip(g["phase"], g["step"])]
        for m in PAGE_METRICS:
            for s in PAGE_STATS:
                for suffix in ("", "_lo", "_hi"):
                    d[f"{m}_{s}{suffix}"] = _finite(g[f"{m}_{s}{suffix}_ms"].to_list())
        out[mid] = d
    return out


def _cells(cells: pl.DataFrame, prices: dict[str, cost.Price]) -> list[dict[str, Any]]:
    out = []
    for c in cells.iter_rows(named=True):
        key = cost.price_key(c["hardware"], c["n_gpus"])
        n = int(c["n_gpus"] or 0)
        out.append({
            "id": c["cell_id"], "mid": answers.measurement_of(c), "run": c.get("run_id"),
            "model": c["model"], "engine": c["engine"], "version": c["engine_version"],
            "quant": c["quantization"], "isl": c["isl"], "osl": c["osl"], "hw": c["hardware"],
            "hw_kind": c.get("hardware_kind"), "price_key": key,
            "gpus": n, "usd_h": cost.replica_usd_per_hour(prices.get(key), n),
            "price": answers.price_note(prices.get(key), key, n), "reproduce": c["reproduce"],
            "server": c["server_command"], "status": c["status"], "error": (c["error"] or "")[:600],
        })
    return out


def _presets(slos: list[answers.SLO]) -> list[dict[str, Any]]:
    """The configured SLOs the explorer's inputs can express (TTFT and/or TPOT, one statistic)."""
    out = []
    for s in slos:
        limits: dict[str, float] = {}
        stats = set()
        for metric, t in s.conditions:
            name, stat, _ = metric.split("_")
            if name not in PAGE_METRICS or stat not in PAGE_STATS or name in limits:
                break
            limits[name] = t
            stats.add(stat)
        else:
            if len(stats) == 1:
                out.append({"name": s.name, "text": s.text(), "stat": stats.pop(),
                            "ttft_ms": limits.get("ttft"), "tpot_ms": limits.get("tpot")})
    return out


def _notes_and_error(r: dict[str, Any]) -> str:
    """A cell's notes (e.g. that its server was reachable from the network) and its error."""
    notes = r.get("notes") or ""
    return " ".join(x for x in ((f"notes: {notes}" if notes not in ("", "[]") else ""), r.get("error") or "") if x)


def _cells_table(cells: pl.DataFrame) -> str:
    body = "".join(
        f"<tr class='{html.escape(r['status'])}'><td title='measurement {html.escape(answers.measurement_of(r))}'>"
        f"{html.escape(r['cell_id'])}</td><td>{html.escape(r['status'])}</td>"
        f"<td>{html.escape(r['engine_version'] or '')}</td><td>{html.escape(r['hardware'] or '')}</td>"
        f"<td class=num>{'—' if r['startup_s'] is None else format(r['startup_s'], '.1f')}</td>"
        f"<td><pre>{html.escape(_notes_and_error(r)[:600])}</pre></td></tr>"
        for r in cells.sort("cell_id").iter_rows(named=True))
    return ("<table id='cells-table'><thead><tr><th>cell</th><th>status</th><th>engine version</th>"
            f"<th>hardware</th><th>startup s</th><th>notes, error</th></tr></thead><tbody>{body}</tbody></table>")


def _price_inputs(keys: list[str], prices: dict[str, cost.Price]) -> str:
    out = []
    for k in keys:
        p = prices.get(k)
        unit = "per machine" if k == "cpu" else "per GPU"
        hint = f"{p.usd_per_hour:g}" if p else "no price"
        title = html.escape(answers.price_note(p, k, 1))
        out.append(f'<label title="{title}">{html.escape(k)} {unit} <input class="price" data-kind="{html.escape(k)}" '
                   f'type="number" min="0" step="any" placeholder="{hint}"></label>')
    return "".join(out)


CSS = """
body{font-family:system-ui,sans-serif;margin:20px;color:#222;max-width:1500px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 24px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
#answers th{cursor:pointer;background:#f6f6f6;white-space:nowrap} #answers th.asc:after{content:" ▲"}
#answers th.desc:after{content:" ▼"} td.num{text-align:right}
tr.failed{background:#fff0f0} pre{margin:0;white-space:pre-wrap;max-width:60em}
.pickers{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;padding:10px;background:#f4f6fa;
  border-radius:6px;position:sticky;top:0;z-index:10}
.pickers input[type=number]{width:6em} .prices{font-size:12px;color:#555}
.verdict{border-left:4px solid #636efa;padding:4px 10px;margin:8px 0;background:#fafafe}
.vhead{font-weight:600} .vtext{color:#0b5} .op,.cmd{font-size:12.5px;color:#444} code{font-size:11px}
.price{color:#777} #curves{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.note{color:#777;font-style:italic} details summary{cursor:pointer} #summary>summary{font-size:1.3em;margin:8px 0}
"""


def build_report(db_path: str | Path, out_path: str | Path) -> Path:
    con = reqstore.connect(db_path)
    try:
        cells = answers.load_cells(con)
        points = answers.load_points(con)
        prices = answers.load_prices(con)
        slos = answers.load_slos(con)
    finally:
        con.close()
    rows = answers.answers_frame(cells, points, slos, prices).to_dicts()
    page_cells = _cells(cells, prices)
    data: dict[str, Any] = {"cells": page_cells, "curves": _curves(points), "presets": _presets(slos)}
    n_cells, n_ok = len(cells), cells.filter(pl.col("status") == "ok").height
    cells_html = _cells_table(cells)
    if n_cells > CELLS_INLINE_MAX:
        cells_html = f"<template>{cells_html}</template>"
    intro = f"""<h1>llm-almanac report</h1>
<p>{n_ok} of {n_cells} cells ok. Capacity = the most requests/s one replica holds under the SLO
(latency limits apply to the chosen statistic, p95 by default); ≥ marks a lower bound (every measured
rate met it); intervals are 95%. Definitions: docs/methodology.md, docs/answers.md.
Data: {html.escape(str(db_path))}.</p>
{_summary(rows, slos, cells)}"""
    keys = sorted({c["price_key"] for c in page_cells if c["status"] == "ok"})
    out = Path(out_path)
    write_text(out, _page(intro, data, keys, prices, cells_html, n_cells - n_ok))
    return out


def _summary(rows: list[dict[str, Any]], slos: list[answers.SLO], cells: pl.DataFrame) -> str:
    """The executive summary, folded when long."""
    failed = cells.filter(pl.col("status") != "ok")
    blocks = summary.blocks(rows, slos, len(cells), failed.height, failed.to_dicts())
    summary_html = summary.to_html(blocks[1:])  # its title is the <summary> line
    # A long summary would push the explorer away: it starts folded, and stays an inert <template>
    # (no style or layout work while the page loads) until it is first opened.
    short = len(blocks) <= SUMMARY_OPEN_MAX_BLOCKS
    if not short:
        summary_html = f'<template id="summary-body">{summary_html}</template>'
    return (f'<details id="summary" class="lazy"{" open" if short else ""}><summary><b>Executive summary</b> '
            f"(written from the data by the code\nof <code>almanac summary</code>)</summary>{summary_html}</details>")


def _page(intro: str, data: dict[str, Any], keys: list[str], prices: Any, cells_html: str, n_failed: int) -> str:
    """The whole page: plotly.js, the explorer's elements, the data and the explorer's code."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    presets = "".join(
        f'<button class="preset" data-ttft="{p["ttft_ms"] if p["ttft_ms"] is not None else ""}" '
        f'data-tpot="{p["tpot_ms"] if p["tpot_ms"] is not None else ""}" data-stat="{p["stat"]}">'
        f'{html.escape(p["text"])}</button>' for p in data["presets"])
    pjs = plotlyjs.script()
    pjs_text = re.sub("</(script)", r"<\\/\1", pjs.text, flags=re.I)  # inert inside <script> (none today)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>llm-almanac report</title>
<style>{CSS}</style><script id="plotly-js" data-bundle="{pjs.bundle}" data-version="{pjs.version}">
{pjs_text}</script></head><body>
{intro}
<h2>Explorer</h2>
<div class="pickers">
<label>model <select id="f-model"></select></label>
<label>engine <select id="f-engine"></select></label>
<label>quantization <select id="f-quantization"></select></label>
<label>ISL/OSL <select id="f-shape"></select></label>
<label>hardware <select id="f-hardware"></select></label>
<label>TTFT ≤ <input id="f-ttft" type="number" min="0" step="any"> ms</label>
<label>TPOT ≤ <input id="f-tpot" type="number" min="0" step="any"> ms</label>
<label>statistic <select id="f-stat"><option>p50</option><option>p90</option>
<option selected>p95</option><option>p99</option></select></label>
<span>presets: {presets}</span> <a id="permalink" href="#">link to this view</a>
<div class="prices">your prices, $/hour (empty: the figure of the config or the example, shown greyed):
{_price_inputs(keys, prices)}</div>
</div>
<h3>Answer under <span id="slo-text"></span></h3>
<div id="verdicts"></div>
<p class="note" id="curves-note"></p>
<div id="curves"><div id="plot-ttft"></div><div id="plot-tpot"></div></div>
<section id="answers"><h3>Answers (<span id="answers-count">0</span>; click a header to sort)</h3>
<table id="answers-table"><thead id="answers-head"></thead><tbody id="answers-body"></tbody></table></section>
<h3>Across shapes</h3><p class="note" id="shapes-note"></p><div id="plot-shapes"></div>
<h2>Cells</h2><details class="lazy"><summary>every cell's status ({n_failed} failed)</summary>{cells_html}</details>
<script type="application/json" id="almanac-data">{payload}</script>
<script>{_web("slo.js")}</script>
<script>{_web("explorer.js")}</script>
</body></html>"""


def main() -> None:  # pragma: no cover - convenience for `python -m llm_almanac.report`
    import sys

    print(build_report(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
