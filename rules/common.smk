# Config validation and grid expansion (llm_almanac.grid), plus input functions for the rules.
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from llm_almanac.config import (
    GUARD_RAILS,
    SCHEMA_PATH,
    check_local_paths,
    validate as validate_config,
)
from llm_almanac.db import DB_PATH, MANIFEST_PATH
from llm_almanac.engines import adapter_for
from llm_almanac.grid import (
    ConfigError,
    converter_engine,
    expand_grid,
    expand_variants,
    model_needs,
)
from llm_almanac.install import env_id
from llm_almanac.redact import externalize
from llm_almanac.resources import (
    ResourceError,
    cell_resources,
    settings as resource_settings,
)

# package data: the same file from a checkout and from a wheel
SCHEMA = str(SCHEMA_PATH)

try:
    validate_config(config, SCHEMA)  # one precise message naming the bad key
    validate(config, SCHEMA, set_default=True)  # fills the schema's defaults
    check_local_paths(config)
    # engines.<e>.variants.<v> -> engine entries <e>.<v>, which the rules look up like any other
    expand_variants(config)
    # Secrets out of everything Snakemake keeps (job params in .snakemake/metadata, the config
    # pickled into job scripts): the config holds references, the jobs inherit the values.
    os.environ.update(externalize(config))
    CELLS = {c.cell_id: c for c in expand_grid(config)}
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

ENGINES_DIR = config.get("engines_dir", "results/engines")
ENVS = {}  # environment id -> first engine that uses it
for _name, _ecfg in config["engines"].items():
    ENVS.setdefault(env_id(_name, _ecfg), _name)
DB = DB_PATH
MANIFEST = MANIFEST_PATH  # rule aggregate's declared output (the database is not one)
if not os.path.exists(DB) and os.path.exists(MANIFEST):
    os.remove(MANIFEST)  # a database deleted by hand is built again
REPORT = "results/report.html"
CELL_DIR = "results/cells/{cell}"


wildcard_constraints:
    cell="|".join(re.escape(c) for c in CELLS),
    env="|".join(re.escape(e) for e in ENVS),
    model="|".join(re.escape(m) for m in config["models"]),
    rep=r"\d+",


def engine_cfg(engine):
    return config["engines"][engine]


def installed_json(engine):
    return f"{ENGINES_DIR}/{env_id(engine, engine_cfg(engine))}/installed.json"


def get_prepare_inputs(wildcards):
    eng = converter_engine(wildcards.model, config, CELLS.values())
    return {"converter": installed_json(eng)} if eng else {}


def engine_and_model(cell):
    c = CELLS[cell]
    return {
        "installed": installed_json(c.engine),
        "model": f"results/models/{c.model}/ready.json",
    }


def interleaved_repeats():
    """bench.repeats where bench.interleave splits them into jobs, else 1 (no round jobs)."""
    bench = config.get("bench", {})
    return int(bench.get("repeats", 1)) if bench.get("interleave") else 1


def previous_round(rep):
    """Repeat `rep` of any cell waits for repeat rep - 1 of every cell. ancient(): a cell added
    to the grid later must not make the finished cells' jobs look out of date."""
    if rep < 1:
        return []
    return [ancient(f"results/cells/{c}/rounds/{rep - 1}.json") for c in CELLS]


def get_cell_inputs(wildcards):
    return {
        **engine_and_model(wildcards.cell),
        "previous": previous_round(interleaved_repeats() - 1),
    }


def get_round_inputs(wildcards):
    return {
        **engine_and_model(wildcards.cell),
        "previous": previous_round(int(wildcards.rep)),
    }


def reproduce_command(cell_id):
    """One command that reruns exactly this cell (and refreshes the database)."""
    cmd = ["snakemake", "--cores", "all"]
    if workflow.overwrite_configfiles:
        cmd += ["--configfile", *map(str, workflow.overwrite_configfiles)]
    cmd += ["--forcerun", f"results/cells/{cell_id}/cell.json"]
    return shlex.join(cmd)


def without_resources(cfg):
    """A config section minus its `resources`: what a job asks a scheduler for is not a
    measurement setting, so changing it must not re-measure (or re-prepare) anything."""
    return {k: v for k, v in cfg.items() if k != "resources"}


def cell_request(cell, attempt=1):
    """bench_cell's threads and resources (llm_almanac.resources). A job that runs here gets
    --cores as its CPU count; one that goes to a cluster, or runs inside a cluster job, gets
    the config's resources.cpus."""
    c = CELLS[cell]
    here = workflow.local_exec and not workflow.remote_exec
    try:
        return cell_resources(
            c.n_gpus,
            resource_settings(config, c.model),
            workflow.cores if here else None,
            attempt,
            cell,
        )
    except ResourceError as exc:
        raise WorkflowError(str(exc)) from None


def cell_threads(wildcards):
    """A CPU engine uses every core: one CPU cell at a time, whatever --cores says."""
    return cell_request(wildcards.cell)["threads"]


def bench_resources():
    """Resources of rule bench_cell, one function per name (None values are dropped)."""
    names = (
        "gpu",
        "gpu_model",
        "cpus_per_gpu",
        "cpus_per_task",
        "mem_mb",
        "runtime",
        "constraint",
        "slurm_extra",
    )
    return {
        n: (lambda wc, attempt, n=n: cell_request(wc.cell, attempt)[n]) for n in names
    }
