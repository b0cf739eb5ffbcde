"""One cell, start to finish: warm the server, run the phases, stop the server, write files.

A failure inside the cell (startup, warm-up, a phase) is data: `cell.json` gets
`status: failed` with the reason, the parquet files are written (possibly empty) and the job
succeeds, so the rest of the grid and the aggregate still complete. An interrupt (SIGINT,
SIGTERM) is not a measurement: the server is stopped and the job fails, leaving no outputs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from . import hardware, metrics
from .engines import ServerSpec, get_engine
from .io import read_json, write_json, write_parquet
from .loadgen import LoadGenerator
from .prompts import PromptFactory
from .server import Server, free_port, signals_raise

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
    "seed": 0,
    "repeats": 1,
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


def check_prompt_tokens(base_url: str, path: str | None, model: str, prompt: str, isl: int) -> int | None:
    """Ask the server's own tokenizer how long a prompt is (where the engine has /tokenize)."""
    if not path:
        return None
    r = httpx.post(base_url + path, json={"model": model, "prompt": prompt}, timeout=30)
    r.raise_for_status()
    n = r.json().get("count")
    if n != isl:
        raise CellFailure(
            f"prompt length mismatch: our tokenizer makes {isl} tokens, the server's /tokenize "
            f"counts {n}; the tokenizer file does not match the served model"
        )
    return n


PHASES = ("sequential", "burst", "sweep")


