"""An answer = (measurement, SLO) -> the most requests per second one replica holds under the SLO, with
its 95% interval and basis, the latency and tokens/s at that operating point, what it costs
there, and the commands that reproduce it. One definition for every surface: the aggregate
writes it to the `answers` table, `almanac slo|plan|summary` compute it with these functions,
and the report's in-browser port (web/slo.js) is tested against them.

A measurement (identity.py: one run of a cell on one hardware kind) is the unit, as in every
other table: the `answers` and `curve` tables are keyed by `measurement_id` and keep `cell_id`
as a column, so a merged database holding a cell measured twice answers for each measurement.

- max_rps, basis, interval: slo.answer over the cell's curve points (curve.py).
- operating point: every other statistic (TTFT and TPOT p50/p95, output/input tokens/s) is read
  off the same curve at max_rps by the rule slo.py uses to find it: linear interpolation in
  achieved rps between the two adjacent measured points around it (a measured point's own value
  when it sits on one). `above-range` reads the highest-rate point, `below-range` has no point.
- wording: an above-range max_rps is a lower bound, shown "≥ 1.63" everywhere, and its costs and
  replica counts are upper bounds; a below-range SLO has no answer: "not even one request at a
  time meets it".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from . import cost, db, tables
from . import curve as curve_mod
from . import slo as slo_mod
from .cost import Price

BELOW_RANGE_TEXT = "not even one request at a time meets it"
NO_DATA_TEXT = "no measured point"
OPERATING_POINT = ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms")


@dataclass(frozen=True)
class SLO:
    """A named SLO: every (metric, threshold_ms) condition must hold."""
    name: str
    conditions: tuple[tuple[str, float], ...]

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> SLO:
        conds = tuple((c["metric"], float(c["threshold_ms"])) for c in d["conditions"])
        return cls(d.get("name") or "+".join(f"{m}<={t:g}" for m, t in conds), conds)

    @classmethod
    def from_limits(cls, ttft_ms: float | None = None, tpot_ms: float | None = None,
                    stat: str = "p95") -> SLO:
        """The SLO of `almanac slo --ttft-ms X --tpot-ms Y` and of the report's two inputs."""
        conds = tuple((f"{m}_{stat}_ms", float(v)) for m, v in (("ttft", ttft_ms), ("tpot", tpot_ms))
                      if v is not None)
        if not conds:
            raise ValueError("an SLO needs a TTFT and/or a TPOT limit")
        return cls("+".join(f"{m}<={t:g}" for m, t in conds), conds)

    def text(self) -> str:
        """'TTFT p95 ≤ 300 ms and TPOT p95 ≤ 50 ms'."""
        parts = []
        for metric, t in self.conditions:
            name, stat, _ = metric.split("_")
            parts.append(f"{name.upper()} {stat} ≤ {t:g} ms")
        return " and ".join(parts)


@dataclass(frozen=True)
class Curve:
    """One measurement's curve points, as columns (rows in the curve table's order: by rate)."""
    rps: list[float | None]
    cols: dict[str, list[float | None]]

    def column(self, name: str) -> list[float | None]:
        return self.cols.get(name) or [None] * len(self.rps)


def curves_by_measurement(points: pl.DataFrame) -> dict[str, Curve]:
    """measurement_id -> its Curve, from curve points (curve.CURVE_SCHEMA)."""
    out: dict[str, Curve] = {}
    for (mid,), g in points.group_by(["measurement_id"], maintain_order=True):
        cols = {c: g[c].to_list() for c in g.columns if c not in ("measurement_id", "cell_id", "phase", "step")}
        out[mid] = Curve(cols["rps"], cols)
    return out


def slo_answer(curve: Curve, slo: SLO) -> slo_mod.SLOAnswer:
    """max_rps, basis and 95% interval of `slo` on `curve` (slo.answer)."""
    conds = []
    for metric, threshold in slo.conditions:
        base = metric[:-3]  # ttft_p95_ms -> ttft_p95
        conds.append(slo_mod.Condition(curve.column(metric), curve.column(f"{base}_lo_ms"),
                                       curve.column(f"{base}_hi_ms"), threshold))
    return slo_mod.answer(curve.rps, conds)


def value_at(rps: list[float | None], values: list[float | None], r: float) -> float | None:
    """A statistic at rate r: linear interpolation between the adjacent measured points around r
    (points ordered as slo.max_rps_under orders them), a point's own value at its rate."""
    pts = sorted(((x, v) for x, v in zip(rps, values) if x is not None and x > 0), key=lambda p: p[0])
    for i, (x, v) in enumerate(pts):
        if r <= x:
            if r == x or i == 0:
                return v
            x0, v0 = pts[i - 1]
            if v0 is None or v is None:
                return None
            return v0 + (r - x0) * (v - v0) / (x - x0)
    return pts[-1][1] if pts else None


