"""A fresh clone to `results/almanac.duckdb`, as the README's first command does it: the time
from `git clone` to the database, cold (empty pip and uv caches) and then warm (the caches the
cold run left), with where the time goes, read from Snakemake's log.

    python benchmarks/fresh_clone.py [--modes cold,warm] [--keep DIR]

Each mode clones this checkout's HEAD into a new folder and runs `make run` there. The caches
are folders of this run (PIP_CACHE_DIR, UV_CACHE_DIR), so the user's own caches are neither used
nor touched; everything else (the pip configuration, find-links, the network) is the machine's.
Prints per mode the total, `make setup`, and each Snakemake job's start and duration.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def jobs(log: str) -> list[tuple[str, datetime, datetime]]:
    """(rule and wildcards, start, end) of every finished job in a Snakemake log."""
    started: dict[str, tuple[str, datetime]] = {}
    done = []
    when, rule, jobid = None, "", ""
    for line in log.splitlines():
        if m := STAMP.match(line.strip()):
            when = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif m := re.match(r"^jobid: (\d+)$", line.strip()):
            jobid = m.group(1)
            if when:
                started[jobid] = (rule, when)
        elif m := re.match(r"^wildcards: (.+)$", line.strip()):
            if jobid in started:
                started[jobid] = (f"{started[jobid][0]} {m.group(1)}", started[jobid][1])
        elif (m := re.match(r"^Finished jobid: (\d+)", line.strip())) and when and m.group(1) in started:
            name, t0 = started.pop(m.group(1))
            done.append((name, t0, when))
    return sorted(done, key=lambda j: j[1])


def run(mode: str, caches: Path, work: Path) -> None:
    clone = work / f"clone-{mode}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PIP_CACHE_DIR": str(caches / "pip"), "UV_CACHE_DIR": str(caches / "uv")}
    load0 = os.getloadavg()[0]
    t0 = datetime.now().replace(microsecond=0)
    start = time.monotonic()
    with open(clone / "run.log", "w") as logf:
        rc = subprocess.run(["make", "run"], cwd=clone, env=env, stdout=logf, stderr=subprocess.STDOUT).returncode
    total = time.monotonic() - start
    done = jobs((clone / "run.log").read_text())
    print(f"\n{mode}: {total:.0f} s = {int(total // 60)}m{int(total % 60):02d}s, make run exit {rc}, "
          f"started {t0:%H:%M:%S}, load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    if done:
        print(f"  {'make setup (until the first job)':60s} {0:6.0f} s {(done[0][1] - t0).total_seconds():5.0f} s")
    for name, a, b in done:
        print(f"  {name[:60]:60s} {(a - t0).total_seconds():6.0f} s {(b - a).total_seconds():5.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="cold,warm", help="cold empties the caches first; warm uses what is there")
    ap.add_argument("--keep", help="run in this folder and keep the clones and caches (default: a temp folder)")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fresh-clone-"))
    caches = work / "caches"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    print(f"fresh clones of {ROOT} (HEAD {head}) in {work}")
    print(f"  {'job':60s} {'start':>8s} {'took':>7s}")
    try:
        for mode in a.modes.split(","):
            if mode == "cold":
                shutil.rmtree(caches, ignore_errors=True)
            run(mode, caches, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
