"""Constructed cells for the answers tests: per point a centre TTFT and TPOT, n requests around
them (5% noise), written as the pipeline writes a cell, then aggregated into a database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm_almanac import metrics, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.analyse import analyse

H100 = "1x NVIDIA H100 80GB HBM3 (driver 550.54.15)"
CPU = "CPU: test (2 logical cores)"


def frames(cid: str, points: list[tuple], isl: int, osl: int, n: int = 40, seed: int = 0):
    """points: (phase, step, rps, ttft centre ms, tpot centre ms)."""
    rng = np.random.default_rng(seed)
    rows, rid = [], 0
    for phase, step, rps, ttft, tpot in points:
        for t, p in zip(rng.normal(ttft, ttft * 0.05, n), rng.normal(tpot, tpot * 0.05, n)):
            e2e = float(t) + float(p) * (osl - 1)
            rows.append({"cell_id": cid, "repeat": 0, "phase": phase, "step": step, "target_rps": None,
                         "request_id": rid, "scheduled_s": 0.0, "sent_s": 0.0, "end_s": n / rps,
                         "send_lag_ms": 0.0, "ttft_ms": float(t), "tpot_ms": float(p), "e2e_ms": e2e,
                         "itl_ms": [float(p)] * 3, "n_token_events": osl, "prompt_tokens": isl,
                         "completion_tokens": osl, "requested_isl": isl, "requested_osl": osl,
                         "token_mismatch": False, "status": "ok", "error": None})
            rid += 1
    req = tables.frame(tables.REQUESTS, rows)
    return req, metrics.summarize(req)


def write_cell(root: Path, model: str, engine: str, quant: str, isl: int, osl: int, points: list[tuple],
               hardware: str = H100, n_gpus: int = 1, status: str = "ok", version: str = "1.0", seed: int = 0) -> Path:
    cid = f"{model}__{engine}__{quant}__{isl}-{osl}"
    d = root / cid
    d.mkdir(parents=True)
    req, ph = frames(cid, points if status == "ok" else [], isl, osl, seed=seed)
    req.write_parquet(d / "requests.parquet")
    ph.write_parquet(d / "phases.parquet")
    if status == "ok":
        analyse(req, ph).write_parquet(d / "slo.parquet")
    (d / "cell.json").write_text(json.dumps({
        "cell_id": cid, "model": model, "engine": engine, "engine_version": version, "quantization": quant,
        "isl": isl, "osl": osl, "status": status,
        "error": None if status == "ok" else "ServerStartupError: bad flag", "hardware": hardware,
        "n_gpus": n_gpus, "startup_s": 3.0, "server_command": f"{engine} serve {model} --port 8000", "notes": []}))
    return d


def curve(rates: list[float], ttfts: list[float], tpots: list[float]) -> list[tuple]:
    """sequential, sweep steps, burst points from parallel lists (rates ascending)."""
    names = [("sequential", 0)] + [("sweep", i) for i in range(len(rates) - 2)] + [("burst", 0)]
    return [(p, s, r, t, q) for (p, s), r, t, q in zip(names, rates, ttfts, tpots)]


def build(root: Path, prices: dict | None = None) -> Path:
    """Two models; m1 on one H100 at three shapes (two differ only in output length, two only in
    prompt length) on three engine+quantization configurations and a failed one; m2 on a CPU, with
    a cell that is ok but measured no point (its answer: no-data)."""
    cells = root / "cells"
    dirs = []
    for isl, osl, slow in ((128, 32, 1.0), (128, 128, 2.5), (1024, 128, 3.2)):
        dirs.append(write_cell(cells, "m1", "eng-a", "bf16", isl, osl, curve(
            [1.0, 2.0, 3.0, 4.0, 5.0], [x * slow for x in (150, 400, 900, 2500, 6000)],
            [x * slow for x in (8, 12, 20, 35, 60)]), version="0.9.1"))
        dirs.append(write_cell(cells, "m1", "eng-b", "bf16", isl, osl, curve(
            [1.5, 3.0, 4.5, 6.0], [x * slow for x in (100, 180, 300, 650)],
            [x * slow for x in (6, 9, 14, 22)]), version="2.0.0"))
        dirs.append(write_cell(cells, "m1", "eng-b", "fp8", isl, osl, curve(
            [1.6, 3.1, 4.6, 6.2], [x * slow for x in (95, 190, 320, 700)],
            [x * slow for x in (5, 8, 13, 21)]), version="2.0.0", seed=1))
    dirs.append(write_cell(cells, "m1", "eng-c", "bf16", 128, 32, [], status="failed"))
    dirs.append(write_cell(cells, "m2", "eng-z", "q4", 512, 64, [], hardware=CPU, n_gpus=0))  # ok, no point
    dirs.append(write_cell(cells, "m2", "eng-a", "q4", 512, 64, curve(
        [0.8, 1.2, 1.6, 2.0], [300, 500, 900, 1600], [20, 26, 34, 48]), hardware=CPU, n_gpus=0))
    db = root / "almanac.duckdb"
    aggregate(dirs, db, {d.name: f"snakemake --cores all --forcerun results/cells/{d.name}/cell.json" for d in dirs},
              prices=prices)
    return db
