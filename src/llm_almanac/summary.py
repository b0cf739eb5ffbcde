"""The executive summary (`almanac summary`, and the top of the report), written from the data.

Per model and shape (and price key, the GPU model or cpu): under each SLO the best configuration, the margin to
the runner-up and whether their 95% intervals tell them apart (best.py), and the cost per
million tokens at the best's operating point. Per model: how capacity under the first SLO moves
with the prompt length and with the output length (prefill vs decode), from pairs of measured
shapes that differ in one of them only, as the change per doubling:
  (capacity_b / capacity_a) ** (1 / log2(length_b / length_a)) - 1
Pairs where either answer is missing or a lower bound are left out (and counted). Nothing here
is written by hand: every sentence is a template filled from the answers.

It is built as blocks (heading, paragraph, bullet), rendered to markdown or to HTML.
"""

from __future__ import annotations

import html
import math
import re
import statistics
from typing import Any

from . import best
from .answers import SLO, answer_text, fmt_rps

Block = tuple[str, str]  # (h1|h2|h3|p|li, text with **bold**)


def fmt_usd(v: float | None) -> str:
    if v is None:
        return "—"
    return f"${v:,.0f}" if v >= 100 else f"${v:.2f}" if v >= 1 else f"${v:#.3g}"


def ci_range(row: dict[str, Any]) -> str:
    """'1.50–1.80'; a missing low end is 0 (nothing met it pessimistically), a missing high end
    ∞ (everything met it optimistically)."""
    lo, hi = row.get("ci_low_rps"), row.get("ci_high_rps")
    return f"{'0' if lo is None else fmt_rps(lo)}–{'∞' if hi is None else fmt_rps(hi)}"


def ci_text(row: dict[str, Any]) -> str:
    return "95% CI " + ci_range(row)


def _config(row: dict[str, Any]) -> str:
    return f"**{row['engine']} {row['quantization']}** ({row['engine_version']})"


def slo_sentence(slo: SLO, rows: list[dict[str, Any]]) -> str:
    """One bullet: the best under `slo` among `rows` (one model x shape x price key)."""
    v = best.verdict(rows)
    head = f"**{slo.text()}**: "
    if v.best is None:
        return head + f"no configuration meets it ({answer_text(None, 'below-range')})."
    b = v.best
    s = head + f"{_config(b)} holds **{answer_text(b['max_rps'], b['basis'])} req/s** ({ci_text(b)})"
    if v.runner_up is None:
        missing = len(rows) - 1
        s += "; it is the only configuration that meets it" + (f" ({missing} others do not)" if missing else "")
    else:
        r = v.runner_up
        them = f"{r['engine']} {r['quantization']} at {answer_text(r['max_rps'], r['basis'])} ({ci_text(r)})"
        if r["lower_bound"]:  # the runner-up may hold more than it says: no margin to state
            s += f", ahead of {them}: "
        else:
            s += f", {'at least ' if b['lower_bound'] else ''}{best.margin_pct(b, r):.0f}% more than {them}: "
        s += ("**no clear winner**, the intervals overlap" if v.overlap else "**clear winner**, the intervals are apart")
    s += "."
    if b.get("usd_per_1m_output_tokens") is not None:
        bound = "at most " if b["lower_bound"] else ""
        s += (f" At that load {bound}{fmt_usd(b['usd_per_1m_output_tokens'])} per 1 M output tokens, "
              f"{fmt_usd(b['usd_per_1m_total_tokens'])} per 1 M tokens in and out (at {b['price']}).")
    return s


def _per_doubling(a: float, b: float, len_a: int, len_b: int) -> float:
    return ((b / a) ** (1 / math.log2(len_b / len_a)) - 1) * 100


