"""profiles/slurm on the Almanac GPU grid: the exact sbatch command lines its cells get.

The real plugin (snakemake-executor-plugin-slurm) builds and runs the sbatch command, but the
`sbatch`, `squeue`, `scontrol`, `sacct`, `sinfo` and `scancel` it finds on PATH are stand-ins:
sbatch records its arguments and answers a job id, squeue reports every job FAILED. No job runs
and no GPU is needed. The engines and models are marked installed and prepared (their output
files exist), so the DAG holds only the targeted cells; their resources come from the config
(config/grids/almanac.yaml `resources:`, one model's own `resources:`, plus a GPU type), their
partition from the profile. The profile retries a failed job once, with twice the time.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# real Snakemake runs with the SLURM profile (stand-in sbatch): not the fast lane
pytestmark = pytest.mark.slurm
GRID = ROOT / "config" / "grids" / "almanac.yaml"
ONE_GPU = "llama-3.1-8b-instruct__vllm__bf16__1024-128"
EIGHT_GPU = "deepseek-v3.1__sglang__fp8__1024-128"

FAKE = {
    "sbatch": """
calls = pathlib.Path(os.environ["FAKE_SLURM_DIR"]) / "sbatch.jsonl"
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print(1001 + n)
""",
    "squeue": """
calls = pathlib.Path(os.environ["FAKE_SLURM_DIR"]) / "sbatch.jsonl"
n = len(calls.read_text().splitlines()) if calls.exists() else 0
for i in range(n):
    print(f"{1001 + i}|FAILED")
""",
    "scontrol": 'print("MinJobAge               = 300 sec")',
    "sacct": 'sys.exit("sacct: error: Slurm accounting storage is disabled")',
    "sinfo": 'print("PARTITION\\ngpu*")',
    "scancel": "",
}


def submit(work, configfiles, targets):
    """Run Snakemake with profiles/slurm and stand-in SLURM commands on `targets`; return the
    finished process, every sbatch argv, and the input files marked done."""
    fake = work / "fakebin"
    fake.mkdir()
    for name, body in FAKE.items():
        (fake / name).write_text(f"#!{sys.executable}\nimport json, os, pathlib, sys\n{body}")
        (fake / name).chmod(0o755)
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", *map(str, configfiles), "--workflow-profile", str(ROOT / "profiles" / "slurm")]
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(work)}
    env.pop("SLURM_CONF", None)
    # what the cells need: mark it done, as an earlier run (or a colleague) would have
    dry = subprocess.run([*base, "-n", *targets], capture_output=True, text=True, timeout=300, env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    needed = set(re.findall(r"results/(?:engines|models)/\S+?/(?:installed|ready)\.json", dry.stdout))
    now = time.time()
    for f in needed:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("{}")
        age = 120 if "/engines/" in f else 60  # a model is prepared after the engine that converts it
        os.utime(work / f, (now - age, now - age))
    p = subprocess.run([*base, "--slurm-init-seconds-before-status-checks", "1",
                        "--seconds-between-status-checks", "1", *targets],
                       capture_output=True, text=True, timeout=300, env=env)
    log = work / "sbatch.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return p, calls, needed


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm-profile")
    extra = work / "gpu-type.yaml"
    extra.write_text(yaml.safe_dump({"resources": {"gpu_model": "h100"}}))
    p, calls, needed = submit(work, [GRID, extra], [f"results/cells/{c}/cell.json" for c in (ONE_GPU, EIGHT_GPU)])
    assert len(needed) == 4, needed  # vLLM's and SGLang's environments, the two models
    return p, calls, needed, work


def _by_cell(calls):
    out = {}
    for argv in calls:
        comment = argv[argv.index("--comment") + 1]
        out.setdefault(comment.removeprefix("rule_bench_cell_wildcards_"), []).append(argv)
    return out


def _flags(argv):
    """sbatch's flags before --wrap, as one string (the order the plugin writes them in)."""
    return " ".join(a for a in argv if not a.startswith("--wrap"))


