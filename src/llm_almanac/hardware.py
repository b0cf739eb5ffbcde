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
    """Every GPU nvidia-smi lists (it ignores CUDA_VISIBLE_DEVICES)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            rows.append({"index": parts[0], "uuid": parts[1], "name": parts[2], "memory": parts[3],
                         "driver": parts[4]})
    return rows


def gpu_ids() -> list[str]:
    """The indexes of every GPU on this machine (what CUDA_VISIBLE_DEVICES takes)."""
    return [g["index"] for g in gpus()]


def visible_gpus(all_gpus: list[dict[str, str]], visible: str | None) -> list[dict[str, str]]:
    """The GPUs a process with this CUDA_VISIBLE_DEVICES sees (by index or UUID, in its order)."""
    if visible is None:
        return all_gpus
    out = []
    for v in (x.strip() for x in visible.split(",") if x.strip()):
        out += [g for g in all_gpus if v in (g.get("index"), g.get("uuid"))][:1]
    return out


def describe(visible: str | None = None) -> dict[str, object]:
    """What a cell ran on; `visible` is the engine's CUDA_VISIBLE_DEVICES (default: ours)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    g = visible_gpus(gpus(), visible)
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
