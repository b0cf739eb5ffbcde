"""What copying request rows with their ITL lists into DuckDB's own storage costs, per column type.

    python benchmarks/itl_encodings.py [--rows 1000000]

Writes --rows synthetic requests (a 128-value ITL list each, rounded normal draws) as Parquet in
a temporary folder, once per encoding of the list (DOUBLE[], FLOAT[], INTEGER[] microseconds,
BLOB of float32 bytes), then times `INSERT INTO t SELECT * FROM read_parquet(...)` plus
`CHECKPOINT` into a new database file (2 threads), and reading the file alone. Why the store
keeps requests as Parquet files beside the database (src/llm_almanac/reqstore.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl


def files(root: Path, n: int) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    itl = np.round(rng.normal(10, 1, (n, 128)), 2)
    base = pl.DataFrame({"id": np.arange(n), "ttft": rng.gamma(4, 25, n)})
    lists = pl.Series("itl", itl, dtype=pl.Array(pl.Float64, 128)).cast(pl.List(pl.Float64))
    frames = {
        "DOUBLE[]": base.with_columns(lists),
        "FLOAT[]": base.with_columns(lists.cast(pl.List(pl.Float32))),
        "INTEGER[]": base.with_columns(lists.list.eval((pl.element() * 1000).round().cast(pl.Int32))),
        "BLOB": base.with_columns(pl.Series("itl", [r.tobytes() for r in itl.astype("<f4")], dtype=pl.Binary)),
    }
    out = {}
    for i, (typ, df) in enumerate(frames.items()):
        f = root / f"{i}.parquet"
        df.write_parquet(f)
        out[typ] = (f, typ)
    return out


def insert(root: Path, f: Path, typ: str) -> tuple[float, float, float]:
    db = root / "t.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute("SET threads = 2")
    con.execute(f"CREATE TABLE t (id BIGINT, ttft DOUBLE, itl {typ})")
    t, c = time.perf_counter(), time.process_time()
    con.execute(f"INSERT INTO t SELECT * FROM read_parquet('{f}')")
    con.execute("CHECKPOINT")
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    con.close()
    return wall, cpu, db.stat().st_size / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itl-encodings-") as td:
        root = Path(td)
        made = files(root, a.rows)
        print(f"{a.rows:,} requests x 128 ITL values; load average {os.getloadavg()[0]:.1f}")
        print(f"{'ITL column type':18s} {'wall':>8s} {'CPU':>8s} {'database':>10s}")
        for typ, (f, _) in made.items():
            wall, cpu, mib = insert(root, f, typ)
            print(f"{typ:18s} {wall:7.2f}s {cpu:7.2f}s {mib:8.0f} MiB", flush=True)
        con = duckdb.connect()
        con.execute("SET threads = 2")
        t, c = time.perf_counter(), time.process_time()
        con.execute(f"SELECT count(*), sum(len(itl)) FROM read_parquet('{made['DOUBLE[]'][0]}')").fetchall()
        print(f"{'read only':18s} {time.perf_counter() - t:7.2f}s {time.process_time() - c:7.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