def test_only_the_two_cells_are_submitted_each_retried_once(submitted):
    p, calls, needed, work = submitted
    assert p.returncode != 0  # every job "FAILED": the stand-in squeue says so
    by_cell = _by_cell(calls)
    assert set(by_cell) == {ONE_GPU, EIGHT_GPU}, [c[:12] for c in calls]
    assert all(len(v) == 2 for v in by_cell.values())  # profile: retries: 1
    assert all(a[a.index("--comment") + 1].startswith("rule_bench_cell_") for a in calls)
    assert all(json.loads((work / f).read_text()) == {} for f in needed)  # nothing installed again


@pytest.mark.parametrize("cell, gpus, runtime, mem", [(ONE_GPU, 1, 240, 120000), (EIGHT_GPU, 8, 480, 8 * 120000)])
def test_sbatch_lines_of_a_1_gpu_and_an_8_gpu_cell(submitted, cell, gpus, runtime, mem):
    _, calls, _, work = submitted
    first, retry = _by_cell(calls)[cell]
    print(f"sbatch {shlex.join(a if not a.startswith('--wrap') else '--wrap=...' for a in first)}")
    for argv, minutes in ((first, runtime), (retry, 2 * runtime)):
        flags = _flags(argv)
        assert re.search(r"(^| )-p gpu( |$)", flags), flags  # the profile's partition
        assert f" -t {minutes} " in f" {flags} ", flags  # config runtime (per model for DeepSeek) x attempt
        assert f" --mem {mem} " in f" {flags} ", flags  # GPUs x mem_mb_per_gpu
        assert "--cpus-per-gpu=12" in argv
        assert f"--gpus=h100:{gpus}" in argv  # the model's GPU count, of the configured type
        assert "--exclusive" not in flags  # 1-GPU cells may share an 8-GPU node
        assert not any(a.startswith(("--ntasks", "--cpus-per-task", "-A")) for a in argv)
        assert argv[argv.index("-D") + 1] == str(work)
        wrap = next(a for a in argv if a.startswith("--wrap"))
        assert f"bench_cell:cell={cell}" in wrap and "--executor slurm-jobstep" in wrap


def test_cpu_cells_get_cpus_and_the_node_exclusively(tmp_path):
    """The default CPU grid under the same profile: --cpus-per-task from resources.cpus and
    --exclusive (a CPU engine uses every core of its node), no GPUs. test_slurm_cluster shows a
    real SLURM granting such a request."""
    cfg = tmp_path / "cpus.yaml"
    cfg.write_text(yaml.safe_dump({"resources": {"cpus": 16, "mem_mb": 32000}}))
    cells = ["smollm2-135m__vllm-cpu__fp32__128-32", "smollm2-135m__llama-cpp__q4_1__128-32"]
    _, calls, _ = submit(tmp_path, [ROOT / "config" / "config.yaml", cfg],
                         [f"results/cells/{c}/cell.json" for c in cells])
    by_cell = _by_cell(calls)
    assert set(by_cell) == set(cells)
    for argv in (v[0] for v in by_cell.values()):
        flags = _flags(argv)
        print(f"sbatch {flags} --wrap=...")
        for want in ("-p gpu", "-t 240", "--mem 32000", "--ntasks=1", "--cpus-per-task=16", "--exclusive"):
            assert f" {want} " in f" {flags} ", (want, flags)
        assert not any(a.startswith("--gpus") or a.startswith("--cpus-per-gpu") for a in argv)


def test_a_cpu_cell_on_a_cluster_needs_resources_cpus(tmp_path):
    p, calls, _ = submit(tmp_path, [ROOT / "config" / "config.yaml"],
                         ["results/cells/smollm2-135m__llama-cpp__q4_1__128-32/cell.json"])
    assert p.returncode != 0 and calls == []
    assert "runs a CPU engine on a cluster: set resources.cpus" in p.stdout + p.stderr
