"""docs/recipes.md: every recipe config plans what the recipe says (Snakemake dry runs)."""

import re

import pytest
import yaml

from llm_almanac.config import load_cells

from conftest import ROOT, run_snakemake

pytestmark = pytest.mark.e2e  # real Snakemake dry runs

RECIPES = ROOT / "config" / "recipes"


def _plan(tmp_path, name):
    p = run_snakemake(tmp_path, RECIPES / name, "-n")
    out = p.stdout + p.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    return out, jobs


def test_hub_model_recipe(tmp_path):
    cells = load_cells(yaml.safe_load((RECIPES / "hub-model.yaml").read_text()))
    assert {c.n_gpus for c in cells} == {2} and {c.quantization for c in cells} == {"bf16", "fp8"}
    assert all(c.extra_args[-2:] == ("--max-num-seqs", "256") for c in cells)
    out, jobs = _plan(tmp_path, "hub-model.yaml")
    assert jobs["bench_cell"] == "4" and jobs["prepare_model"] == "1"
    assert re.search(r"resources: .*\bgpu=2\b", out)


def test_two_versions_recipe_installs_two_environments(tmp_path):
    out, jobs = _plan(tmp_path, "two-versions.yaml")
    assert jobs["install_engine"] == "2" and jobs["bench_cell"] == "4"
    assert "vllm-0.32.0-" in out and "vllm-0.33.0-" in out


def test_tuned_vs_default_recipe_shares_one_environment(tmp_path):
    out, jobs = _plan(tmp_path, "tuned-vs-default.yaml")
    assert jobs["install_engine"] == "1" and jobs["bench_cell"] == "2"
    cells = {c.engine: c for c in load_cells(yaml.safe_load((RECIPES / "tuned-vs-default.yaml").read_text()))}
    assert "--max-num-seqs" in cells["vllm-tuned"].extra_args and "--max-num-seqs" not in cells["vllm"].extra_args
