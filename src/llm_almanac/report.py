"""results/report.html: one self-contained page (plotly.js embedded; opens without network).

- latency-throughput curves: TTFT and TPOT (p50 and p95) against achieved rps, one panel pair
  per (model, shape), engines and quantizations overlaid;
- SLO-bounded throughput: max rps per cell and SLO with its confidence interval as error bars;
- the SLO table with filters (model, engine, quantization, shape, SLO) and every cell's
  reproduce command; failed cells with their reason.
"""

from __future__ import annotations

import html
from pathlib import Path

import duckdb
import plotly.colors as px_colors
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from .db import frame
from .files import write_text

PALETTE = px_colors.qualitative.Plotly

CURVE_SQL = """
SELECT c.cell_id, c.model, c.engine, c.quantization, c.isl, c.osl, p.phase, p.step,
       p.rps, p.ttft_p50_ms, p.ttft_p95_ms, p.tpot_p50_ms, p.tpot_p95_ms
FROM phases p JOIN cells c USING (cell_id)
WHERE c.status = 'ok' AND p.n_ok > 0
ORDER BY c.model, c.isl, c.osl, c.engine, c.quantization, p.rps
"""

SLO_SQL = """
SELECT c.model, c.engine, c.quantization, c.isl, c.osl, s.slo, s.max_rps, s.ci_low_rps,
       s.ci_high_rps, s.basis, c.cell_id, c.reproduce
FROM slo s JOIN cells c USING (cell_id)
ORDER BY c.model, c.isl, c.osl, s.slo, c.engine, c.quantization
"""


def _curves(con: duckdb.DuckDBPyConnection) -> list[go.Figure]:
    rows = frame(con, CURVE_SQL)
    figs = []
    for (model, isl, osl), grp in rows.group_by(["model", "isl", "osl"], maintain_order=True):
        fig = make_subplots(rows=1, cols=2, subplot_titles=("TTFT vs throughput", "TPOT vs throughput"))
        for i, ((engine, quant), g) in enumerate(grp.group_by(["engine", "quantization"], maintain_order=True)):
            color = PALETTE[i % len(PALETTE)]  # one colour per engine+quantization in both panels
            for col, metric in enumerate(("ttft", "tpot"), start=1):
                for stat, d in (("p50", "solid"), ("p95", "dot")):
                    fig.add_trace(go.Scatter(
                        x=g["rps"].to_list(), y=g[f"{metric}_{stat}_ms"].to_list(),
                        mode="lines+markers", line={"dash": d, "color": color},
                        name=f"{engine} {quant} {stat}", legendgroup=f"{engine}{quant}{stat}",
                        showlegend=col == 1,
                        hovertext=[f"{p}[{s}]" for p, s in zip(g["phase"], g["step"])],
                    ), row=1, col=col)
        fig.update_xaxes(title_text="achieved requests/s")
        fig.update_yaxes(title_text="TTFT (ms)", row=1, col=1)
        fig.update_yaxes(title_text="TPOT (ms)", row=1, col=2)
        fig.update_layout(title=f"{model} — ISL {isl} / OSL {osl}", height=420, margin={"t": 70})
        figs.append(fig)
    return figs


def _slo_figures(con: duckdb.DuckDBPyConnection) -> list[go.Figure]:
    rows = frame(con, SLO_SQL).filter(pl.col("max_rps").is_not_null())
    figs = []
    for (slo,), g in rows.group_by(["slo"], maintain_order=True):
        labels = [f"{m} {e} {q} {i}/{o}" for m, e, q, i, o in
                  zip(g["model"], g["engine"], g["quantization"], g["isl"], g["osl"])]
        lo = [(v - low) if low is not None else 0 for v, low in zip(g["max_rps"], g["ci_low_rps"])]
        hi = [(h - v) if h is not None else 0 for v, h in zip(g["max_rps"], g["ci_high_rps"])]
        fig = go.Figure(go.Bar(x=labels, y=g["max_rps"].to_list(),
                               error_y={"type": "data", "array": hi, "arrayminus": lo},
                               hovertext=g["basis"].to_list()))
        fig.update_layout(title=f"max requests/s under {slo} (95% CI)", yaxis_title="requests/s",
                          height=380)
        figs.append(fig)
    return figs


_FILTER_JS = """
function applyFilters() {
  const sel = {};
  document.querySelectorAll('select.flt').forEach(s => { sel[s.dataset.col] = s.value; });
  let shown = 0;
  document.querySelectorAll('#slo-table tbody tr').forEach(tr => {
    const ok = Object.entries(sel).every(([c, v]) => !v || tr.dataset[c] === v);
    tr.style.display = ok ? '' : 'none';
    shown += ok;
  });
  document.getElementById('slo-count').textContent = shown;
}
"""


def _fmt(v, d=3):
    return "—" if v is None else f"{v:.{d}f}"


