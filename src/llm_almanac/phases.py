"""The phases of a cell: warm-up (discarded) -> sequential -> burst -> sweep, and their checkpoints.

Called the same way by the pipeline (cell.py, one Snakemake job per cell) and by
`almanac bench` (against a server someone else runs). Each phase, and each sweep step, is a
*unit*: measured once, kept in a store as soon as it is measured (on disk with `Checkpoint`),
and not measured again when the run is resumed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from . import enginemetrics, metrics, tables, trust
from .files import read_json, write_json, write_parquet
from .loadgen import LoadGenerator, Measured

log = logging.getLogger(__name__)

PHASES = tables.PHASE_NAMES


class CellFailure(RuntimeError):
    """The cell cannot give a measurement (its reason is the message): a failed-cell row."""


#: Called after a unit is measured, before it is kept: (unit label, failed requests) -> None;
#: raises CellFailure when the unit must be discarded (e.g. the server died during it).
Check = Callable[[str, int], None]


def _unit_order(key: str) -> tuple[int, int, int]:
    repeat, phase, step = key.split("-")
    return int(repeat), PHASES.index(phase) if phase in PHASES else len(PHASES), int(step)


class PhaseStore:
    """Finished phase units, keyed 'repeat-phase-step'. In memory; see Checkpoint for disk."""

    def __init__(self) -> None:
        self.units: dict[str, pl.DataFrame] = {}
        self.clients: dict[str, dict[str, float]] = {}  # the load generator's CPU per unit
        self.engine: dict[str, pl.DataFrame] = {}  # the engine's own metrics per unit

    def get(self, key: str) -> pl.DataFrame | None:
        return self.units.get(key)

    def put(self, key: str, df: pl.DataFrame, client: dict[str, float] | None = None,
            engine: pl.DataFrame | None = None) -> None:
        self.units[key] = df
        if client:
            self.clients[key] = client
        if engine is not None:
            self.engine[key] = engine

    def engine_frame(self, cell_id: str) -> pl.DataFrame:
        """Every unit's engine_metrics rows (tables.ENGINE_METRICS), labelled with the cell."""
        if not self.engine:
            return tables.empty(tables.ENGINE_METRICS)
        df = pl.concat([tables.conform(tables.ENGINE_METRICS, d) for d in self.engine.values()])
        return df.with_columns(pl.lit(cell_id).alias("cell_id"))

    def frame(self) -> pl.DataFrame:
        """Every unit's requests, in measurement order (repeat, phase, step), however they were
        loaded (a resumed run reads them from disk)."""
        if not self.units:
            return tables.empty(tables.REQUESTS)
        return pl.concat([self.units[k] for k in sorted(self.units, key=_unit_order)])

    def client_frame(self, cell_id: str) -> pl.DataFrame:
        rows = []
        for key, c in self.clients.items():
            repeat, phase, step = key.split("-")
            rows.append({"cell_id": cell_id, "repeat": int(repeat), "phase": phase, "step": int(step), **c})
        return tables.frame(tables.CLIENT, rows)

    def max_request_id(self) -> int:
        return max((int(df.select(pl.max("request_id")).item()) for df in self.units.values() if len(df)),
                   default=-1)


