"""One cell, start to finish: start the server, run the phases, stop the server, write files.

The steps, in order (run_cell): a new record (`cell.json`'s fields, tables.CELLS) -> claim GPUs
and describe the hardware -> the server's spec and environment -> start the server and wait for
health -> check the prompt length against the server's tokenizer -> the phases (phases.py),
once per repeat -> stop the server -> write the cell's files (files.write_cell).

A failure inside the cell (startup, warm-up, a phase) is data: `cell.json` gets
`status: failed` with the reason, the parquet files are written (possibly empty) and the job
succeeds, so the rest of the grid and the aggregate still complete. An interrupt (SIGINT,
SIGTERM) is not a measurement: the server is stopped and the job fails, leaving no outputs; the
phases measured so far stay in the cell's checkpoint for the next run.

With bench.interleave, repeat r of a cell is a job of its own (run_round) that waits for repeat
r - 1 of every cell, so the grid's repeats run A B A B ...; each round keeps its units in the
cell's checkpoint, and the job of the last repeat is run_cell, which finds them there.
"""

from __future__ import annotations

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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from . import __version__, enginemetrics, gpus, hardware, identity, loadgen, phases
from .config import GUARD_RAILS, defaults
from .engines import Engine, ServerSpec, adapter_for, connect_host, requested_host
from .files import read_json, write_cell
from .loadgen import LoadGenerator
from .phases import CellFailure, Checkpoint, Plan
from .prompts import PromptFactory
from .redact import Resolved, SecretError, remember, resolve, scrub, scrub_file, scrub_obj, without_secrets
from .server import BYTECODE_OFF, Server, ServerStartupError, free_port, log_tail, signals_raise
from .tables import new_cell_record

log = logging.getLogger(__name__)


# Snakemake caps linear-algebra threads of every job to the job's `threads`. The engine server
# manages its own threads (vLLM-CPU pins OpenMP threads to cores and reserves one for its
# scheduler); inheriting OMP_NUM_THREADS=2 there oversubscribes its single pinned core and was
# measured to make SmolLM2 on vLLM-CPU ~30x slower. Engine `env:` in the config can set them.
JOB_THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def server_environment(base: dict[str, str], *overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in JOB_THREAD_VARS and k not in BYTECODE_OFF}
    for o in overrides:
        env.update(o)
    return env


def check_prompt_tokens(base_url: str, adapter: Engine, model: str, prompt: str, isl: int) -> int | None:
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


@contextlib.contextmanager
def started_server(adapter: Engine, spec: ServerSpec, env: dict[str, str], server_log: Path, out_dir: Path,
                   timeout: float, info: dict[str, Any], attempts: int = 3,
                   resolved: Resolved | None = None) -> Iterator[tuple[Server, str]]:
    """A healthy server on a free port, with its base URL, stopped on every exit of the `with`.
    A port taken between our check and the server's bind (cells started in parallel) is retried
    on another port. The recorded command is the one that ran, its secrets masked."""
    resolved = resolved or Resolved(list(spec.extra_args), {})
    for attempt in range(1, attempts + 1):
        port = free_port()
        spec = dataclasses.replace(spec, port=port)
        cmd = adapter.server_command(spec)
        info["server_command"] = shlex.join(resolved.command(cmd))
        log.info("server command: %s", info["server_command"])
        log.info("server log: %s", server_log)
        base_url = f"http://{connect_host(spec.host)}:{port}"
        with Server(cmd, env, server_log, base_url, adapter.health_path, pid_file=out_dir / "server.pid") as server:
            try:
                info["startup_s"] = round(server.wait_ready(timeout), 2)
            except ServerStartupError as exc:
                if "address already in use" in str(exc).lower() and attempt < attempts:
                    log.warning("port %d was taken before the server bound it; retrying on another port", port)
                    continue
                raise
            yield server, base_url
            return
    raise AssertionError("unreachable")


@dataclasses.dataclass
class CellInputs:
    """What one cell's job is given: the grid's cell, its engine's and model's config, the bench
    settings, and the files of its install and prepared model."""

    cell: dict[str, Any]
    engine_cfg: dict[str, Any]
    model_cfg: dict[str, Any]
    bench: dict[str, Any]
    installed: dict[str, Any]
    model: dict[str, Any]
    out_dir: Path
    #: the cell's engine arguments and environment, references resolved (set when it starts)
    resolved: Resolved | None = None

    @property
    def adapter(self) -> Engine:
        return adapter_for(self.cell["engine"], self.engine_cfg)


