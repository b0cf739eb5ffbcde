// The report's explorer: pickers -> answers (slo.js), the answer panel, the curves, the table
// and the cross-shape view. State lives in the URL hash. Numbers and wording follow the Python
// modules named next to each function; tests/test_answers_browser.py compares them.
"use strict";

document.documentElement.dataset.scriptMs = performance.now().toFixed(0);  // page and plotly.js parsed
const D = JSON.parse(document.getElementById("almanac-data").textContent);
const OK = D.cells.filter(c => c.status === "ok");  // as answers.answers_frame: every ok cell
const NO_POINTS = {rps: [], ph: []};
const BELOW_RANGE_TEXT = "not even one request at a time meets it";  // answers.BELOW_RANGE_TEXT
const STATS = ["p50", "p90", "p95", "p99"];
const PALETTE = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692",
                 "#B6E880", "#FF97FF", "#FECB52"];
const COMBOS = [...new Set(OK.map(c => c.engine + " " + c.quant))].sort();
const $ = id => document.getElementById(id);
const uniq = xs => [...new Set(xs)];
const esc = s => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g,
  ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"})[ch]);

// --- wording and arithmetic (answers.py, summary.py, cost.py, best.py) -----------------------
function fmtRps(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toPrecision(3);
}
function answerText(maxRps, basis) {
  if (maxRps === null) return basis === "below-range" ? BELOW_RANGE_TEXT : "no measured point";
  return (basis === "above-range" ? "≥ " : "") + fmtRps(maxRps);
}
function ciRange(a) {
  return (a.ciLow === null ? "0" : fmtRps(a.ciLow)) + "–" + (a.ciHigh === null ? "∞" : fmtRps(a.ciHigh));
}
function ciText(a) { return "95% CI " + ciRange(a); }
function fmtUsd(v) {
  if (v === null) return "—";
  if (v >= 100) return "$" + Math.round(v).toLocaleString("en-US");
  return "$" + (v >= 1 ? v.toFixed(2) : v.toPrecision(3));
}
function fmt(v, d) { return v === null || v === undefined ? "—" : v.toFixed(d); }
function costs(usdH, rps, out, total, gpus) {
  const per = (amount, scale) => (usdH === null || !amount ? null : usdH / (amount * 3600) * scale);
  return {usd1mOut: per(out, 1e6), usd1mTotal: per(total, 1e6), usd1kReq: per(rps, 1000),
          gpuSReq: gpus && rps ? gpus / rps : null};
}
function replicaUsdH(cell) {
  const p = state.prices[cell.price_key];
  if (p === undefined) return cell.usd_h;
  return cell.price_key === "cpu" ? p : p * Math.max(1, cell.gpus || 0);
}
const label = r => r.cell.engine + " " + r.cell.quant;
function overlap(a, b) {
  const lo = r => (r.ciLow === null ? 0 : r.ciLow), hi = r => (r.ciHigh === null ? Infinity : r.ciHigh);
  return lo(a) <= hi(b) && lo(b) <= hi(a);
}
function verdict(rows) {
  const ranked = rows.filter(r => r.maxRps !== null).sort((a, b) => b.maxRps - a.maxRps);
  if (!ranked.length) return {best: null, runnerUp: null, overlap: null, text: "no configuration meets it"};
  if (ranked.length === 1) return {best: ranked[0], runnerUp: null, overlap: null, text: `only ${label(ranked[0])} meets it`};
  const [a, b] = ranked, o = overlap(a, b);
  return {best: a, runnerUp: b, overlap: o,
          text: o ? `no clear winner: the 95% intervals of ${label(a)} and ${label(b)} overlap` : `clear winner: ${label(a)}`};
}

// --- state <-> URL hash -------------------------------------------------------------------
const state = {model: "", engine: "any", quant: "any", shape: "", hw: "any", ttft: null, tpot: null,
               stat: "p95", prices: {}};
