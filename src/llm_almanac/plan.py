"""`almanac plan`: how many replicas of which configuration, at what cost, for a target load
under an SLO. The question self-hosting starts from; the answers table answers it per replica.

For each configuration measured at the requested shape (answers.py gives its max_rps under the
SLO, interval and $/hour per replica):
  replicas              = ceil(qps / max_rps)
  conservative replicas = ceil(qps / ci_low_rps)  (the interval's low end; none without one)
  $/hour = replicas x the replica's $/hour; $/month = $/hour x 730
A lower-bound answer (above-range: every measured rate met the SLO) holds at least max_rps, so
its replica counts and costs are upper bounds ("≤"). Ranked by $/hour (priced first), then by
GPUs, then by max_rps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import cost
from .answers import SLO

PLAN_COLUMNS = ("model", "engine", "engine_version", "quantization", "price_key", "n_gpus",
                "answer", "max_rps", "basis", "ci_low_rps", "replicas", "replicas_conservative",
                "upper_bound", "gpus", "usd_per_hour", "usd_per_hour_conservative", "usd_per_month",
                "usd_per_month_conservative", "price", "cell_id", "measurement_id")


@dataclass
class Plan:
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None  # why there are no rows, or what is true of all of them


def _row(a: dict[str, Any], qps: float) -> dict[str, Any]:
    n = cost.replicas(qps, a["max_rps"])
    n_cons = cost.replicas(qps, a["ci_low_rps"])
    usd = a["usd_per_hour"]

    def money(k: int | None, per: float) -> float | None:
        return None if k is None or usd is None else k * usd * per

    return {
        **{k: a[k] for k in ("model", "engine", "engine_version", "quantization", "price_key", "n_gpus",
                             "answer", "max_rps", "basis", "ci_low_rps", "price", "cell_id", "measurement_id")},
        "replicas": n, "replicas_conservative": n_cons, "upper_bound": bool(a["lower_bound"]),
        "gpus": None if n is None else n * int(a["n_gpus"] or 0),
        "usd_per_hour": money(n, 1.0), "usd_per_hour_conservative": money(n_cons, 1.0),
        "usd_per_month": money(n, cost.MONTH_HOURS),
        "usd_per_month_conservative": money(n_cons, cost.MONTH_HOURS),
    }


def plan(answers: list[dict[str, Any]], qps: float, slo: SLO, isl: int, osl: int,
         model: str | None = None) -> Plan:
    """Rank the configurations measured at isl/osl (and `model`) for `qps` under `slo`.
    `answers` are answers.py rows of every ok cell for that SLO (any shape: the message names
    the measured shapes when none matches)."""
    if qps <= 0:
        raise ValueError("--qps must be above 0")
    pool = [a for a in answers if model is None or a["model"] == model]
    if not pool:
        models = sorted({a["model"] for a in answers})
        return Plan(message=f"no measured cell of model {model!r}; measured models: {', '.join(models) or 'none'}")
    here = [a for a in pool if a["isl"] == isl and a["osl"] == osl]
    if not here:
        shapes = sorted({(a["isl"], a["osl"]) for a in pool})
        of = f" of {model}" if model else ""
        return Plan(message=f"no measured cell{of} has ISL {isl} / OSL {osl}; measured shapes: "
                            + ", ".join(f"{i}/{o}" for i, o in shapes))
    met = [a for a in here if a["max_rps"] is not None]
    if not met:
        return Plan(message=f"none of the {len(here)} configurations measured at {isl}/{osl} meets "
                            f"{slo.text()}: not even one request at a time meets it on any of them")
    rows = sorted((_row(a, qps) for a in met), key=lambda r: (
        r["usd_per_hour"] is None, r["usd_per_hour"] or 0.0, r["gpus"] or 0, -r["max_rps"]))
    notes = []
    if len(met) < len(here):
        missed = sorted(f"{a['engine']} {a['quantization']}" for a in here if a["max_rps"] is None)
        notes.append(f"{len(here) - len(met)} configuration(s) never meet it: {', '.join(missed)}")
    if any(r["upper_bound"] for r in rows):
        notes.append("≤: every measured rate met the SLO, so fewer replicas may do (an upper bound)")
    if any(r["usd_per_hour"] is None for r in rows):
        notes.append("no $ where a price key has no price: pass --price PRICE_KEY=USD_PER_HOUR")
    return Plan(rows, "; ".join(notes) or None)