def new_record(ci: CellInputs, server_log: Path) -> dict[str, Any]:
    """The cell's `cell.json` record as it starts (provenance included)."""
    cell = ci.cell
    return new_cell_record(
        cell_id=cell["cell_id"], model=cell["model"], engine=cell["engine"],
        variant=cell.get("variant") or ci.engine_cfg.get("variant") or "default",
        engine_version=ci.installed["version"], quantization=cell["quantization"],
        isl=cell["isl"], osl=cell["osl"], status="running", n_gpus=cell.get("n_gpus", 0),
        started_at=datetime.now(UTC).isoformat(),
        server_env={}, server_log=str(server_log),
        model_origin=ci.model.get("origin"), bench=ci.bench,
        # provenance: the client's Python and package, the engine environment's packages
        python_version=platform.python_version(), llm_almanac_version=__version__,
        engine_packages=ci.installed.get("pip_freeze", []),
        # where it ran: the node (SLURM's name for it inside a SLURM job) and the SLURM job,
        # whose log is .snakemake/slurm_logs/rule_bench_cell/<cell_id>/<job id>.log
        host=os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        # a new run id per run of the cell: its measurement never collides with another's
        run_id=os.environ.get("ALMANAC_RUN_ID") or identity.new_run_id(),
    )


def server_spec(ci: CellInputs) -> ServerSpec:
    """How to start this cell's server (the port is chosen at start)."""
    adapter, cell = ci.adapter, ci.cell
    model_path = ci.model["paths"].get(adapter.model_format)
    if not model_path:
        raise CellFailure(f"model {cell['model']} has no {adapter.model_format} format prepared")
    args = ci.resolved.args if ci.resolved else list(cell.get("extra_args", ()))
    # loopback unless the config says `expose: true` (the grid refuses another host otherwise)
    host = (requested_host(args) if ci.engine_cfg.get("expose") else None) or "127.0.0.1"
    return ServerSpec(
        python=ci.installed["python"],
        model_path=model_path,
        served_name=cell["model"],
        quantization=cell["quantization"],
        port=0,
        host=host,
        tensor_parallel=max(1, int(cell.get("n_gpus") or 1)),
        max_model_len=ci.model_cfg.get("max_model_len"),
        device=ci.engine_cfg.get("device", "cuda"),
        extra_args=tuple(args),
        binary=ci.installed.get("server_binary"),
        workdir=str(ci.out_dir.absolute()),
    )


def liveness_check(server: Server, server_log: Path) -> phases.Check:
    """After each phase unit: was the server alive throughout? If not, the unit is discarded."""

    def alive(label: str, n_failed: int = 0) -> None:
        proc = server.proc
        code = proc.poll() if proc else None
        if code is None and n_failed and proc:
            # failed requests may be the server dying: its sockets close a moment before the
            # process is gone, and a fast client sees that first
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=2)
        if code is not None:
            raise CellFailure(
                f"server exited with code {code} during {label}; that phase is discarded; "
                f"last lines of {server_log}:\n{log_tail(server_log)}")

    return alive


@contextlib.contextmanager
def running_server(ci: CellInputs, info: dict[str, Any], server_log: Path) -> Iterator[tuple[Server, str]]:
    """Claim GPUs, start the server and yield it with its base URL; stop it on every exit."""
    adapter, cell = ci.adapter, ci.cell
    with gpus.claim(int(cell.get("n_gpus") or 0)) as visible:  # a CPU cell has n_gpus 0
        info["cuda_visible_devices"] = visible
        info["hardware"] = adapter.LABEL if adapter.simulated else hardware.describe(visible)["summary"]
        info["hardware_kind"] = (os.environ.get("ALMANAC_HARDWARE_KIND", "simulator") if adapter.simulated
                                 else hardware.kind(visible))
        spec = server_spec(ci)
        for fname, text in adapter.config_files(spec).items():
            (ci.out_dir / fname).write_text(text)
        env = server_environment(without_secrets(os.environ), adapter.server_env(spec),
                                 {"CUDA_VISIBLE_DEVICES": visible} if visible else {},
                                 ci.resolved.env if ci.resolved else ci.cell.get("extra_env", {}))
        timeout = float(ci.engine_cfg.get("startup_timeout_s") or adapter.startup_timeout_s)
        if spec.host != "127.0.0.1":
            info["notes"].append(
                f"server reachable from the network: it listened on {spec.host} (engine "
                f"{cell['engine']!r} sets expose: true), without authentication unless its args set a key")
            log.warning(info["notes"][-1])
        with started_server(adapter, spec, env, server_log, ci.out_dir, timeout, info,
                            resolved=ci.resolved) as running:
            yield running