const num = s => (s === null || s === "" || isNaN(parseFloat(s)) ? null : parseFloat(s));

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const models = uniq(OK.map(c => c.model)).sort();
  state.model = h.get("model") || models[0] || "any";
  state.engine = h.get("engine") || "any";
  state.quant = h.get("quant") || "any";
  state.hw = h.get("hw") || "any";
  const isl = h.get("isl"), osl = h.get("osl");
  state.shape = isl && osl && isl !== "any" ? isl + "/" + osl : (isl === "any" ? "any" : "");
  const preset = D.presets[0] || {};
  const anyLimit = h.has("ttft_ms") || h.has("tpot_ms");
  state.ttft = anyLimit ? num(h.get("ttft_ms")) : (preset.ttft_ms ?? null);
  state.tpot = anyLimit ? num(h.get("tpot_ms")) : (preset.tpot_ms ?? null);
  state.stat = STATS.includes(h.get("stat")) ? h.get("stat") : "p95";
  state.prices = {};
  for (const [k, v] of h) if (k.startsWith("price_") && num(v) !== null) state.prices[k.slice(6)] = num(v);
}

function writeHash() {
  const h = new URLSearchParams();
  h.set("model", state.model);
  h.set("engine", state.engine);
  h.set("quant", state.quant);
  const [isl, osl] = state.shape === "any" || !state.shape ? ["any", "any"] : state.shape.split("/");
  h.set("isl", isl);
  h.set("osl", osl);
  h.set("hw", state.hw);
  if (state.ttft !== null) h.set("ttft_ms", String(state.ttft));
  if (state.tpot !== null) h.set("tpot_ms", String(state.tpot));
  if (state.ttft === null && state.tpot === null) h.set("ttft_ms", "");
  h.set("stat", state.stat);
  for (const [k, v] of Object.entries(state.prices)) h.set("price_" + k, String(v));
  history.replaceState(null, "", "#" + h.toString());
  $("permalink").href = location.href;
}

// --- pickers -----------------------------------------------------------------------------
function setOptions(sel, values, labels, current, fallback) {
  sel.innerHTML = values.map((v, i) => `<option value="${esc(v)}">${esc(labels ? labels[i] : v)}</option>`).join("");
  sel.value = values.includes(current) ? current : fallback;
  return sel.value;
}

function syncPickers() {
  const models = uniq(OK.map(c => c.model)).sort();
  state.model = setOptions($("f-model"), ["any", ...models], null, state.model, models[0] || "any");
  const inModel = OK.filter(c => state.model === "any" || c.model === state.model);
  const shapes = uniq(inModel.map(c => c.isl + "/" + c.osl))
    .sort((a, b) => a.split("/")[0] - b.split("/")[0] || a.split("/")[1] - b.split("/")[1]);
  state.shape = setOptions($("f-shape"), ["any", ...shapes], null, state.shape, shapes[0] || "any");
  state.engine = setOptions($("f-engine"), ["any", ...uniq(inModel.map(c => c.engine)).sort()], null, state.engine, "any");
  const quants = uniq(inModel.filter(c => state.engine === "any" || c.engine === state.engine).map(c => c.quant)).sort();
  state.quant = setOptions($("f-quantization"), ["any", ...quants], null, state.quant, "any");
  state.hw = setOptions($("f-hardware"), ["any", ...uniq(inModel.map(c => c.price_key)).sort()], null, state.hw, "any");
  $("f-ttft").value = state.ttft === null ? "" : state.ttft;
  $("f-tpot").value = state.tpot === null ? "" : state.tpot;
  $("f-stat").value = state.stat;
  document.querySelectorAll("input.price").forEach(inp => {
    inp.value = state.prices[inp.dataset.kind] ?? "";
  });
}

function readPickers() {
  state.model = $("f-model").value;
  state.engine = $("f-engine").value;
  state.quant = $("f-quantization").value;
  state.shape = $("f-shape").value;
  state.hw = $("f-hardware").value;
  state.ttft = num($("f-ttft").value);
  state.tpot = num($("f-tpot").value);
  state.stat = $("f-stat").value;
  state.prices = {};
  document.querySelectorAll("input.price").forEach(inp => {
    if (num(inp.value) !== null) state.prices[inp.dataset.kind] = num(inp.value);
  });
}

