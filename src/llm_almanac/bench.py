"""`almanac bench`: the phases of a cell against an OpenAI-compatible server someone else started.

What the command needs besides the phases themselves (phases.py): its defaults (the model the
server serves, a new timestamped output folder), the output folder's checkpoint (a rerun
measures only what is missing), live progress, and the files it writes — requests.parquet,
phases.parquet, summary.json — the summary being the phase rows the table shows, not a second
computation. The CLI (cli.py) parses and prints; every message here is one line for the user.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from . import logs
from .files import write_json, write_parquet

if TYPE_CHECKING:  # the measuring modules (numpy, uvloop, httptools) load only when a run starts:
    # `almanac query` and the other commands import this module to build their parser
    from . import enginemetrics, phases
    from .loadgen import LoadGenerator, Ticker
    from .phases import Plan

#: where a run without --out writes: a new folder per run under this one (in the working directory)
RESULTS_ROOT = Path("bench-results")
#: what a finished run leaves in its folder (plus engine_metrics.parquet with --engine-metrics)
FILES = ("requests.parquet", "phases.parquet", "summary.json")
PROGRESS = ("auto", "bar", "log")


class BenchError(Exception):
    """A problem with the arguments or the server, found before anything is measured."""


# -- the server and its model ------------------------------------------------------------------
def check_base_url(url: str, transport: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BenchError(f"--base-url {url}: not an http(s) URL such as http://127.0.0.1:8000")
    if u.scheme == "https" and transport == "fast":
        raise BenchError(f"--base-url {url}: the fast transport speaks plain http; add --transport httpx for https")
    try:
        u.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise BenchError(f"--base-url {url}: {exc}") from None
    return url.rstrip("/")


def served_models(base_url: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids GET {base_url}/v1/models lists."""
    import httpx

    url = f"{base_url}/v1/models"
    why = "no --model given, and the server's models could not be listed"
    try:
        resp = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BenchError(f"{why}: GET {url}: {type(exc).__name__}: {exc}; is the server up at --base-url? "
                         "Or pass --model NAME") from None
    if resp.status_code != 200:
        raise BenchError(f"{why}: GET {url} answered HTTP {resp.status_code}; pass --model NAME")
    try:
        return [str(m["id"]) for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"{why}: GET {url} did not answer an OpenAI model list; pass --model NAME") from None


def default_model(base_url: str) -> str:
    """The server's only model; an error listing them when it serves none or several."""
    ids = served_models(base_url)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise BenchError(f"no --model given, and the server lists no model at {base_url}/v1/models; "
                         "pass --model NAME")
    raise BenchError(f"no --model given, and the server serves {len(ids)} models ({', '.join(ids)}); "
                     "pass --model with the one to measure")


# -- the output folder ---------------------------------------------------------------------------
def new_out(model: str, isl: int, osl: int, root: Path = RESULTS_ROOT, now: datetime | None = None) -> Path:
    """A new folder ROOT/<model>-<isl>-<osl>-<YYYYmmdd-HHMMSS> (-2, -3, ... after it when a run of the
    same second took that name), created here so that no other run can take it too."""
    name = Path(model.rstrip("/")).name if model.startswith(("/", ".", "~")) else model
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    stem = f"{name}-{isl}-{osl}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        out = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            continue
        except OSError as exc:
            raise BenchError(f"cannot create {out} for the results ({exc.strerror or exc}); pass --out DIR") from None
    raise AssertionError("unreachable")


