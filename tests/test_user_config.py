"""A user's config stands alone: `--configfile` never inherits the default CPU grid."""

import re
import subprocess

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, run_snakemake

pytestmark = pytest.mark.e2e  # real Snakemake dry runs

TEN_LINES = """\
models:
  my-model: {source: hub, hub: my-org/my-model, gpus: 1}
engines:
  vllm: {module: vllm, version: "0.32.0"}
grid:
  - models: [my-model]
    engines: [vllm]
    quantizations: [bf16]
    shapes: [{isl: 1024, osl: 128}, {isl: 128, osl: 1024}]
"""


def _jobs(out):
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))


def test_a_ten_line_user_config_plans_only_its_own_cells_with_the_documented_defaults(tmp_path):
    assert len(TEN_LINES.splitlines()) <= 10
    cfg = tmp_path / "my.yaml"
    cfg.write_text(TEN_LINES)
    p = run_snakemake(tmp_path, cfg, "-n", "--printshellcmds")
    out = p.stdout + p.stderr
    cells = sorted(set(re.findall(r"results/cells/(\S+?)/cell\.json", out)))
    assert cells == ["my-model__vllm__bf16__1024-128", "my-model__vllm__bf16__128-1024"], out
    assert "smollm2" not in out and "llama-cpp" not in out and "vllm-cpu" not in out
    assert _jobs(out)["bench_cell"] == "2"
    # the bench settings are the schema's GPU-sized defaults, not the CPU grid's
    schema = yaml.safe_load((ROOT / "src/llm_almanac/config_schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"]["bench"]["properties"].items()}
    cpu = yaml.safe_load((ROOT / "config/config.yaml").read_text())["bench"]
    assert defaults["burst_requests"] > cpu["burst_requests"] and defaults["request_timeout_s"] > cpu["request_timeout_s"]


def test_no_configfile_runs_the_default_cpu_grid():
    p = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(ROOT), "-n", "--cores", "2"],
                       capture_output=True, text=True, timeout=300)
    cells = set(re.findall(r"results/cells/(\S+?)/cell\.json", p.stdout + p.stderr))
    assert {c.split("__")[1] for c in cells} == {"vllm-cpu", "llama-cpp"}


def test_example_gpu_grid_dry_run(tmp_path):
    p = run_snakemake(tmp_path, ROOT / "config" / "grids" / "example-gpu.yaml", "-n")
    out = p.stdout + p.stderr
    cells = sorted(set(re.findall(r"results/cells/(\S+?)/cell\.json", out)))
    assert len(cells) == 6 and {c.split("__")[1] for c in cells} == {"vllm", "sglang"}
    assert _jobs(out)["install_engine"] == "2" and "smollm2" not in out
    assert re.search(r"resources: .*\bgpu=1\b", out)