class Checkpoint(PhaseStore):
    """Phase units on disk (one parquet each, written atomically) so that a run that fails or
    is interrupted in a later phase keeps what it measured, and a rerun measures only the rest.
    A fingerprint of the settings guards against mixing units of different configs."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        super().__init__()
        self.dir = directory
        fp = directory / "fingerprint"
        if directory.exists() and (not fp.exists() or fp.read_text() != fingerprint):
            self.clear()
        directory.mkdir(parents=True, exist_ok=True)
        fp.write_text(fingerprint)
        for f in sorted(directory.glob("*.parquet")):
            if "." in f.stem:  # a unit's side file (KEY.engine.parquet), read with its unit
                continue
            self.units[f.stem] = pl.read_parquet(f)
            e = directory / f"{f.stem}.engine.parquet"
            if e.exists():
                self.engine[f.stem] = pl.read_parquet(e)
            c = directory / f"{f.stem}.client.json"
            if c.exists():
                self.clients[f.stem] = read_json(c)

    def put(self, key: str, df: pl.DataFrame, client: dict[str, float] | None = None,
            engine: pl.DataFrame | None = None) -> None:
        if client:  # written first: a unit's parquet is what marks it as done
            write_json(self.dir / f"{key}.client.json", client)
        if engine is not None:
            write_parquet(self.dir / f"{key}.engine.parquet", engine)
        write_parquet(self.dir / f"{key}.parquet", df)
        super().put(key, df, client, engine)

    def clear(self) -> None:
        for f in self.dir.glob("*"):
            f.unlink()
        if self.dir.exists():
            self.dir.rmdir()
        self.units = {}
        self.clients = {}
        self.engine = {}


@dataclass
class Plan:
    """What to run: the phases, the bench settings, the repeat and (for repeats after the
    first) the sweep rates fixed by the first repeat, so step k is the same offered load."""

    bench: dict[str, Any]
    phases: tuple[str, ...] = PHASES
    repeat: int = 0
    rates: list[float] | None = None

    def validate(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")
        if "sweep" in self.phases and not {"sequential", "burst"} <= set(self.phases):
            raise ValueError("the sweep needs both anchors: run it with the sequential and burst phases")
        if "sweep" in self.phases and int(self.bench.get("sweep_rates") or 0) > 0 \
                and not float(self.bench.get("sweep_duration_s") or 0) > 0:
            raise ValueError(f"sweep_duration_s must be greater than 0 (got {self.bench.get('sweep_duration_s')}); "
                             "set sweep_rates to 0 for no sweep")


async def run_phases(gen: LoadGenerator, plan: Plan, store: PhaseStore, notes: list[str],
                     cell_id: str = "", check: Check | None = None,
                     scraper: enginemetrics.Scraper | None = None) -> list[float]:
    """Run the plan's phases into `store`; return the sweep rates used.

    A unit already in `store` is reused, not measured again; a measured unit goes into the store
    only after `check` passes, so a unit cut short by a crash is never kept. Warm-up runs once
    per generator, just before its first measured unit. With a `scraper`, the engine's own
    metrics are scraped just before and after each unit and sampled during it."""
    plan.validate()
    bench = plan.bench
    conc = int(bench.get("max_concurrency") or 0) or None
    phase_timeout = float(bench.get("phase_timeout_s") or 0) or None

    async def unit(phase: str, step: int, measure: Callable[[], Coroutine[Any, Any, Measured]]) -> pl.DataFrame:
        key = f"{plan.repeat}-{phase}-{step}"
        kept = store.get(key)
        if kept is not None:
            log.info("%s[%d] (repeat %d): kept from an earlier run, not measured again", phase, step, plan.repeat)
            return kept
        if not gen.warmed:
            bad = [r for r in gen.rows(await gen.warmup(int(bench["warmup_requests"]))) if r["status"] != "ok"]
            if bad:
                raise CellFailure(f"warm-up failed: {bad[0]['error']}")
        scrape = None
        try:
            async with asyncio.timeout(phase_timeout):
                if scraper:
                    measured, scrape = await scraper.around(measure)
                else:
                    measured = await measure()
        except TimeoutError:
            raise CellFailure(f"{phase}[{step}] exceeded phase_timeout_s={phase_timeout:g}") from None
        rows = gen.rows(measured.reqs, cell_id, plan.repeat)
        if check:
            check(f"{phase}[{step}]", sum(r["status"] != "ok" for r in rows))
        df = tables.frame(tables.REQUESTS, rows)
        engine = _engine_frame(scraper, scrape, notes, cell_id, plan.repeat, phase, step)
        store.put(key, df, measured.client, engine)
        return df

    anchors: dict[str, float | None] = {"sequential": None, "burst": None}
    if "sequential" in plan.phases:
        seq = await unit("sequential", 0, lambda: gen.sequential(int(bench["sequential_requests"])))
        anchors["sequential"] = metrics.achieved_rps(seq.to_dicts())
    if "burst" in plan.phases:
        burst = await unit("burst", 0, lambda: gen.burst(int(bench["burst_requests"]), conc))
        anchors["burst"] = metrics.achieved_rps(burst.to_dicts())
    if "sweep" not in plan.phases:
        return []
    rates = plan.rates if plan.rates is not None else \
        _sweep_rates(anchors["sequential"], anchors["burst"], int(bench["sweep_rates"]), notes)
    for step, rate in enumerate(rates):
        await unit("sweep", step, functools.partial(
            gen.rate, rate, float(bench["sweep_duration_s"]), step, bench["arrival"],
            seed=int(bench["seed"]) + step, max_concurrency=conc))
    return rates


def _engine_frame(scraper: enginemetrics.Scraper | None, scrape: Any, notes: list[str], cell_id: str,
                  repeat: int, phase: str, step: int) -> pl.DataFrame | None:
    """A unit's engine_metrics rows from its scrape (None without a scraper); failed scrapes
    become one note per kind of failure."""
    if not (scraper and scrape):
        return None
    if scrape.errors:
        msg = f"engine metrics of {phase}[{step}]: {scrape.errors[0]} ({len(scrape.errors)} failed scrapes)"
        log.warning(msg)
        if msg not in notes:
            notes.append(msg)
    engine = tables.frame(tables.ENGINE_METRICS, enginemetrics.rows(scrape, scraper.names, cell_id, repeat, phase, step))
    log.info("%s[%d]: %d engine metric series, %d gauge samples, sampler CPU %.1f ms", phase, step,
             len(engine), len(scrape.samples), scrape.sampler_cpu_s * 1e3)
    return engine


def _sweep_rates(seq_rps: float | None, burst_rps: float | None, k: int, notes: list[str]) -> list[float]:
    """The sweep's K target rates between the two measured anchors, or none (with a note why)."""
    log.info("sequential %.3f rps, burst %.3f rps", seq_rps or 0, burst_rps or 0)
    rates = metrics.sweep_rates(seq_rps, burst_rps, k) if seq_rps and burst_rps else []
    if k and not rates:
        if not (seq_rps and burst_rps):
            notes.append("sweep skipped: no successful request in the "
                         f"{'sequential' if not seq_rps else 'burst'} phase to anchor it")
        else:
            notes.append(f"sweep skipped: burst rate {burst_rps:.3f} is not above sequential rate {seq_rps:.3f}")
        log.warning(notes[-1])
    return rates