async def run_phases(
    gen: LoadGenerator,
    bench: dict[str, Any],
    notes: list[str],
    phases: tuple[str, ...] = PHASES,
    rates: list[float] | None = None,
    warmup: bool = True,
) -> tuple[pl.DataFrame, list[float]]:
    """warm-up (discarded) -> sequential -> burst -> sweep between the two measured rates.

    `rates` fixes the sweep's target rates (later repeats reuse the first repeat's, so that
    sweep step k means the same offered load in every repeat). Returns the requests and the
    sweep rates used."""
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {list(PHASES)}")
    if "sweep" in phases and not {"sequential", "burst"} <= set(phases):
        raise ValueError("the sweep needs both anchors: run it with the sequential and burst phases")
    warm = await gen.warmup(int(bench["warmup_requests"])) if warmup else []
    bad = [r for r in warm if r["status"] != "ok"]
    if bad:
        raise CellFailure(f"warm-up failed: {bad[0]['error']}")
    rows: list[dict[str, Any]] = []
    conc = int(bench.get("max_concurrency") or 0) or None
    if "sequential" in phases:
        rows += await gen.sequential(int(bench["sequential_requests"]))
    if "burst" in phases:
        rows += await gen.burst(int(bench["burst_requests"]), conc)
    if "sweep" not in phases:
        return metrics.requests_frame(rows), []
    summary = metrics.summarize(metrics.requests_frame([{**r, "cell_id": "", "repeat": 0} for r in rows]))
    by_phase = dict(zip(summary["phase"], summary["rps"]))
    seq, burst = by_phase.get("sequential"), by_phase.get("burst")
    log.info("sequential %.3f rps, burst %.3f rps", seq or 0, burst or 0)
    if rates is None:
        rates = metrics.sweep_rates(seq or 0.0, burst or 0.0, int(bench["sweep_rates"])) if seq and burst else []
    if int(bench["sweep_rates"]) and not rates:
        notes.append(f"sweep skipped: burst rate {burst} is not above sequential rate {seq}")
        log.warning(notes[-1])
    for step, rate in enumerate(rates):
        rows += await gen.rate(
            rate, float(bench["sweep_duration_s"]), step, bench["arrival"],
            seed=int(bench["seed"]) + step, max_concurrency=conc,
        )
    return metrics.requests_frame(rows), rates


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
        "server_env": cell.get("extra_env", {}),
        "server_log": str(server_log),
        "model_origin": model.get("origin"),
        "bench": bench,
        "notes": [],
    }
    requests = metrics.requests_frame([])
    served = cell["model"]
    try:
        info["hardware"] = hardware.describe()["summary"]
        model_path = model["paths"].get(adapter.model_format)
        if not model_path:
            raise CellFailure(f"model {cell['model']} has no {adapter.model_format} format prepared")
        port = free_port()
        spec = ServerSpec(
            python=installed["python"],
            model_path=model_path,
            served_name=served,
            quantization=cell["quantization"],
            port=port,
            tensor_parallel=max(1, int(cell.get("n_gpus") or 1)),
            max_model_len=model_cfg.get("max_model_len"),
            device=engine_cfg.get("device", "cuda"),
            extra_args=tuple(cell.get("extra_args", ())),
        )
        cmd = adapter.server_command(spec)
        env = server_environment(dict(os.environ), adapter.server_env(spec), cell.get("extra_env", {}))
        info["server_command"] = shlex.join(cmd)
        log.info("cell %s: server command: %s", cid, info["server_command"])
        log.info("cell %s: server log: %s", cid, server_log)
        base_url = f"http://127.0.0.1:{port}"
        timeout = float(engine_cfg.get("startup_timeout_s") or adapter.startup_timeout_s)
        with signals_raise(), Server(cmd, env, server_log, base_url, adapter.health_path,
                                     pid_file=out_dir / "server.pid") as server:
            info["startup_s"] = round(server.wait_ready(timeout), 2)
            if adapter.version_path:
                try:
                    v = httpx.get(base_url + adapter.version_path, timeout=10).json().get("version")
                    info["server_reported_version"] = v
                except (httpx.HTTPError, ValueError):
                    pass
            prompts = PromptFactory.from_file(model["tokenizer"], cell["isl"], int(bench["seed"]))
            info["tokenize_check"] = check_prompt_tokens(
                base_url, adapter.tokenize_path, served, prompts.make(10**9), cell["isl"])
            gen = LoadGenerator(
                base_url, served, cell["isl"], cell["osl"], prompts.make,
                endpoint=bench["endpoint"], extras=adapter.request_extras(cell["osl"]),
                request_timeout_s=float(bench["request_timeout_s"]),
            )
            frames, rates = [], None
            for rep in range(int(bench.get("repeats", 1))):
                if rep:
                    log.info("cell %s: repeat %d of %d", cid, rep + 1, bench["repeats"])
                df, rates = asyncio.run(run_phases(gen, bench, info["notes"], rates=rates, warmup=rep == 0))
                frames.append(df.with_columns(pl.lit(rep, pl.Int32).alias("repeat")))
            requests = pl.concat(frames)
        info["status"] = "ok"
    except KeyboardInterrupt:
        log.error("cell %s interrupted; server stopped, no results kept", cid)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed-cell row
        info["status"] = "failed"
        info["error"] = f"{type(exc).__name__}: {exc}"
        log.error("cell %s failed: %s", cid, info["error"])
        log.debug("%s", traceback.format_exc())
    info["finished_at"] = datetime.now(timezone.utc).isoformat()
    requests = requests.with_columns(pl.lit(cid).alias("cell_id"))
    if "repeat" not in requests.columns or requests["repeat"].null_count():
        requests = requests.with_columns(pl.lit(0, pl.Int32).alias("repeat"))
    phases = metrics.summarize(requests)
    if info["status"] == "ok":
        n_bad = int(phases["n_failed"].sum()) if len(phases) else 0
        n_mis = int(phases["n_token_mismatch"].sum()) if len(phases) else 0
        if n_bad or n_mis:
            info["notes"].append(f"{n_bad} failed requests, {n_mis} with token counts != isl/osl")
    write_parquet(out_dir / "requests.parquet", requests.select(list(metrics.REQUEST_SCHEMA)))
    write_parquet(out_dir / "phases.parquet", phases)
    write_json(out_dir / "cell.json", info)
    _log_summary(cid, phases)
    return info


def _log_summary(cid: str, phases: pl.DataFrame) -> None:
    for row in phases.iter_rows(named=True):
        log.info(
            "%s %s[%d]: %d ok / %d failed, %.3f rps, %.1f tok/s, TTFT p50 %.1f ms, TPOT p50 %.2f ms",
            cid, row["phase"], row["step"], row["n_ok"], row["n_failed"], row["rps"] or 0,
            row["output_tok_s"] or 0, row["ttft_p50_ms"] or 0, row["tpot_p50_ms"] or 0,
        )
