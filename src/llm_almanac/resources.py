"""What one cell's job asks a scheduler for: GPUs, CPUs, memory, wall time.

The numbers become Snakemake resources of rule bench_cell. snakemake-executor-plugin-slurm turns
them into sbatch flags (`gpu` and `gpu_model` -> `--gpus=[TYPE:]N`, `cpus_per_gpu` ->
`--cpus-per-gpu`, `cpus_per_task` -> `--cpus-per-task`, `mem_mb` -> `--mem`, `runtime` -> `-t`
minutes, `constraint` -> `-C`, `slurm_extra` appended as is). On a workstation `gpu` keeps the
cells' GPU count within `--resources gpu=N` and `threads` keeps CPU cells from sharing cores.

Settings come from `resources:` in the config, overridden per model by `models.<m>.resources`
(see config/schema.yaml and docs/cluster.md).
"""

from __future__ import annotations

from typing import Any

# A GPU cell's host side: the engine's own processes (tokenizer, scheduler, one worker per GPU)
# and our load generator share these CPUs. 64 GB per GPU fits H100 nodes (1-2 TB for 8 GPUs).
# 4 hours: the Almanac's slowest cells (8-GPU models, 2048/2048) load for tens of minutes and
# then run 11 phases of at most a few minutes each.
DEFAULTS: dict[str, Any] = {
    "runtime": 240,
    "cpus_per_gpu": 8,
    "mem_mb_per_gpu": 64000,
    "mem_mb": 16000,
}


class ResourceError(ValueError):
    """A cell cannot be given resources from this config; worded for the user."""


def settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """DEFAULTS, then the config's `resources`, then the model's own `resources`."""
    mcfg = (config.get("models") or {}).get(model) or {}
    return {**DEFAULTS, **(config.get("resources") or {}), **(mcfg.get("resources") or {})}


def cell_resources(n_gpus: int, res: dict[str, Any], local_cores: int | None, attempt: int = 1,
                   cell_id: str = "") -> dict[str, Any]:
    """Threads and scheduler resources of one bench_cell job.

    n_gpus: the cell's GPUs (0 for a CPU engine).
    res: `settings()` for the cell's model.
    local_cores: Snakemake's --cores when the job runs on this machine; None when it runs on a
      cluster, where the config's `resources.cpus` says how many CPUs a CPU cell asks for.
    attempt: Snakemake's attempt (1, 2, ...): a retried job gets `runtime x attempt` minutes,
      since the usual reason to retry on a cluster is a job that ran out of time.
    Values that are None are left out (Snakemake drops None resources).
    """
    cpu_cell = n_gpus == 0
    if cpu_cell:
        # A CPU engine uses every core it sees: locally that is the whole machine (one CPU cell
        # at a time, whatever --cores says); on a cluster, the node the job gets.
        if local_cores is not None:
            threads = local_cores
        elif res.get("cpus"):
            threads = int(res["cpus"])
        else:
            raise ResourceError(
                f"cell {cell_id} runs a CPU engine on a cluster: set resources.cpus in the config "
                "(the CPUs of one node of the partition it runs on, e.g. resources: {cpus: 32}); "
                "docs/cluster.md")
    else:
        threads = 1  # the GPUs bound a GPU cell; its CPUs come from cpus_per_gpu
    exclusive = res.get("exclusive")
    if exclusive is None:
        exclusive = cpu_cell  # a CPU cell must not share its node's cores with another job
    extra = " ".join(x for x in ("--exclusive" if exclusive else "", res.get("slurm_extra") or "") if x)
    return {
        "threads": threads,
        "gpu": n_gpus,
        "gpu_model": res.get("gpu_model") if n_gpus else None,
        "cpus_per_gpu": int(res["cpus_per_gpu"]) if n_gpus else None,
        "cpus_per_task": None if n_gpus else threads,
        "mem_mb": int(res["mem_mb_per_gpu"]) * n_gpus if n_gpus else int(res["mem_mb"]),
        "runtime": int(res["runtime"]) * max(1, int(attempt)),
        "constraint": res.get("constraint"),
        "slurm_extra": extra or None,
    }