def saturation_notes(phases: pl.DataFrame) -> list[str]:
    """A warning per phase where the client, not the server, may have set the pace."""
    notes = []
    for r in phases.filter(pl.col("client_saturated")).iter_rows(named=True):
        util = r["client_cpu_util"]
        msg = (f"client saturated in {r['phase']}[{r['step']}] (repeat {r['repeat']}): "
               f"client CPU {'n/a' if util is None else f'{util:.0%} of a core'}, "
               f"send lag p99 {r['send_lag_p99_ms']:.1f} ms; its rates and latencies may be the "
               f"client's, not the server's")
        log.warning(msg)
        notes.append(msg)
    return notes


def engine_phase_values(engine: pl.DataFrame) -> pl.DataFrame:
    """One row per phase unit (PHASE_KEYS) with the engine-side columns (enginemetrics)."""
    rows = []
    for keys, g in engine.group_by(tables.PHASE_KEYS, maintain_order=True):
        names = enginemetrics.names_for(str(g["engine"][0]))
        rows.append({**dict(zip(tables.PHASE_KEYS, keys, strict=True)),
                     **enginemetrics.phase_values(g.to_dicts(), names)})
    cols = {k: tables.PHASES[k] for k in tables.PHASE_KEYS}
    cols.update({k: tables.PHASES[k] for k in rows[0] if k not in cols} if rows else {})
    return pl.DataFrame(rows, schema=cols) if rows else pl.DataFrame(schema=cols)


def results(store: PhaseStore, cell_id: str, burst_limit: int | None = None
            ) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The store's requests and their phase summary (with the client self-check, the engine's
    own metrics and the trust checks), plus the notes the summary calls for: what both the
    pipeline and `almanac bench` write. The engine rows are `store.engine_frame(cell_id)`."""
    requests = store.frame().with_columns(pl.lit(cell_id).alias("cell_id"))
    phases = metrics.summarize(requests, store.client_frame(cell_id))
    engine = engine_phase_values(store.engine_frame(cell_id))
    if len(phases) and len(engine):
        phases = tables.conform(tables.PHASES, phases.drop([c for c in engine.columns if c not in tables.PHASE_KEYS])
                                .join(engine, on=tables.PHASE_KEYS, how="left"))
    phases = trust.check_phases(phases, burst_limit)
    notes = []
    if len(phases):
        n_bad, n_mis = int(phases["n_failed"].sum()), int(phases["n_token_mismatch"].sum())
        if n_bad or n_mis:
            notes.append(f"{n_bad} failed requests, {n_mis} with token counts != isl/osl")
    return tables.conform(tables.REQUESTS, requests), phases, notes + saturation_notes(phases)