def resolve_secrets(ci: CellInputs, info: dict[str, Any]) -> None:
    """The cell's engine arguments and environment with `${VAR}` references resolved; their
    secret values join what every log line, file and record is scrubbed of."""
    try:
        ci.resolved = resolve(ci.cell.get("extra_args", ()), ci.cell.get("extra_env", {}),
                              ci.engine_cfg.get("secrets") or [])
    except SecretError as exc:
        raise CellFailure(f"engine {ci.cell['engine']!r}: args or env refer to {exc}") from None
    remember(ci.resolved.secrets)
    info["server_env"] = ci.resolved.recorded_env()
    if ci.resolved.short():
        log.warning("a secret value of this cell is shorter than 6 characters: it is masked in the "
                    "recorded command and environment, but not searched for in free text")


def measure(ci: CellInputs, info: dict[str, Any], store: Checkpoint, server_log: Path,
            repeats: int | None = None) -> None:
    """Start the server, check it, and run the phases of repeats 0 .. `repeats` - 1 (all of
    bench.repeats by default) into `store`; units already there are kept, not measured again."""
    adapter, cell, bench = ci.adapter, ci.cell, ci.bench
    resolve_secrets(ci, info)
    with running_server(ci, info, server_log) as (server, base_url):
        if adapter.version_path:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                info["server_reported_version"] = httpx.get(
                    base_url + adapter.version_path, timeout=10).json().get("version")
        prompts = PromptFactory.from_file(ci.model["tokenizer"], cell["isl"], int(bench["seed"]))
        info["tokenize_check"] = check_prompt_tokens(
            base_url, adapter, cell["model"], prompts.make(10**9), cell["isl"])
        gen = LoadGenerator(
            base_url, cell["model"], cell["isl"], cell["osl"], prompts.make,
            endpoint=bench["endpoint"], extras=adapter.request_extras(cell["osl"]),
            request_timeout_s=float(bench["request_timeout_s"]),
            keepalive=adapter.client_keepalive, transport=bench["transport"],
            max_response_bytes=int(bench["max_response_bytes"]),
            read_pacing_ms=float(bench["read_pacing_ms"]),
        )
        gen.skip_ids_to(store.max_request_id() + 1)
        check = liveness_check(server, server_log)
        rates = None
        for rep in range(int(bench["repeats"]) if repeats is None else repeats):
            if rep:
                log.info("cell %s: repeat %d of %d", cell["cell_id"], rep + 1, bench["repeats"])
            plan = Plan(bench, repeat=rep, rates=rates)
            rates = loadgen.run(phases.run_phases(gen, plan, store, info["notes"], cell["cell_id"], check,
                                                  engine_scraper(adapter, base_url)))


def engine_scraper(adapter: Engine, base_url: str) -> enginemetrics.Scraper | None:
    """The scraper of the engine's own /metrics (None for engines without a names module)."""
    names = enginemetrics.names_for(adapter.name)
    return enginemetrics.Scraper(base_url, names) if names else None


