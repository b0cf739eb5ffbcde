# Stage 6: the self-contained HTML report (also part of `snakemake --report`).


localrules:
    report,


rule report:
    input:
        manifest=MANIFEST,
    output:
        html=report(REPORT, caption="../docs/report_caption.rst", category="Report"),
    log:
        "results/logs/report.log",
    script:
        "../scripts/report.py"