// --- answers -----------------------------------------------------------------------------
function answerFor(cell) {
  const c = D.curves[cell.mid] || NO_POINTS;  // no point measured: "no-data", as in Python
  const conds = [];
  for (const [m, lim] of [["ttft", state.ttft], ["tpot", state.tpot]]) {
    if (lim === null) continue;
    const k = m + "_" + state.stat;
    conds.push({values: c[k] || [], lo: c[k + "_lo"] || [], hi: c[k + "_hi"] || [], threshold: lim});
  }
  const a = sloAnswer(c.rps, conds);
  const at = k => (a.maxRps === null ? null : valueAt(c.rps, c[k], a.maxRps));
  const op = {ttft_p50: at("ttft_p50"), ttft_p95: at("ttft_p95"), tpot_p50: at("tpot_p50"),
              tpot_p95: at("tpot_p95"), out: at("out"), in: at("in")};
  op.total = op.out === null || op.in === null ? null : op.in + op.out;
  const usdH = replicaUsdH(cell);
  return {cell, ...a, op, usdH, cost: costs(usdH, a.maxRps, op.out, op.total, cell.gpus)};
}

function selected(cells, allShapes) {
  return cells.filter(c => (state.model === "any" || c.model === state.model)
    && (allShapes || state.shape === "any" || c.isl + "/" + c.osl === state.shape)
    && (state.engine === "any" || c.engine === state.engine)
    && (state.quant === "any" || c.quant === state.quant)
    && (state.hw === "any" || c.price_key === state.hw));
}

function sloText() {
  const parts = [];
  if (state.ttft !== null) parts.push(`TTFT ${state.stat} ≤ ${state.ttft} ms`);
  if (state.tpot !== null) parts.push(`TPOT ${state.stat} ≤ ${state.tpot} ms`);
  return parts.join(" and ");
}

// --- rendering ---------------------------------------------------------------------------
const COLUMNS = [  // [header, sort value, html]
  ["model", r => r.cell.model, r => esc(r.cell.model)],
  ["engine", r => r.cell.engine, r => esc(r.cell.engine)],
  ["version", r => r.cell.version, r => esc(r.cell.version)],
  ["quant", r => r.cell.quant, r => esc(r.cell.quant)],
  ["ISL/OSL", r => r.cell.isl * 1e6 + r.cell.osl, r => r.cell.isl + "/" + r.cell.osl],
  ["hardware", r => r.cell.price_key, r => `<span title="${esc(r.cell.hw)}">${esc(r.cell.price_key)}</span>`],
  ["max req/s", r => r.maxRps, r => `<b class="answer">${esc(r.failed ? "failed" : answerText(r.maxRps, r.basis))}</b>`],
  ["95% CI", r => r.ciLow, r => (r.maxRps === null ? "—" : ciRange(r))],
  ["basis", r => r.basis, r => esc(r.basis)],
  ["TTFT p50/p95 ms @", r => r.op && r.op.ttft_p95, r => (r.op ? fmt(r.op.ttft_p50, 0) + " / " + fmt(r.op.ttft_p95, 0) : "—")],
  ["TPOT p50/p95 ms @", r => r.op && r.op.tpot_p95, r => (r.op ? fmt(r.op.tpot_p50, 1) + " / " + fmt(r.op.tpot_p95, 1) : "—")],
  ["out / total tok/s @", r => r.op && r.op.out, r => (r.op ? fmt(r.op.out, 1) + " / " + fmt(r.op.total, 1) : "—")],
  ["out tok/s per GPU", r => r.op && r.cell.gpus ? r.op.out / r.cell.gpus : null,
   r => (r.op && r.cell.gpus && r.op.out !== null ? fmt(r.op.out / r.cell.gpus, 1) : "—")],
  ["$/1M out tok", r => r.cost && r.cost.usd1mOut, r => usdCell(r, "usd1mOut")],
  ["$/1M tok", r => r.cost && r.cost.usd1mTotal, r => usdCell(r, "usd1mTotal")],
  ["$/1k req", r => r.cost && r.cost.usd1kReq, r => usdCell(r, "usd1kReq")],
  ["GPU-s/req", r => r.cost && r.cost.gpuSReq, r => (r.cost ? fmt(r.cost.gpuSReq, 2) : "—")],
  ["commands", r => r.cell.id, r => `<details><summary>${esc(r.cell.id)}</summary><div>measurement: <code>${
    esc(r.cell.mid)}</code></div><div>server: <code>${
    esc(r.cell.server)}</code></div><div>reproduce: <code>${esc(r.cell.reproduce)}</code></div>${
    r.failed ? `<pre>${esc(r.cell.error)}</pre>` : ""}</details>`],
];
let sortBy = {col: 6, desc: true};

