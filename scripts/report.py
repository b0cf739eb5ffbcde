"""Snakemake shim: rule report -> llm_almanac.report.build_report."""
from llm_almanac import logs
from llm_almanac.report import build_report

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
build_report(sm.input.db, sm.output.html)