def shape_contrast(slo: SLO, rows: list[dict[str, Any]]) -> list[Block]:
    """Prefill vs decode for one model's rows under `slo` (module docstring)."""
    by_conf: dict[tuple, dict[tuple[int, int], dict[str, Any]]] = {}
    for r in rows:
        by_conf.setdefault((r["engine"], r["quantization"], r["price_key"]), {})[(r["isl"], r["osl"])] = r
    prompt, output, skipped = [], [], 0
    for shapes in by_conf.values():
        for (i1, o1), a in shapes.items():
            for (i2, o2), b in shapes.items():
                if not ((o1 == o2 and i2 > i1) or (i1 == i2 and o2 > o1)):
                    continue
                if a["max_rps"] is None or b["max_rps"] is None or a["lower_bound"] or b["lower_bound"]:
                    skipped += 1
                    continue
                if o1 == o2:
                    prompt.append(_per_doubling(a["max_rps"], b["max_rps"], i1, i2))
                else:
                    output.append(_per_doubling(a["max_rps"], b["max_rps"], o1, o2))
    shapes_seen = sorted({(r["isl"], r["osl"]) for r in rows})
    out: list[Block] = []
    if not prompt and not output:
        listed = ", ".join(f"{i}/{o}" for i, o in shapes_seen)
        out.append(("p", f"The measured shapes ({listed}) never change the prompt or the output length alone, "
                   "so prefill and decode cannot be told apart here. Capacity by shape under "
                   f"{slo.text()}:"))
        def cap(r: dict[str, Any]) -> str:
            return "none" if r["max_rps"] is None else f"{answer_text(r['max_rps'], r['basis'])} req/s"

        for (eng, quant, kind), shapes in by_conf.items():
            vals = ", ".join(f"{i}/{o}: {cap(shapes[(i, o)])}" for i, o in shapes_seen if (i, o) in shapes)
            out.append(("li", f"{eng} {quant} on {kind}: {vals}."))
        return out
    parts = []
    if prompt:
        parts.append(f"doubling the prompt changes capacity by **{statistics.median(prompt):+.0f}%** "
                     f"(median of {len(prompt)} comparisons)")
    if output:
        parts.append(f"doubling the output changes it by **{statistics.median(output):+.0f}%** "
                     f"(median of {len(output)})")
    s = f"Under {slo.text()}, " + " and ".join(parts) + "."
    if prompt and output:
        p, o = abs(statistics.median(prompt)), abs(statistics.median(output))
        s += (" Longer prompts cost far less capacity than longer outputs." if p < o / 2 else
              " Longer outputs cost far less capacity than longer prompts." if o < p / 2 else
              " Longer prompts and longer outputs cost capacity alike.")
    if skipped:
        s += f" ({skipped} pair(s) left out: an answer was missing or a lower bound.)"
    return [("p", s)]


def blocks(answers: list[dict[str, Any]], slos: list[SLO], n_cells: int, n_failed: int,
           failed: list[dict[str, Any]] | None = None) -> list[Block]:
    """The summary of `answers` (answers.py rows of every ok cell x each of `slos`); `failed`:
    the cells-table rows of failed cells, named with the first line of their error."""
    ok_cells = {a["measurement_id"] for a in answers}
    models = sorted({a["model"] for a in answers})
    kinds = sorted({a["price_key"] for a in answers})
    out: list[Block] = [("h1", "Executive summary")]
    out.append(("p", f"{len(ok_cells)} of {n_cells} configurations measured ({n_failed} failed): "
                     f"{len(models)} model(s), engines {', '.join(sorted({a['engine'] for a in answers})) or '—'}, "
                     f"{len({(a['isl'], a['osl']) for a in answers})} shape(s) (ISL/OSL), on {', '.join(kinds) or '—'}. "
                     "Capacity is the most requests per second one replica holds under the SLO, with its "
                     "95% interval; ≥ marks a lower bound (every measured rate met the SLO). "
                     "Written by `almanac summary` from the database."))
    for model in models:
        out.append(("h2", model))
        mrows = [a for a in answers if a["model"] == model]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for a in mrows:
            groups.setdefault((a["isl"], a["osl"], a["price_key"]), []).append(a)
        for (isl, osl, kind) in sorted(groups):
            out.append(("h3", f"ISL {isl} / OSL {osl} on {kind}"))
            for s in slos:
                out.append(("li", slo_sentence(s, [a for a in groups[(isl, osl, kind)] if a["slo"] == s.name])))
        if slos:
            out.append(("h3", "Prefill vs decode"))
            out += shape_contrast(slos[0], [a for a in mrows if a["slo"] == slos[0].name])
    if not models:
        out.append(("p", "No configuration was measured successfully, so there is nothing to compare yet."))
    if failed:
        out.append(("h2", "Not measured"))
        for c in failed:
            why = (c.get("error") or "no reason recorded").strip().splitlines()[0][:200]
            out.append(("li", f"{c['model']} {c['engine']} {c['quantization']} at {c['isl']}/{c['osl']}: {why}"))
    return out


def to_markdown(bs: list[Block]) -> str:
    prefix = {"h1": "# ", "h2": "## ", "h3": "### ", "li": "- ", "p": ""}
    lines: list[str] = []
    for kind, text in bs:
        if kind != "li" and lines and lines[-1] != "":
            lines.append("")
        lines.append(prefix[kind] + text)
        if kind != "li":
            lines.append("")
    return "\n".join(lines).strip() + "\n"


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text)))


def to_html(bs: list[Block]) -> str:
    out, in_list = [], False
    for kind, text in bs:
        if kind == "li" and not in_list:
            out.append("<ul>")
            in_list = True
        if kind != "li" and in_list:
            out.append("</ul>")
            in_list = False
        tag = {"h1": "h2", "h2": "h3", "h3": "h4"}.get(kind, kind)  # the page has its own h1
        out.append(f"<{tag}>{_inline(text)}</{tag}>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out)
