// A port of src/llm_almanac/slo.py (max_rps_under, lowest, answer) and of answers.value_at.
// Same steps, same floating-point operations in the same order, so that the report's answers
// equal the CLI's to the bit (tests/test_answers_browser.py checks it). Change both together.
"use strict";

function maxRpsUnder(points, threshold) {
  // points: [rps, statistic] pairs; a null statistic fails. Stable sort by rate, as Python's.
  const pts = points.filter(p => p[0] !== null && p[0] > 0).sort((a, b) => a[0] - b[0]);
  if (!pts.length) return {maxRps: null, basis: "no-data"};
  const ok = v => v !== null && v <= threshold;
  let i = -1;
  pts.forEach((p, k) => { if (ok(p[1])) i = k; });
  if (i < 0) return {maxRps: null, basis: "below-range"};
  if (i === pts.length - 1) return {maxRps: pts[i][0], basis: "above-range"};
  const [r1, v1] = pts[i], [r2, v2] = pts[i + 1];
  if (v1 === threshold || v2 === null || v2 === v1) return {maxRps: r1, basis: "measured"};
  const rps = r1 + (threshold - v1) * (r2 - r1) / (v2 - v1);
  return {maxRps: Math.min(Math.max(rps, r1), r2), basis: "interpolated"};
}

function lowest(rps, conds) {
  // conds: [values, threshold]; all must hold: the first met nowhere decides, else the lowest.
  let best = null;
  for (const [values, threshold] of conds) {
    const res = maxRpsUnder(rps.map((r, k) => [r, values[k]]), threshold);
    if (res.maxRps === null) return res;
    if (best === null || res.maxRps < best.maxRps) best = res;
  }
  return best;
}

function sloAnswer(rps, conditions) {
  // conditions: {values, lo, hi, threshold}; the interval reads every point at the high
  // (pessimistic) and the low (optimistic) end of its statistic's 95% interval.
  const end = (c, bound) => c.values.map((v, k) => (bound[k] === null ? v : bound[k]));
  const res = lowest(rps, conditions.map(c => [c.values, c.threshold]));
  if (res.maxRps === null) return {maxRps: null, basis: res.basis, ciLow: null, ciHigh: null};
  const pess = lowest(rps, conditions.map(c => [end(c, c.hi), c.threshold]));
  const opt = lowest(rps, conditions.map(c => [end(c, c.lo), c.threshold]));
  return {maxRps: res.maxRps, basis: res.basis, ciLow: pess.maxRps,
          ciHigh: opt.basis === "above-range" ? null : opt.maxRps};
}

function valueAt(rps, values, r) {
  // answers.value_at: linear interpolation between the adjacent measured points around r.
  const pts = rps.map((x, k) => [x, values[k]]).filter(p => p[0] !== null && p[0] > 0)
    .sort((a, b) => a[0] - b[0]);
  for (let i = 0; i < pts.length; i++) {
    const [x, v] = pts[i];
    if (r <= x) {
      if (r === x || i === 0) return v;
      const [x0, v0] = pts[i - 1];
      if (v0 === null || v === null) return null;
      return v0 + (r - x0) * (v - v0) / (x - x0);
    }
  }
  return pts.length ? pts[pts.length - 1][1] : null;
}
