"""Snakemake shim: rule prepare_model -> llm_almanac.models.prepare_model."""
import json
from pathlib import Path

from llm_almanac import logs
from llm_almanac.models import prepare_model

sm = snakemake  # noqa: F821 - injected by Snakemake
logs.setup(sm.log[0])
out = Path(sm.output.ready)
converter = None
if sm.input.get("converter"):
    converter = json.loads(Path(sm.input.converter).read_text())["python"]
prepare_model(sm.wildcards.model, sm.params.model_cfg, out.parent, out,
              Path(sm.log[0]).with_suffix(".detail.log"), set(sm.params.needs), converter)
