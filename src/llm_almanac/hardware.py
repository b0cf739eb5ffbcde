"""What the cell ran on: GPUs from nvidia-smi when present, the CPU otherwise."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import psutil


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def isa_level(flags: set[str]) -> str:
    """The widest vector and matrix extensions the CPU offers, as far as inference speed is
    concerned: amx, avx512bf16, avx512, avx2 or '' (older or not x86)."""
    for level, flag in (("amx", "amx_tile"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"),
                        ("avx2", "avx2")):
        if flag in flags:
            return level
    return ""


def cpu_detail(info: dict[str, str] | None = None) -> str:
    """What tells two CPUs apart when the model name does not: a virtual machine often reports
    a bare "AMD EPYC" for every generation (this project's machines did, for an AVX2-only
    EPYC and for a family-26 one with AVX-512 and BF16, whose default-grid cells ran 1.6-2.5x
    faster). Family, model and ISA level (`f26m2-avx512bf16`), or '' when the name carries a
    model number itself."""
    info = _cpuinfo() if info is None else info
    if any(ch.isdigit() for ch in _slug(info.get("model name", ""))):
        return ""
    parts = [f"f{info['cpu family']}m{info['model']}" if "cpu family" in info and "model" in info else "",
             isa_level(set(info.get("flags", "").split()))]
    return "-".join(p for p in parts if p)


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
        "cpu_detail": cpu_detail(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": g,
        "cuda_visible_devices": visible,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _slug(text: str) -> str:
    import re

    text = re.sub(r"\((r|tm)\)|\b(nvidia|processor|cpu|core|with|radeon graphics)\b", " ", text.lower())
    text = re.sub(r"@.*$", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def kind_of(gpu_names: list[str], gpu_memory: list[str], cpu_model: str, cpu_count: int | None,
            cpu_extra: str = "") -> str:
    """A short normalized key for the hardware a measurement ran on, e.g. `h100-80gb-hbm3-x1`
    or `cpu-amd-epyc-9654-96-2c`: GPU model and memory × count, or CPU model (and `cpu_extra`,
    cpu_detail() where the model name is generic) and cores. Results are compared and merged by
    it, so it names the kind of machine, never the machine."""
    if gpu_names:
        name = _slug(gpu_names[0])
        mem = gpu_memory[0] if gpu_memory else ""
        digits = "".join(ch for ch in mem if ch.isdigit())
        if digits and "gb" not in name:
            name += f"-{round(int(digits) / 1024)}gb"
        return f"{name}-x{len(gpu_names)}"
    model = "-".join(p for p in (_slug(cpu_model), cpu_extra) if p)
    return f"cpu-{model}-{cpu_count or 0}c"


def kind(visible: str | None = None) -> str:
    """This machine's hardware kind (`ALMANAC_HARDWARE_KIND` overrides it, e.g. to label a
    simulated host); `visible` as in describe()."""
    override = os.environ.get("ALMANAC_HARDWARE_KIND")
    if override:
        return override
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    g = visible_gpus(gpus(), visible)
    return kind_of([x["name"] for x in g], [x["memory"] for x in g], _cpu_model(), os.cpu_count(), cpu_detail())