function usdCell(r, k) {
  if (!r.cost || r.cost[k] === null) return "—";
  return `<span title="${esc(r.cell.price)}">${r.basis === "above-range" ? "≤ " : ""}${fmtUsd(r.cost[k])}</span>`;
}

function renderTable(rows) {
  const key = COLUMNS[sortBy.col][1];
  const sorted = rows.slice().sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * (sortBy.desc ? -1 : 1);
  });
  $("answers-head").innerHTML = "<tr>" + COLUMNS.map((c, i) =>
    `<th data-col="${i}" class="${i === sortBy.col ? (sortBy.desc ? "desc" : "asc") : ""}">${c[0]}</th>`).join("") + "</tr>";
  $("answers-body").innerHTML = sorted.map(r => `<tr class="answer-row${r.failed ? " failed" : ""}" data-cell-id="${
    esc(r.cell.id)}" data-max-rps="${r.maxRps === null ? "" : r.maxRps}" data-basis="${esc(r.basis)}" data-ci-low="${
    r.ciLow === null || r.ciLow === undefined ? "" : r.ciLow}" data-ci-high="${r.ciHigh === null || r.ciHigh === undefined ? "" : r.ciHigh
    }" data-measurement-id="${esc(r.cell.mid)}">${
    COLUMNS.map(c => `<td>${c[2](r)}</td>`).join("")}</tr>`).join("");
  $("answers-count").textContent = rows.length;
}