def operating_point(curve: Curve, r: float | None) -> dict[str, float | None]:
    """Latency and tokens/s at rate r on the curve (all None without an answer)."""
    keys = (*OPERATING_POINT, "output_tok_s", "input_tok_s")
    if r is None:
        return dict.fromkeys((*keys, "total_tok_s"))
    out = {k: value_at(curve.rps, curve.column(k), r) for k in keys}
    out["total_tok_s"] = (None if out["output_tok_s"] is None or out["input_tok_s"] is None
                          else out["input_tok_s"] + out["output_tok_s"])
    return out


def fmt_rps(v: float) -> str:
    """Three significant figures or so: 0.0132, 0.523, 1.63, 45.3, 120 (web/explorer.js: fmtRps)."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:#.3g}"


def answer_text(max_rps: float | None, basis: str) -> str:
    """The answer in words: '1.63', '≥ 1.63' (a lower bound), or why there is none."""
    if max_rps is None:
        return BELOW_RANGE_TEXT if basis == "below-range" else NO_DATA_TEXT
    return ("≥ " if basis == "above-range" else "") + fmt_rps(max_rps)


ANSWERS_SCHEMA: dict[str, Any] = {
    "measurement_id": pl.String, "cell_id": pl.String, "slo": pl.String, "conditions": pl.String,
    "model": pl.String, "engine": pl.String, "engine_version": pl.String, "quantization": pl.String,
    "isl": pl.Int64, "osl": pl.Int64, "hardware": pl.String,
    "hardware_kind": pl.String,  # the cells table's: what the measurement ran on (hardware.kind)
    "price_key": pl.String,  # what its price is looked up by (cost.price_key): h100, cpu, ...
    "n_gpus": pl.Int64,
    "max_rps": pl.Float64, "basis": pl.String, "lower_bound": pl.Boolean, "answer": pl.String,
    "ci_low_rps": pl.Float64, "ci_high_rps": pl.Float64,
    **{k: pl.Float64 for k in OPERATING_POINT},
    "output_tok_s": pl.Float64, "input_tok_s": pl.Float64, "total_tok_s": pl.Float64,
    "output_tok_s_per_gpu": pl.Float64, "input_tok_s_per_gpu": pl.Float64, "total_tok_s_per_gpu": pl.Float64,
    "usd_per_hour": pl.Float64, "price": pl.String,
    "usd_per_1m_output_tokens": pl.Float64, "usd_per_1m_total_tokens": pl.Float64,
    "usd_per_1k_requests": pl.Float64, "gpu_s_per_request": pl.Float64,
    "reproduce": pl.String, "server_command": pl.String,
}


def price_note(price: Price | None, key: str, n_gpus: int | None) -> str:
    """How a replica's $/hour was obtained, in words (shown next to every cost)."""
    if price is None:
        return f"no price for {key}: set prices.{key} in the config or pass --price {key}=USD_PER_HOUR"
    times = "" if price.key == "cpu" else f" x {max(1, int(n_gpus or 0))} GPU"
    where = {"example": "example figure", "config": "from the config", "command line": "from the command line"}[price.origin]
    read = f" read {price.read_on}" if price.read_on else ""
    return f"${price.usd_per_hour:g}/h {price.unit}{times}, {where}{read}"


def measurement_of(cell: dict[str, Any]) -> str:
    """A cells row's measurement_id (its cell_id where a hand-made row has none, as curve.py does)."""
    return cell.get("measurement_id") or cell["cell_id"]


def answer_row(cell: dict[str, Any], curve: Curve | None, slo: SLO, prices: dict[str, Price]) -> dict[str, Any]:
    """One row of the answers table (ANSWERS_SCHEMA) for a measurement's dict (cells-table columns)."""
    res = slo_answer(curve, slo) if curve is not None else slo_mod.SLOAnswer(None, "no-data", None, None)
    op = operating_point(curve, res.max_rps) if curve is not None else operating_point(Curve([], {}), None)
    n_gpus = int(cell.get("n_gpus") or 0)
    key = cost.price_key(cell.get("hardware"), n_gpus)
    price = prices.get(key)
    usd_h = cost.replica_usd_per_hour(price, n_gpus)

    def per_gpu(v: float | None) -> float | None:
        return v / n_gpus if v is not None and n_gpus > 0 else None

    return {
        "measurement_id": measurement_of(cell), "cell_id": cell["cell_id"], "slo": slo.name,
        "conditions": json.dumps(slo.conditions),
        **{k: cell.get(k) for k in ("model", "engine", "engine_version", "quantization", "isl", "osl",
                                    "hardware", "hardware_kind")},
        "price_key": key, "n_gpus": n_gpus,
        "max_rps": res.max_rps, "basis": res.basis, "lower_bound": res.lower_bound,
        "answer": answer_text(res.max_rps, res.basis),
        "ci_low_rps": res.ci_low_rps, "ci_high_rps": res.ci_high_rps,
        **op,
        "output_tok_s_per_gpu": per_gpu(op["output_tok_s"]), "input_tok_s_per_gpu": per_gpu(op["input_tok_s"]),
        "total_tok_s_per_gpu": per_gpu(op["total_tok_s"]),
        "usd_per_hour": usd_h, "price": price_note(price, key, n_gpus),
        **cost.costs(usd_h, res.max_rps, op["output_tok_s"], op["total_tok_s"], n_gpus),
        "reproduce": cell.get("reproduce"), "server_command": cell.get("server_command"),
    }


