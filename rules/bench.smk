# Stage 3: one job per cell: start the server, warm up, sequential, burst, sweep, stop.


rule bench_cell:
    input:
        unpack(get_cell_inputs),
    output:
        cell=f"{CELL_DIR}/cell.json",
        requests=f"{CELL_DIR}/requests.parquet",
        phases=f"{CELL_DIR}/phases.parquet",
    log:
        "results/logs/bench_cell/{cell}.log",
    # bench.retries re-measures a cell that failed as data (see the shim); where it is 0, the
    # job follows --retries (profiles/slurm: a job killed by the cluster, e.g. out of time).
    retries: config.get("bench", {}).get("retries") or None
    threads: cell_threads
    resources:
        # gpu, cpus, mem_mb, runtime, ... for a scheduler: llm_almanac.resources, docs/cluster.md
        **bench_resources(),
        attempt=lambda wc, attempt: attempt,
    params:
        cell=lambda wc: CELLS[wc.cell].to_dict(),
        engine_cfg=lambda wc: engine_cfg(CELLS[wc.cell].engine),
        model_cfg=lambda wc: without_resources(config["models"][CELLS[wc.cell].model]),
        # the retry policy and the response cap are guard rails, not measurement settings:
        # changing them re-measures nothing (the shim reads them from the config)
        bench={k: v for k, v in config.get("bench", {}).items() if k not in GUARD_RAILS},
    script:
        "../scripts/bench_cell.py"


# bench.interleave (repeats >= 2): repeat {rep} of a cell, a job with its own server, after
# repeat {rep} - 1 of every cell; the cell's last repeat is rule bench_cell.
rule bench_round:
    input:
        unpack(get_round_inputs),
    output:
        f"{CELL_DIR}/rounds/{{rep}}.json",
    log:
        "results/logs/bench_round/{cell}.{rep}.log",
    threads: cell_threads
    resources:
        **bench_resources(),
        attempt=lambda wc, attempt: attempt,
    params:
        cell=lambda wc: CELLS[wc.cell].to_dict(),
        engine_cfg=lambda wc: engine_cfg(CELLS[wc.cell].engine),
        model_cfg=lambda wc: without_resources(config["models"][CELLS[wc.cell].model]),
        bench={k: v for k, v in config.get("bench", {}).items() if k not in GUARD_RAILS},
    script:
        "../scripts/bench_round.py"
