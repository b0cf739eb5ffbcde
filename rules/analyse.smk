# Stage 4: per-cell analysis: SLO-bounded throughput (interpolated) with confidence intervals.


localrules:
    analyse_cell,


rule analyse_cell:
    input:
        cell=f"{CELL_DIR}/cell.json",
        requests=f"{CELL_DIR}/requests.parquet",
        phases=f"{CELL_DIR}/phases.parquet",
    output:
        slo=f"{CELL_DIR}/slo.parquet",
        # its curve points, so that the aggregate need not read every request again
        curve=f"{CELL_DIR}/curve.parquet",
    log:
        "results/logs/analyse_cell/{cell}.log",
    params:
        analysis=config.get("analysis", {}),
    script:
        "../scripts/analyse_cell.py"