def answers_frame(cells: pl.DataFrame, points: pl.DataFrame, slos: list[SLO],
                  prices: dict[str, Price]) -> pl.DataFrame:
    """Every ok measurement x SLO (failed ones have no curve to read an answer from)."""
    curves = curves_by_measurement(points)
    rows = [answer_row(c, curves.get(measurement_of(c)), s, prices)
            for c in cells.filter(pl.col("status") == "ok").iter_rows(named=True) for s in slos]
    return pl.DataFrame(rows, schema=ANSWERS_SCHEMA)


PRICES_SCHEMA: dict[str, Any] = {"price_key": pl.String, "usd_per_hour": pl.Float64, "unit": pl.String,
                                 "read_on": pl.String, "source": pl.String, "origin": pl.String}


def prices_frame(prices: dict[str, Price]) -> pl.DataFrame:
    return pl.DataFrame([{"price_key": p.key, "usd_per_hour": p.usd_per_hour, "unit": p.unit, "read_on": p.read_on,
                          "source": p.source, "origin": p.origin} for p in prices.values()],
                        schema=PRICES_SCHEMA)


def _write(con: duckdb.DuckDBPyConnection, name: str, df: pl.DataFrame) -> None:
    con.register(f"{name}_df", df.to_arrow())
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_df")
    con.execute(f"ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(tables.DERIVED_KEYS[name])})")
    con.unregister(f"{name}_df")


def write_tables(con: duckdb.DuckDBPyConnection, cells: pl.DataFrame, points: pl.DataFrame,
                 slos: list[dict[str, Any]], config_prices: dict[str, Any] | None) -> None:
    """The aggregate's tables for answers: `curve` (every measurement's points with their
    intervals: curve.points of its requests and phases), `prices` (the $/hour of each price
    key, and where that figure came from) and `answers` (every ok measurement x configured SLO)."""
    prices = cost.resolve(config_prices)
    _write(con, "curve", points)
    _write(con, "prices", prices_frame(prices))
    _write(con, "answers", answers_frame(cells, points, [SLO.from_config(s) for s in slos], prices))


# -- reading them back (the CLI) ------------------------------------------------------------

def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                            [name]).fetchall()[0][0])


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    return db.frame(con, sql)


def load_points(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The curve table; for a database written before it existed, computed from its requests."""
    if _has_table(con, "curve"):
        have = {r[0] for r in con.execute("DESCRIBE curve").fetchall()}
        if "measurement_id" in have:
            return _frame(con, "SELECT * FROM curve ORDER BY measurement_id, rps, phase, step").cast(
                pl.Schema(curve_mod.CURVE_SCHEMA))
        # written before curves were keyed by measurement: recompute (requests carry the ids)
    return curve_mod.points(_frame(con, "SELECT * FROM requests"), _frame(con, "SELECT * FROM phases"))


def load_cells(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return _frame(con, "SELECT * FROM cells ORDER BY model, isl, osl, engine, quantization, cell_id, measurement_id")


def load_prices(con: duckdb.DuckDBPyConnection, overrides: dict[str, float] | None = None) -> dict[str, Price]:
    """The prices the database was built with (examples where it has none), then `overrides`."""
    if not _has_table(con, "prices"):
        return cost.resolve(None, overrides)
    book = {}
    for r in _frame(con, "SELECT * FROM prices").iter_rows(named=True):
        key = r["price_key"] if "price_key" in r else r["kind"]  # `kind` before it was named exactly
        book[key] = Price(key, r["usd_per_hour"], r["read_on"], r["source"], r["origin"])
    for kind, usd in (overrides or {}).items():
        book[kind] = Price(kind, usd, None, "command line", "command line")
    return book


def load_slos(con: duckdb.DuckDBPyConnection) -> list[SLO]:
    """The SLOs the database was built with (its answers table), else the default ones."""
    if _has_table(con, "answers"):
        rows = con.execute("SELECT slo, any_value(conditions) FROM answers GROUP BY slo "
                           "ORDER BY min(rowid)").fetchall()
        if rows:
            return [SLO(name, tuple((m, float(t)) for m, t in json.loads(c))) for name, c in rows]
    from .config import defaults

    return [SLO.from_config(s) for s in defaults("analysis")["slos"]]


def compute(con: duckdb.DuckDBPyConnection, slos: list[SLO], overrides: dict[str, float] | None = None,
            where: dict[str, Any] | None = None) -> pl.DataFrame:
    """Answers for `slos` over the database's ok measurements matching `where` (column -> value)."""
    cells = load_cells(con)
    for col, v in (where or {}).items():
        if v is not None:
            cells = cells.filter(pl.col(col) == v)
    return answers_frame(cells, load_points(con), slos, load_prices(con, overrides))
