"""Snakemake shim: rule install_engine -> llm_almanac.install.install_engine."""
from pathlib import Path

from llm_almanac import logs
from llm_almanac.install import install_engine

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
out = Path(sm.output.installed)
install_engine(sm.params.engine, sm.params.engine_cfg, out.parent / "venv", out,
               Path(sm.log[0]).with_suffix(".pip.log"))
