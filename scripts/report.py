"""Snakemake shim: rule report -> llm_almanac.report.build_report."""
import json
from pathlib import Path

from llm_almanac import logs
from llm_almanac.report import build_report

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
build_report(json.loads(Path(sm.input.manifest).read_text())["database"], sm.output.html)