def open_cell(cell: dict[str, Any], engine_cfg: dict[str, Any], model_cfg: dict[str, Any],
              bench: dict[str, Any], installed_json: Path, model_json: Path, out_dir: Path,
              server_log_name: str) -> tuple[CellInputs, dict[str, Any], Checkpoint, Path]:
    """A cell's inputs, its new record, its checkpoint of measured phase units (keyed by every
    setting the measurement depends on) and its (emptied) server log."""
    ci = CellInputs(cell, engine_cfg, model_cfg, {**defaults("bench"), **(bench or {})},
                    read_json(installed_json), read_json(model_json), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    server_log = out_dir / server_log_name
    server_log.unlink(missing_ok=True)
    info = new_record(ci, server_log)
    measured_as = {k: v for k, v in ci.bench.items() if k not in GUARD_RAILS}
    fingerprint = json.dumps([cell, measured_as, ci.installed["version"], ci.model.get("paths")], sort_keys=True)
    store = Checkpoint(out_dir / "partial", hashlib.sha256(fingerprint.encode()).hexdigest())
    if store.units:
        log.info("cell %s: resuming; kept from an earlier run: %s", cell["cell_id"], ", ".join(sorted(store.units)))
    return ci, info, store, server_log


def run_round(
    cell: dict[str, Any],
    engine_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    bench: dict[str, Any],
    installed_json: Path,
    model_json: Path,
    out_dir: Path,
    repeat: int,
) -> dict[str, Any]:
    """bench.interleave: measure repeat `repeat` of this cell with a server of its own, into the
    cell's checkpoint (earlier repeats are there already). The cell's files are written by the
    job of its last repeat (run_cell). A failure here is logged, not recorded as the cell's: that
    last job measures whatever repeat is missing again. Returns the round's marker record."""
    ci, info, store, server_log = open_cell(cell, engine_cfg, model_cfg, bench, installed_json, model_json,
                                            out_dir, f"server.repeat{repeat}.log")
    cid, error = cell["cell_id"], None
    try:
        with signals_raise():
            measure(ci, info, store, server_log, repeats=repeat + 1)
    except KeyboardInterrupt:
        scrub_file(server_log)
        log.error("cell %s interrupted in repeat %d; server stopped", cid, repeat)
        raise
    except Exception as exc:  # noqa: BLE001 - the cell's last job measures the repeat again
        error = scrub(f"{type(exc).__name__}: {exc}")
        log.error("cell %s, repeat %d failed: %s; the cell's last job measures it again", cid, repeat, error)
    scrub_file(server_log)
    return {"cell_id": cid, "repeat": repeat, "status": "failed" if error else "ok", "error": error,
            "units": sorted(store.units), "finished_at": datetime.now(UTC).isoformat()}



def run_cell(
    cell: dict[str, Any],
    engine_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    bench: dict[str, Any],
    installed_json: Path,
    model_json: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Measure one cell and write its files; return its record. Never raises for a failure of
    the cell itself (that is a `failed` record); re-raises an interrupt after stopping the
    server, keeping the phases measured so far for the next run."""
    ci, info, store, server_log = open_cell(cell, engine_cfg, model_cfg, bench, installed_json, model_json,
                                            out_dir, "server.log")
    cid = cell["cell_id"]
    if ci.bench.get("interleave") and int(ci.bench["repeats"]) > 1:
        info["notes"].append("repeats interleaved with the other cells' (bench.interleave): a server "
                             "start per repeat; server.repeat<r>.log holds the earlier repeats' logs")
    try:
        with signals_raise():
            measure(ci, info, store, server_log)
        info["status"] = "ok"
    except KeyboardInterrupt:
        scrub_file(server_log)
        log.error("cell %s interrupted; server stopped; measured phases kept in %s for the next run",
                  cid, store.dir)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed-cell row
        info["status"] = "failed"
        info["error"] = scrub(f"{type(exc).__name__}: {exc}")
        log.error("cell %s failed: %s", cid, info["error"])
        log.debug("%s", traceback.format_exc())
        if store.units:
            info["notes"].append(f"phases measured before the failure are kept: {', '.join(sorted(store.units))}")
    info["finished_at"] = datetime.now(UTC).isoformat()
    scrub_file(server_log)
    requests, summary, notes = phases.results(store, cid, int(ci.bench.get("max_concurrency") or 0) or None)
    info["notes"] += notes
    info = scrub_obj(info)  # errors and notes may quote the server (and so a secret)
    if requests.height and requests["error"].is_not_null().any():
        requests = requests.with_columns(pl.col("error").map_elements(scrub, return_dtype=pl.String))
    info.update(identity.identify(info))
    write_cell(out_dir, info, requests, summary, store.engine_frame(cid))
    if info["status"] == "ok":
        store.clear()  # only once the cell's own files hold every unit
    _log_summary(cid, summary)
    return info


def _log_summary(cid: str, summary: pl.DataFrame) -> None:
    for row in summary.iter_rows(named=True):
        log.info(
            "%s %s[%d]: %d ok / %d failed (%.0f%%), %.3f rps of successful requests, %.1f tok/s, "
            "TTFT p50 %.1f ms, TPOT p50 %.2f ms",
            cid, row["phase"], row["step"], row["n_ok"], row["n_failed"], 100 * (row["fail_rate"] or 0), row["rps"] or 0,
            row["output_tok_s"] or 0, row["ttft_p50_ms"] or 0, row["tpot_p50_ms"] or 0,
        )