def check_out(out: Path) -> None:
    """--out must be a folder we can write in, known before the first request is sent."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".almanac-write-check-"):
            pass
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old} -> {new}"]


def checkpoint(out: Path, settings: dict, force: bool) -> phases.Checkpoint:
    """The folder's checkpoint of measured phases: resumed when its settings are these, refused
    when they are not, or when the folder holds results without a checkpoint (unless `force`,
    which discards them): a folder's results are never overwritten silently."""
    from . import phases

    fingerprint = json.dumps(settings, sort_keys=True)
    partial = out / "partial"
    recorded = partial / "fingerprint"
    if force:
        phases.Checkpoint(partial, fingerprint).clear()
        for name in (*FILES, "engine_metrics.parquet"):
            (out / name).unlink(missing_ok=True)
    elif not recorded.exists() and (found := [n for n in FILES if (out / n).exists()]):
        raise BenchError(f"{out} holds {', '.join(found)} but no record of the settings they were measured with "
                         "(partial/fingerprint); use another --out, or add --force to replace them")
    elif recorded.exists() and recorded.read_text() != fingerprint:
        try:
            diff = _differences(json.loads(recorded.read_text()), settings)
        except ValueError:
            diff = []
        raise BenchError(
            f"{out} holds phases measured with other settings"
            + (f" ({'; '.join(diff[:6])})" if diff else "")
            + "; use another --out, or add --force to discard them and measure again")
    return phases.Checkpoint(partial, fingerprint)


# -- measuring -------------------------------------------------------------------------------------
def run(gen: LoadGenerator, plan: Plan, store: phases.PhaseStore, notes: list[str], label: str,
        scraper: enginemetrics.Scraper | None) -> tuple[str | None, int]:
    """The phases, stopped cleanly by Ctrl-C, SIGTERM or a failure: (why it stopped, exit code),
    (None, 0) when every phase ran. What was measured is in `store` either way."""
    from . import loadgen, phases
    from .server import signals_raise

    try:
        with signals_raise():
            loadgen.run(phases.run_phases(gen, plan, store, notes, label, scraper=scraper))
    except KeyboardInterrupt as exc:
        stopped = str(exc) or "received SIGINT"
        return stopped, 143 if "SIGTERM" in stopped else 130
    except phases.CellFailure as exc:
        return f"failed: {exc}", 1
    return None, 0


class _Bar:
    """One phase's bar: requests done of its total, and how many failed."""

    def __init__(self, bars: Any, label: str, total: int | None) -> None:
        self.bars, self.failed = bars, 0
        self.task = bars.add_task(label, total=total, failed=0)

    def tick(self, ok: bool) -> None:
        self.failed += not ok
        self.bars.update(self.task, advance=1, failed=self.failed)


@contextlib.contextmanager
def progress(gen: LoadGenerator, mode: str = "auto") -> Iterator[None]:
    """Live progress of the phases: rich bars on stderr (`bar`, or `auto` when stderr is a
    terminal), log lines every 5 s otherwise (loadgen.Progress); log lines go above the bars."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    console = Console(stderr=True)
    if mode == "log" or (mode == "auto" and not console.is_terminal):
        yield
        return
    bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=console)

    def bar(label: str, total: int | None) -> Ticker:
        return _Bar(bars, label, total)

    gen.progress = bar
    logs.setup(None, console=console)
    try:
        with bars:
            yield
    finally:
        logs.setup(None)


# -- the files -------------------------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summary(phase_rows: pl.DataFrame, about: dict[str, Any]) -> dict[str, Any]:
    """summary.json: what was measured (`about`) and, per phase unit, its row of phases.parquet —
    the numbers the table shows (rate, counts, TTFT/TPOT/ITL/E2E statistics in ms), each column
    under its name in the phases table (docs/metrics.md); NaN and infinities are null."""
    return {**about, "phases": [{k: _json_value(v) for k, v in r.items()} for r in phase_rows.iter_rows(named=True)]}


def write_results(out: Path, store: phases.PhaseStore, label: str, max_concurrency: int | None,
                  engine_metrics: bool, about: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any], list[str]]:
    """requests.parquet, phases.parquet (and engine_metrics.parquet) and summary.json, from what
    `store` holds: (the phase rows, the summary, notes on them)."""
    from . import phases

    requests, phase_rows, notes = phases.results(store, label, max_concurrency)
    write_parquet(out / "requests.parquet", requests)
    write_parquet(out / "phases.parquet", phase_rows)
    if engine_metrics:
        write_parquet(out / "engine_metrics.parquet", store.engine_frame(label))
    doc = summary(phase_rows, about)
    write_json(out / "summary.json", doc)
    return phase_rows, doc, notes
