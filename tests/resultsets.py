"""Constructed result sets as two hosts (or one host twice) would write them: cell files, the
SLO rows analysed from them, and the database aggregate builds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from llm_almanac import metrics, reqstore, tables
from llm_almanac.aggregate import aggregate
from llm_almanac.analyse import analyse

CURVE = [("sequential", 0, 1.0), ("sweep", 0, 2.0), ("sweep", 1, 3.0), ("burst", 0, 4.0)]
CELLS = ["m__eng-a__bf16__128-32", "m__eng-b__bf16__128-32"]


def requests(cid: str, seed: int, slower: float = 1.0, n: int = 60) -> pl.DataFrame:
    """TTFT grows with load (so SLOs fall inside the curve); `slower` scales TTFT and TPOT."""
    rng = np.random.default_rng(seed)
    rows, rid = [], 0
    for repeat in (0, 1):
        for phase, step, rps in CURVE:
            for _ in range(n):
                ttft = float(rng.normal(200 * rps ** 1.5, 20)) * slower
                tpot = float(rng.normal(20, 1.5)) * slower
                rows.append({"cell_id": cid, "repeat": repeat, "phase": phase, "step": step,
                             "target_rps": None, "request_id": rid, "scheduled_s": 0.0, "sent_s": 0.0,
                             "end_s": n / rps, "send_lag_ms": 0.0, "ttft_ms": ttft, "tpot_ms": tpot,
                             "e2e_ms": ttft + 31 * tpot, "itl_ms": [tpot] * 4, "n_token_events": 32,
                             "prompt_tokens": 128, "completion_tokens": 32, "requested_isl": 128,
                             "requested_osl": 32, "token_mismatch": False, "status": "ok", "error": None})
                rid += 1
    return tables.frame(tables.REQUESTS, rows)


def write_cell(root: Path, cid: str, kind: str, run: str, seed: int, slower: float = 1.0,
               engine_version: str = "1.0") -> Path:
    d = root / "cells" / cid
    d.mkdir(parents=True)
    req = requests(cid, seed, slower)
    ph = metrics.summarize(req)
    req.write_parquet(d / "requests.parquet")
    ph.write_parquet(d / "phases.parquet")
    slos = [{"name": "ttft_p95<=1000ms", "conditions": [{"metric": "ttft_p95_ms", "threshold_ms": 1000}]}]
    analyse(req, ph, slos, bootstrap=20).write_parquet(d / "slo.parquet")
    engine = cid.split("__")[1]
    (d / "cell.json").write_text(json.dumps(tables.new_cell_record(
        cell_id=cid, model="m", engine=engine, engine_version=engine_version, quantization="bf16",
        isl=128, osl=32, status="ok", hardware=f"1x {kind}", hardware_kind=kind, run_id=run,
        host=f"host-{kind}", started_at="2026-11-30T10:00:00", n_gpus=1)))
    return d


def copy_db(src: Path, dst: Path) -> Path:
    """A copy of a database and its requests folder (files copied, not linked: edits stay in the copy)."""
    shutil.copyfile(src, dst)
    shutil.copytree(reqstore.folder_of(src), reqstore.folder_of(dst), copy_function=shutil.copyfile)
    reqstore.repoint(dst)
    return dst


def update_requests(db: Path, assignments: str, where: str, params: list | None = None) -> None:
    """`UPDATE requests SET <assignments> WHERE <where>` on a database whose requests are files
    (reqstore): each file rewritten beside itself and renamed over (never written through a link)."""
    import duckdb

    con = duckdb.connect()
    for f in sorted(reqstore.folder_of(db).glob("*.parquet")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE t AS SELECT * FROM read_parquet('{f}')")
        con.execute(f"UPDATE t SET {assignments} WHERE {where}", params or [])
        con.execute(f"COPY t TO '{f}.new' (FORMAT parquet)")
        Path(f"{f}.new").replace(f)
    con.close()


def result_set(root: Path, kind: str = "h100-80gb-x1", run: str = "r1", seed: int = 0,
               slower: dict[str, float] | None = None, cells: list[str] = CELLS) -> Path:
    """A `results/` folder with its almanac.duckdb; returns the database's path."""
    dirs = [write_cell(root, cid, kind, run, seed + i, (slower or {}).get(cid, 1.0)) for i, cid in enumerate(cells)]
    db = root / "almanac.duckdb"
    aggregate(dirs, db)
    return db
