"""What the cell ran on: GPUs from nvidia-smi when present, the CPU otherwise."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import psutil


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return rows


def describe() -> dict[str, object]:
    g = gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    summary = (
        f"{len(g)}x {g[0]['name']} (driver {g[0]['driver']})" if g
        else f"CPU: {_cpu_model()} ({os.cpu_count()} logical cores)"
    )
    return {
        "summary": summary,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": g,
        "cuda_visible_devices": visible,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
