"""SGLang's CPU test instrument (module sglang-standin), without running it: the command line,
the environment that puts the stand-in kernel package first, the label its cells carry, and
that no user or Almanac grid can use it. tests/test_e2e_sglang.py runs it for real."""

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_almanac.engines import ServerSpec, UnsupportedQuantization, get_engine, known_engines
from llm_almanac.grid import TEST_INSTRUMENTS, ConfigError, expand_grid
from llm_almanac.install import requirements
from llm_almanac.testkit import SGL_KERNEL_STANDIN_PATH

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "sglang_cpu.yaml"


def spec(**kw):
    base = dict(python="/env/bin/python", model_path="/models/m", served_name="m",
                quantization="bf16", port=8000, device="cpu")
    base.update(kw)
    return ServerSpec(**base)


def test_standin_command_line():
    cmd = get_engine("sglang-standin").server_command(
        spec(max_model_len=2048, extra_args=("--disable-radix-cache", "--max-total-tokens", "8192")))
    assert cmd == ["/env/bin/python", "-m", "sglang.launch_server", "--model-path", "/models/m",
                   "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8000",
                   "--device", "cpu", "--sleep-on-idle", "--dtype", "bfloat16",
                   "--context-length", "2048", "--disable-radix-cache", "--max-total-tokens", "8192"]
    assert get_engine("sglang-standin").quant_flags("fp32", "cpu") == ["--dtype", "float32"]


def test_standin_refuses_gpus_and_gpu_quantizations_and_sglang_refuses_cpu():
    with pytest.raises(UnsupportedQuantization, match="CPU mode only"):
        get_engine("sglang-standin").quant_flags("bf16", "cuda")
    with pytest.raises(UnsupportedQuantization, match="not 'fp8'"):
        get_engine("sglang-standin").quant_flags("fp8", "cpu")
    with pytest.raises(UnsupportedQuantization, match="sglang-standin runs the CPU mode"):
        get_engine("sglang").quant_flags("bf16", "cpu")


def test_standin_env_puts_the_standin_first_and_switches_sglang_to_cpu():
    env = get_engine("sglang-standin").server_env(spec())
    assert env == {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": str(SGL_KERNEL_STANDIN_PATH)}
    assert (SGL_KERNEL_STANDIN_PATH / "sgl_kernel" / "__init__.py").is_file()
    assert get_engine("sglang").server_env(spec(device="cuda")) == {}


def test_standin_is_a_labelled_test_instrument_and_sglang_is_not():
    a = get_engine("sglang-standin")
    assert a.simulated and a.LABEL == "test instrument: SGLang with stand-in CPU kernels"
    assert not get_engine("sglang").simulated
    # the grid's opt-in list and the adapters agree on what is a test instrument
    assert set(TEST_INSTRUMENTS) == {m for m in known_engines() if get_engine(m).simulated}
    # the same endpoints and request fields as the GPU adapter it verifies
    for attr in ("health_path", "tokenize_path", "version_path", "entry_module"):
        assert getattr(a, attr) == getattr(get_engine("sglang"), attr)
    assert a.request_extras(16) == get_engine("sglang").request_extras(16)


def test_standin_needs_the_test_opt_in(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["engines"]["s"] = {"module": "sglang-standin", "device": "cpu", "version": "0.5.23"}
    cfg["grid"] = [{"models": ["smollm2-135m"], "engines": ["s"], "quantizations": ["bf16"],
                    "shapes": [{"isl": 8, "osl": 4}]}]
    with pytest.raises(ConfigError, match="module 'sglang-standin'.*allowed only in test configs"):
        expand_grid(cfg)
    cfg["allow_simulator"] = True
    assert [c.engine for c in expand_grid(cfg)] == ["s"]


def test_no_user_or_almanac_grid_uses_the_standin():
    for path in [ROOT / "config" / "config.yaml", *sorted((ROOT / "config").rglob("*.yaml"))]:
        cfg = yaml.safe_load(path.read_text())
        if not isinstance(cfg, dict):
            continue
        assert not cfg.get("allow_simulator"), path
        modules = {e.get("module", n) for n, e in (cfg.get("engines") or {}).items()}
        assert not modules & set(TEST_INSTRUMENTS), path


def test_test_config_pins_everything_and_installs_no_cuda_kernel_package():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["allow_simulator"] is True
    e = cfg["engines"]["sglang-cpu"]
    almanac = yaml.safe_load((ROOT / "config" / "grids" / "almanac.yaml").read_text())
    assert e["version"] == almanac["engines"]["sglang"]["version"]  # the version the Almanac runs
    package, reqs = requirements("sglang-cpu", e)
    assert package == "sglang" and reqs[:2] == ["sglang==0.5.23", "--no-deps"]
    pins = reqs[2:]
    assert all(r.count("==") == 1 and not r.startswith("-") for r in pins), pins
    names = {r.split("==")[0].lower().replace("_", "-") for r in pins}
    assert len(names) == len(pins)  # each package once
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    # the CUDA kernel wheels sglang asks for: none of them (sglang-kernel would shadow the stand-in)
    assert not names & {"sglang-kernel", "sgl-kernel", "flashinfer-python", "flash-attn-4",
                        "sgl-deep-ep", "sgl-deep-gemm", "sgl-flash-mla", "quack-kernels",
                        "nvidia-cutlass-dsl", "humming-kernels", "tilelang"}


def test_standin_module_imports_without_torch_and_only_offers_placeholders():
    """The stand-in needs nothing but Python to import (its names are placeholders), so it can
    be checked here, where torch is not installed."""
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import sgl_kernel
assert sgl_kernel.STAND_IN is True
try:
    sgl_kernel.assign_req_to_token_pool_cpu(None)
except NotImplementedError as e:
    assert "stand-in" in str(e) and "speculative decoding" in str(e), e
else:
    raise AssertionError("a placeholder returned")
try:
    from sgl_kernel import rmsnorm_cpu  # noqa: F401
except ImportError as e:
    assert "sgl_kernel_standin" in str(e), e
else:
    raise AssertionError("an unknown name imported")
print(sorted(sgl_kernel.IMPORT_ONLY))
"""
    p = subprocess.run([sys.executable, "-c", code, str(SGL_KERNEL_STANDIN_PATH)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    names = ast.literal_eval(p.stdout.strip())
    assert "assign_req_to_token_pool_cpu" in names and "copy_all_layer_kv_cache_cpu" in names
    src = (SGL_KERNEL_STANDIN_PATH / "sgl_kernel" / "__init__.py").read_text()
    assert "import torch" not in src and "torch.library" not in src  # registers no operator


def test_metrics_fixture_is_a_real_sglang_scrape_with_the_documented_names():
    """tests/data/metrics/sglang_cpu.txt: what docs/engines.md says about SGLang's /metrics."""
    text = (ROOT / "tests" / "data" / "metrics" / "sglang_cpu.txt").read_text()
    families = {ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    assert len(families) >= 80 and all(n.startswith("sglang:") for n in families)
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_time_per_output_token_seconds", "queue_time_seconds"):
        assert families["sglang:" + name] == "histogram", name
    for name in ("prompt_tokens_total", "generation_tokens_total", "num_requests_total"):
        assert families["sglang:" + name] == "counter", name
    for name in ("num_running_reqs", "num_queue_reqs", "token_usage", "cache_hit_rate", "gen_throughput"):
        assert families["sglang:" + name] == "gauge", name
    assert 'sglang:num_requests_total{engine_type="unified",is_streaming="true",model_name="smollm2-135m"} 6.0' in text
