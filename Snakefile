# llm-almanac: benchmark open LLMs on inference engines, one reproducible cell at a time.
# Setup only: config, validation, rule files, and the default target. See README.md.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from llm_almanac.config import config_file_problem

min_version("9.0")

# a malformed config file: one line naming its file and line (Snakemake's own message has neither)
if problem := config_file_problem("config/config.yaml"):
    raise WorkflowError(problem)


# The default grid runs only when no --configfile is given: a user's config stands alone and never
# inherits the CPU grid's models, engines or bench settings (it gets the schema's defaults).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/install.smk"
include: "rules/models.smk"
include: "rules/bench.smk"
include: "rules/analyse.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        MANIFEST,
        REPORT,
