# Stage 5: every cell (ok or failed) into one DuckDB file, rebuilt from the cell files.
# The declared output is the database's manifest, not the database: Snakemake deletes a job's
# outputs before it runs, and the last good database must survive a failed aggregate.


localrules:
    aggregate,


rule aggregate:
    input:
        cells=expand(f"{CELL_DIR}/cell.json", cell=list(CELLS)),
        requests=expand(f"{CELL_DIR}/requests.parquet", cell=list(CELLS)),
        phases=expand(f"{CELL_DIR}/phases.parquet", cell=list(CELLS)),
        slo=expand(f"{CELL_DIR}/slo.parquet", cell=list(CELLS)),
        curve=expand(f"{CELL_DIR}/curve.parquet", cell=list(CELLS)),
    output:
        manifest=MANIFEST,
    log:
        "results/logs/aggregate.log",
    params:
        db=DB,
        # How to rerun each cell *from this invocation*; kept out of bench_cell's params so that
        # running under another config file name does not re-measure unchanged cells.
        reproduce={c: reproduce_command(c) for c in CELLS},
        # The answers table: its SLOs and the prices of its costs.
        analysis=config.get("analysis", {}),
        prices=config.get("prices", {}),
    script:
        "../scripts/aggregate.py"
