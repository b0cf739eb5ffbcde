"""The engine's own view of a phase, from its Prometheus `/metrics` endpoint.

Each engine names its metrics differently; one module per engine (vllm.py, sglang.py,
trtllm.py, llamacpp.py) maps the *roles* this project needs (TTFT, TPOT, E2E and queue-time
histograms, prefix-cache counters, KV-cache usage and running/waiting gauges, preemptions) to
that engine's names. Everything else here is engine-independent.

How a phase unit is observed (phases.py): one scrape just before it, one just after it, and
gauge samples about once a second while it runs, taken by an asyncio task on the load
generator's own loop. The task stays off the hot path the same way the load generator does:
while the phase runs it only fetches the text and keeps the (timestamp, bytes) pair; parsing
(prometheus_client's text parser) happens after the phase has ended. So the work on the loop
per sample is one small HTTP GET (a few reads of ~10-40 kB on loopback).

Counters and histograms are read as deltas (after - before); gauges as the peak of the samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx and the Prometheus parser load when a scrape or a parse happens, so that
    # the command line (which offers ENGINES as choices) starts without them
    import httpx

log = logging.getLogger(__name__)

#: The engines with a metric-name module here (the adapter names of engines/).
ENGINES = ("vllm", "sglang", "trtllm", "llamacpp")

HISTOGRAM_ROLES = ("ttft", "tpot", "e2e", "queue")
COUNTER_ROLES = ("prefix_queries", "prefix_hits", "preemptions", "requests")
#: Speculative decoding counters: exported only while speculation is on (Names.optional).
SPEC_ROLES = ("spec_drafts", "spec_draft_tokens", "spec_accepted")
GAUGE_ROLES = ("kv_usage", "running", "waiting")


@dataclass(frozen=True)
class Names:
    """One engine's metric names per role. Histograms are given by their base name (the parser
    reports `<base>_sum` and `<base>_count`), in seconds; counters by their sample name (with
    `_total`); gauges by name. A role the engine does not export is simply absent."""

    engine: str
    path: str = "/metrics"
    histograms: dict[str, str] = field(default_factory=dict)
    counters: dict[str, str] = field(default_factory=dict)
    gauges: dict[str, str] = field(default_factory=dict)
    #: Counters that are not per-request quantities but are derived per phase by a formula
    #: of the engine module (e.g. llama.cpp's seconds-per-token sums): role -> (numerator,
    #: denominator, scale); the phase value is scale * delta(numerator) / delta(denominator).
    ratios: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    #: Counters the engine exports only with a feature on (speculative decoding: SPEC_ROLES).
    optional: dict[str, str] = field(default_factory=dict)

    def wanted(self) -> dict[str, tuple[str, str]]:
        """sample name -> (role, kind) for every sample this engine's module asks for."""
        out: dict[str, tuple[str, str]] = {}
        for role, base in self.histograms.items():
            out[f"{base}_sum"] = (role, "histogram_sum")
            out[f"{base}_count"] = (role, "histogram_count")
        for role, name in self.counters.items():
            out[name] = (role, "counter")
        for role, name in self.gauges.items():
            out[name] = (role, "gauge")
        for role, name in self.optional.items():
            out[name] = (role, "counter")
        for role, (num, den, _) in self.ratios.items():
            out.setdefault(num, (f"{role}_num", "counter"))
            out.setdefault(den, (f"{role}_den", "counter"))
        return out


def names_for(engine: str) -> Names | None:
    """The metric names of an engine (None for engines without a module, e.g. the simulator)."""
    if engine not in ENGINES:
        return None
    return importlib.import_module(f"{__name__}.{engine}").NAMES


def parse(text: str) -> dict[tuple[str, str], float]:
    """Every sample of a /metrics text: (sample name, labels as sorted JSON) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, json.dumps(s.labels, sort_keys=True))] = float(s.value)
    return out


@dataclass
class Scrape:
    """The raw /metrics texts of one phase unit: before, samples during, after."""

    before: tuple[int, bytes] | None = None
    samples: list[tuple[int, bytes]] = field(default_factory=list)
    after: tuple[int, bytes] | None = None
    errors: list[str] = field(default_factory=list)
    sampler_cpu_s: float = 0.0  # the sampler's own CPU on the loop (fetching only)


class Scraper:
    """Scrapes one server's /metrics around and during phase units (see the module doc)."""

    def __init__(self, base_url: str, names: Names, interval_s: float = 1.0, timeout_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = base_url.rstrip("/") + names.path
        self.names = names
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._transport = transport

    async def _fetch(self, client: httpx.AsyncClient, scrape: Scrape) -> tuple[int, bytes] | None:
        import httpx

        try:
            resp = await client.get(self.url)
            if resp.status_code != 200:
                scrape.errors.append(f"GET {self.url}: HTTP {resp.status_code}")
                return None
            return time.perf_counter_ns(), resp.content
        except httpx.HTTPError as exc:
            scrape.errors.append(f"GET {self.url}: {type(exc).__name__}: {exc}")
            return None

    async def _sample(self, client: httpx.AsyncClient, scrape: Scrape) -> None:
        # the first sample early: a burst peaks at once. A peak is a sampled one, so a lower
        # bound: a spike shorter than the interval can fall between samples.
        await asyncio.sleep(min(0.05, self.interval_s))
        while True:
            c0 = time.process_time()
            got = await self._fetch(client, scrape)
            scrape.sampler_cpu_s += time.process_time() - c0
            if got:
                scrape.samples.append(got)
            await asyncio.sleep(self.interval_s)

    async def around(self, measure: Any) -> tuple[Any, Scrape]:
        """Run `measure()` (a coroutine function) between a before and an after scrape, with
        gauge samples during it; returns its result and the raw scrape."""
        import httpx

        scrape = Scrape()
        async with httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport) as client:
            scrape.before = await self._fetch(client, scrape)
            task = asyncio.create_task(self._sample(client, scrape))
            try:
                result = await measure()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            scrape.after = await self._fetch(client, scrape)
        return result, scrape