def _slo_table(con: duckdb.DuckDBPyConnection) -> str:
    rows = frame(con, SLO_SQL)
    filters = []
    for col, label in (("model", "model"), ("engine", "engine"), ("quantization", "quantization"),
                       ("shape", "shape"), ("slo", "SLO")):
        vals = sorted({f"{i}/{o}" for i, o in zip(rows["isl"], rows["osl"])}) if col == "shape" \
            else sorted(set(rows[col].to_list()))
        opts = "".join(f'<option value="{html.escape(str(v))}">{html.escape(str(v))}</option>' for v in vals)
        filters.append(f'<label>{label} <select class="flt" id="f-{col}" data-col="{col}" '
                       f'onchange="applyFilters()"><option value="">all</option>{opts}</select></label>')
    body = []
    for r in rows.iter_rows(named=True):
        shape = f"{r['isl']}/{r['osl']}"
        ci = "—" if r["ci_low_rps"] is None else f"{r['ci_low_rps']:.3f} – {r['ci_high_rps']:.3f}"
        data = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in (
            ("model", r["model"]), ("engine", r["engine"]), ("quantization", r["quantization"]),
            ("shape", shape), ("slo", r["slo"])))
        body.append(
            f"<tr {data}><td>{html.escape(r['model'])}</td><td>{html.escape(r['engine'])}</td>"
            f"<td>{html.escape(r['quantization'])}</td><td>{shape}</td><td>{html.escape(r['slo'])}</td>"
            f"<td class=num>{_fmt(r['max_rps'])}</td><td class=num>{ci}</td><td>{r['basis']}</td>"
            f"<td><code>{html.escape(r['reproduce'] or '')}</code></td></tr>")
    return (f'<div class="filters">{"".join(filters)} <span><b id="slo-count">{len(rows)}</b> rows</span></div>'
            '<table id="slo-table"><thead><tr><th>model</th><th>engine</th><th>quant</th><th>ISL/OSL</th>'
            '<th>SLO</th><th>max rps</th><th>95% CI</th><th>basis</th><th>reproduce</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _cells_table(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute(
        "SELECT cell_id, status, engine_version, hardware, startup_s, concat_ws(' ', CASE WHEN notes NOT IN ('', '[]') "
        "THEN 'notes: ' || notes END, error) FROM cells ORDER BY cell_id").fetchall()
    body = "".join(
        f"<tr class='{s}'><td>{html.escape(c)}</td><td>{s}</td><td>{html.escape(v or '')}</td>"
        f"<td>{html.escape(h or '')}</td><td class=num>{_fmt(st, 1)}</td>"
        f"<td><pre>{html.escape((e or '')[:600])}</pre></td></tr>"
        for c, s, v, h, st, e in rows)
    return ("<table id='cells-table'><thead><tr><th>cell</th><th>status</th><th>engine version</th>"
            f"<th>hardware</th><th>startup s</th><th>notes, error</th></tr></thead><tbody>{body}</tbody></table>")


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0 24px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed{background:#fff0f0} pre{margin:0;white-space:pre-wrap;max-width:60em}
.filters label{margin-right:14px} code{font-size:11px}
"""


def build_report(db_path: str | Path, out_path: str | Path) -> Path:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        curve_figs = _curves(con)
        slo_figs = _slo_figures(con)
        slo_table = _slo_table(con)
        cells_table = _cells_table(con)
        n_cells, n_ok = frame(con, "SELECT count(*) AS n, count(*) FILTER (WHERE status='ok') AS ok FROM cells").row(0)
    finally:
        con.close()
    embedded = [False]

    def render(figs: list[go.Figure], empty: str) -> str:
        if not figs:
            return f"<p>{empty}</p>"
        out = []
        for fig in figs:  # plotly.js goes inline once, with the first figure
            out.append(fig.to_html(full_html=False, include_plotlyjs=not embedded[0],
                                   config={"displaylogo": False}))
            embedded[0] = True
        return "".join(out)

    curves_html = render(curve_figs, "No successful cell to plot.")
    slo_html = render(slo_figs, "No cell meets any SLO.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>llm-almanac report</title>
<style>{CSS}</style><script>{_FILTER_JS}</script></head><body>
<h1>llm-almanac report</h1>
<p>{n_ok} of {n_cells} cells ok. Definitions: docs/methodology.md. Data: {html.escape(str(db_path))}.</p>
<h2>Latency vs throughput</h2>{curves_html}
<h2>Requests per second under latency SLOs</h2>{slo_html}
{slo_table}
<h2>Cells</h2>{cells_table}
</body></html>"""
    out = Path(out_path)
    write_text(out, page)
    return out


def main() -> None:  # pragma: no cover - convenience for `python -m llm_almanac.report`
    import sys

    print(build_report(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