function renderVerdicts(rows) {
  const groups = new Map();
  for (const r of rows) {
    if (r.failed) continue;
    const k = [r.cell.model, r.cell.isl, r.cell.osl, r.cell.price_key].join("|");
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  const out = [];
  for (const [k, g] of groups) {
    const [model, isl, osl, kind] = k.split("|");
    const v = verdict(g);
    const who = r => `<b>${esc(label(r))}</b> (${esc(r.cell.version)}) ${esc(answerText(r.maxRps, r.basis))} req/s (${ciText(r)})`;
    let html = `<div class="verdict" data-group="${esc(k)}" data-verdict="${esc(v.text)}" data-best-cell-id="${
      v.best ? esc(v.best.cell.id) : ""}" data-runner-up-cell-id="${v.runnerUp ? esc(v.runnerUp.cell.id) : ""
      }" data-best-measurement-id="${v.best ? esc(v.best.cell.mid) : ""}" data-runner-up-measurement-id="${
      v.runnerUp ? esc(v.runnerUp.cell.mid) : ""}">`;
    html += `<div class="vhead">${esc(model)} · ISL ${isl} / OSL ${osl} · ${esc(kind)}: <span class="vtext">${esc(v.text)}</span></div>`;
    if (v.best) {
      const b = v.best, le = b.basis === "above-range" ? "≤ " : "";
      html += `<div>best: ${who(b)}${v.runnerUp ? `; runner-up: ${who(v.runnerUp)}` : ""}</div>`;
      html += `<div class="op">at that load: TTFT p50/p95 ${fmt(b.op.ttft_p50, 0)}/${fmt(b.op.ttft_p95, 0)} ms, TPOT p50/p95 ${
        fmt(b.op.tpot_p50, 1)}/${fmt(b.op.tpot_p95, 1)} ms, ${fmt(b.op.out, 1)} output tok/s (${fmt(b.op.total, 1)} in+out)` +
        (b.cost.usd1mOut !== null ? `; ${le}${fmtUsd(b.cost.usd1mOut)} per 1M output tokens, ${le}${fmtUsd(b.cost.usd1mTotal)} per 1M tokens, ${
          le}${fmtUsd(b.cost.usd1kReq)} per 1k requests <span class="price">(${esc(Object.hasOwn(state.prices, b.cell.price_key)
          ? "$" + state.prices[b.cell.price_key] + "/h " + (b.cell.price_key === "cpu" ? "per machine" : "per GPU") + ", from this page"
          : b.cell.price)})</span>` : `; <span class="price">${esc(b.cell.price)}</span>`) + "</div>";
      html += `<div class="cmd">server: <code>${esc(b.cell.server)}</code><br>reproduce: <code>${esc(b.cell.reproduce)}</code></div>`;
    }
    out.push(html + "</div>");
  }
  $("verdicts").innerHTML = out.join("") || "<p>No configuration matches these pickers.</p>";
}

function traceName(c) { return `${c.engine} ${c.version} ${c.quant}`; }

// Only the charts the current pickers fill are drawn: an empty one costs plotly as much to lay
// out as a full one (its first draw is most of the page's own start-up), so it is removed and
// hidden instead, and drawn again when the pickers give it something to show.
function drawPlot(id, traces, layout) {
  const el = $(id);
  el.style.display = "";
  Plotly.react(el, traces, layout, {displaylogo: false, responsive: true});
}
function clearPlot(id) {
  const el = $(id);
  if (el._fullLayout) Plotly.purge(el);
  el.style.display = "none";
}
function colorOf(c) { return PALETTE[COMBOS.indexOf(c.engine + " " + c.quant) % PALETTE.length]; }

function renderCurves(rows) {
  const specific = state.model !== "any" && state.shape !== "any";
  const drawn = specific ? rows.filter(x => !x.failed && D.curves[x.cell.mid]) : [];
  // one cell measured more than once (a merged database: two hosts, two runs): say which is which
  const names = drawn.map(r => traceName(r.cell));
  const nameOf = cell => {
    const n = traceName(cell);
    return names.indexOf(n) === names.lastIndexOf(n) ? n : `${n} (${[cell.hw_kind, cell.run].filter(Boolean).join(", ") || cell.mid})`;
  };
  $("curves-note").textContent = !specific ? "Pick one model and one shape to see their curves."
    : drawn.length ? "" : "No curve to draw for these pickers.";
  for (const [m, div, lim] of [["ttft", "plot-ttft", state.ttft], ["tpot", "plot-tpot", state.tpot]]) {
    const traces = [];
    if (!drawn.length) {
      clearPlot(div);
      continue;
    }
    for (const r of drawn) {
      const c = D.curves[r.cell.mid], color = colorOf(r.cell);
      const stats = ["p50", "p95"].concat(["p50", "p95"].includes(state.stat) ? [] : [state.stat]);
      for (const s of stats) {
        traces.push({x: c.rps, y: c[m + "_" + s], mode: "lines+markers", type: "scatter",
                     line: {color, dash: s === "p50" ? "solid" : s === "p95" ? "dot" : "dash"},
                     name: `${nameOf(r.cell)} ${s}`, legendgroup: r.cell.mid, hovertext: c.ph});
      }
      if (r.maxRps !== null && lim !== null) {
        traces.push({x: [r.maxRps], y: [valueAt(c.rps, c[m + "_" + state.stat], r.maxRps)], mode: "markers",
                     type: "scatter", marker: {symbol: "star", size: 15, color, line: {color: "#000", width: 1}},
                     name: `${nameOf(r.cell)}: ${answerText(r.maxRps, r.basis)} req/s`, legendgroup: r.cell.mid,
                     showlegend: false});
      }
    }
    const title = m === "ttft" ? "TTFT" : "TPOT";
    const layout = {title: {text: `${title} vs achieved requests/s`}, height: 400, margin: {t: 50, r: 10},
                    xaxis: {title: {text: "achieved requests/s"}, rangemode: "tozero"},
                    yaxis: {title: {text: `${title} (ms)`}, rangemode: "tozero"},
                    legend: {orientation: "h", y: -0.25}, shapes: [], annotations: []};
    if (lim !== null && traces.length) {
      layout.shapes.push({type: "line", xref: "paper", x0: 0, x1: 1, y0: lim, y1: lim,
                          line: {color: "#d62728", width: 2, dash: "dash"}});
      layout.annotations.push({xref: "paper", x: 1, y: lim, xanchor: "right", yanchor: "bottom", showarrow: false,
                               text: `SLO: ${title} ${state.stat} ≤ ${lim} ms`, font: {color: "#d62728"}});
    }
    drawPlot(div, traces, layout);
  }
}

function renderShapes() {
  const div = "plot-shapes";
  if (state.model === "any") {
    $("shapes-note").textContent = "Pick one model to compare its shapes.";
    clearPlot(div);
    return;
  }
  $("shapes-note").textContent = "";
  const rows = selected(OK, true).map(answerFor);
  const shapes = uniq(rows.map(r => r.cell.isl + "/" + r.cell.osl))
    .sort((a, b) => a.split("/")[0] - b.split("/")[0] || a.split("/")[1] - b.split("/")[1]);
  const groups = new Map();
  for (const r of rows) {
    const base = `${traceName(r.cell)} · ${r.cell.price_key}`, shape = r.cell.isl + "/" + r.cell.osl;
    let k = base;  // a configuration measured twice at one shape (a merged database): a second series
    for (let i = 2; groups.has(k) && groups.get(k).by[shape]; i++) k = `${base} #${i}`;
    if (!groups.has(k)) groups.set(k, {cell: r.cell, by: {}});
    groups.get(k).by[shape] = r;
  }
  const traces = [...groups].map(([name, g]) => {
    const pts = shapes.map(s => g.by[s] || null);
    return {type: "bar", name, x: shapes, marker: {color: colorOf(g.cell)},
            y: pts.map(r => (r ? r.maxRps : null)),
            text: pts.map(r => (!r ? "" : r.maxRps === null ? "none" : answerText(r.maxRps, r.basis))),
            textposition: "outside", cliponaxis: false,
            error_y: {type: "data", symmetric: false, visible: true,
                      array: pts.map(r => (r && r.maxRps !== null && r.ciHigh !== null ? r.ciHigh - r.maxRps : 0)),
                      arrayminus: pts.map(r => (r && r.maxRps !== null && r.ciLow !== null ? r.maxRps - r.ciLow : 0))}};
  });
  drawPlot(div, traces, {
    title: {text: `${state.model}: max requests/s under ${sloText() || "no SLO"} across shapes (ISL/OSL)`},
    barmode: "group", height: 420, margin: {t: 50}, xaxis: {title: {text: "ISL/OSL"}, type: "category"},
    yaxis: {title: {text: "requests/s (95% CI)"}, rangemode: "tozero"}, legend: {orientation: "h", y: -0.2}});
}

function render(deferShapes = false) {
  const hasSlo = state.ttft !== null || state.tpot !== null;
  $("slo-text").textContent = hasSlo ? sloText() : "no SLO: give a TTFT and/or a TPOT limit";
  const rows = hasSlo ? selected(OK, false).map(answerFor) : [];
  const failed = selected(D.cells.filter(c => c.status !== "ok"), false)
    .map(cell => ({cell, failed: true, maxRps: null, basis: "failed", ciLow: null, ciHigh: null, op: null, cost: null}));
  renderVerdicts(rows);
  renderTable(rows.concat(failed));
  renderCurves(rows);
  if (deferShapes) setTimeout(() => {  // below the fold: drawn right after the first view
    renderShapes();
    document.documentElement.dataset.completeMs = performance.now().toFixed(0);
  }, 0);
  else renderShapes();
  document.documentElement.dataset.renders = String(Number(document.documentElement.dataset.renders || 0) + 1);
}

function onPicker() {
  readPickers();
  syncPickers();
  writeHash();
  render();
}

function init() {
  readHash();
  syncPickers();
  writeHash();
  for (const id of ["f-model", "f-engine", "f-quantization", "f-shape", "f-hardware", "f-stat"]) {
    $(id).addEventListener("change", onPicker);
  }
  for (const el of [$("f-ttft"), $("f-tpot"), ...document.querySelectorAll("input.price")]) {
    el.addEventListener("input", onPicker);
  }
  document.querySelectorAll("button.preset").forEach(b => b.addEventListener("click", () => {
    state.ttft = num(b.dataset.ttft);
    state.tpot = num(b.dataset.tpot);
    state.stat = b.dataset.stat;
    syncPickers();
    writeHash();
    render();
  }));
  $("answers-head").addEventListener("click", e => {
    const th = e.target.closest("th");
    if (!th) return;
    const col = Number(th.dataset.col);
    sortBy = {col, desc: sortBy.col === col ? !sortBy.desc : true};
    render();
  });
  document.querySelectorAll("details.lazy").forEach(d => d.addEventListener("toggle", () => {
    const t = d.querySelector(":scope > template");  // long folded content waits inert until opened
    if (t && d.open) t.replaceWith(t.content);
  }));
  window.addEventListener("hashchange", () => {
    readHash();
    syncPickers();
    render();
  });
  render(true);
  // interactive: pickers wired, answers, verdicts, table and curves drawn (the cross-shape chart
  // follows in the next task: data-complete-ms); benchmarks/report_scale.py reads both
  document.documentElement.dataset.interactiveMs = performance.now().toFixed(0);
}

window.almanac = {state, answerFor, render, verdict};
init();