def rows(scrape: Scrape, names: Names, cell_id: str, repeat: int, phase: str, step: int) -> list[dict[str, Any]]:
    """The `engine_metrics` rows of one unit (tables.ENGINE_METRICS): one per series of a wanted
    sample; gauges carry their samples (before, during, after) and their peak."""
    if scrape.before is None or scrape.after is None:
        return []
    wanted = names.wanted()
    before, after = parse(scrape.before[1].decode()), parse(scrape.after[1].decode())
    during = [parse(b.decode()) for _, b in scrape.samples]
    out = []
    for key in sorted(set(before) | set(after)):
        name, labels = key
        if name not in wanted:
            continue
        role, kind = wanted[name]
        b, a = before.get(key), after.get(key)
        row: dict[str, Any] = {
            "cell_id": cell_id, "repeat": repeat, "phase": phase, "step": step,
            "role": role, "metric": name, "labels": labels, "kind": kind,
            "before": b, "after": a, "delta": None if a is None or b is None else a - b,
            "samples": None, "peak": None, "engine": names.engine,
        }
        if kind == "gauge":
            series = [v for v in (b, *(d.get(key) for d in during), a) if v is not None]
            row["samples"] = series
            row["peak"] = max(series) if series else None
        out.append(row)
    return out


def phase_values(rows_: list[dict[str, Any]], names: Names | None = None) -> dict[str, Any]:
    """The engine-side columns of one phase unit (tables.PHASES `engine_*`) from its rows.

    Several series of one role (e.g. one per engine core or label set) add up: counters and
    histogram sums/counts are summed; gauges are summed per sample before the peak is taken
    (KV-cache usage: the largest series, since it is a fraction)."""
    delta: dict[tuple[str, str], float] = {}
    gauges: dict[str, list[list[float]]] = {}
    for r in rows_:
        if r["kind"] == "gauge":
            gauges.setdefault(r["role"], []).append(list(r["samples"] or []))
        elif r["delta"] is not None:
            delta[(r["role"], r["kind"])] = delta.get((r["role"], r["kind"]), 0.0) + r["delta"]
    out: dict[str, Any] = {}
    for role in HISTOGRAM_ROLES:
        s, n = delta.get((role, "histogram_sum")), delta.get((role, "histogram_count"))
        out[f"engine_{role}_mean_ms"] = s / n * 1000.0 if s is not None and n else None
    if names is not None:
        for role, (_, _, scale) in names.ratios.items():
            a, b = delta.get((f"{role}_num", "counter")), delta.get((f"{role}_den", "counter"))
            if a is not None and b and out.get(f"engine_{role}_mean_ms") is None:
                out[f"engine_{role}_mean_ms"] = scale * a / b
    out["engine_requests"] = delta.get(("requests", "counter"))
    if out["engine_requests"] is None and delta.get(("e2e", "histogram_count")) is not None:
        out["engine_requests"] = delta[("e2e", "histogram_count")]
    out["engine_prefix_cache_queries"] = delta.get(("prefix_queries", "counter"))
    out["engine_prefix_cache_hits"] = delta.get(("prefix_hits", "counter"))
    out["engine_preemptions"] = delta.get(("preemptions", "counter"))
    # speculative decoding: acceptance rate = accepted / draft tokens; mean accepted length =
    # 1 + accepted / drafts (tokens per verification step, counting the target's own token)
    drafts, dtoks, acc = (delta.get((r, "counter")) for r in SPEC_ROLES)
    out["engine_spec_acceptance_rate"] = acc / dtoks if acc is not None and dtoks else None
    out["engine_spec_mean_accepted_len"] = 1 + acc / drafts if acc is not None and drafts else None
    for role, col in (("kv_usage", "engine_kv_cache_usage_peak"), ("running", "engine_running_peak"),
                      ("waiting", "engine_waiting_peak")):
        series = gauges.get(role)
        if not series:
            out[col] = None
            continue
        width = min(len(s) for s in series)
        combine = max if role == "kv_usage" else sum
        per_sample = [combine(s[i] for s in series) for i in range(width)]
        out[col] = max(per_sample) if per_sample else None
    out["engine_n_samples"] = max((len(s) for ss in gauges.values() for s in ss), default=0)
    return out
