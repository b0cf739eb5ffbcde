import pytest

from llm_almanac.config import validate
from llm_almanac.grid import ConfigError, cell_id, expand_grid, slugify


def _cfg(**over):
    cfg = {
        "models": {"m1": {"source": "local", "path": "/x", "max_model_len": 4096},
                   "m2": {"source": "hub", "hub": "org/M2", "gpus": 8}},
        "engines": {"vllm": {"version": "1.0", "device": "cuda"},
                    "vllm-cpu": {"module": "vllm", "device": "cpu", "version": "0.32.0"}},
        "grid": [{"models": ["m1", "m2"], "engines": ["vllm"], "quantizations": ["bf16", "fp8"],
                  "shapes": [{"isl": 128, "osl": 1024}, {"isl": 1024, "osl": 128}]}],
    }
    cfg.update(over)
    return cfg


def test_product_in_config_order_with_gpu_counts():
    cells = expand_grid(_cfg())
    assert len(cells) == 2 * 1 * 2 * 2
    assert [c.cell_id for c in cells[:3]] == [
        "m1__vllm__bf16__128-1024", "m1__vllm__bf16__1024-128", "m1__vllm__fp8__128-1024"]
    assert {c.model: c.n_gpus for c in cells} == {"m1": 1, "m2": 8}


def test_cpu_engine_cells_take_no_gpu():
    cfg = _cfg(grid=[{"models": ["m1"], "engines": ["vllm-cpu"], "quantizations": ["bf16"],
                      "shapes": [{"isl": 16, "osl": 8}]}])
    (cell,) = expand_grid(cfg)
    assert cell.n_gpus == 0 and cell.cell_id == "m1__vllm-cpu__bf16__16-8"


def test_exclusions_top_level_and_per_entry_with_lists():
    cfg = _cfg(exclude=[{"model": "m2", "quantization": "fp8"}])
    cfg["grid"][0]["exclude"] = [{"isl": [1024], "osl": 128, "model": "m1"}]
    ids = {c.cell_id for c in expand_grid(cfg)}
    assert "m2__vllm__fp8__128-1024" not in ids and "m2__vllm__fp8__1024-128" not in ids
    assert "m1__vllm__bf16__1024-128" not in ids and "m1__vllm__fp8__1024-128" not in ids
    assert ids == {"m1__vllm__bf16__128-1024", "m1__vllm__fp8__128-1024",
                   "m2__vllm__bf16__128-1024", "m2__vllm__bf16__1024-128"}


def test_duplicate_cell_is_named():
    cfg = _cfg()
    cfg["grid"].append({"models": ["m1"], "engines": ["vllm"], "quantizations": ["bf16"],
                        "shapes": [{"isl": 128, "osl": 1024}]})
    with pytest.raises(ConfigError, match=r"m1__vllm__bf16__128-1024 is listed twice \(grid\[0\] and grid\[1\]\)"):
        expand_grid(cfg)


def test_unknown_engine_and_model_are_named():
    cfg = _cfg()
    cfg["grid"][0]["engines"] = ["sglang-typo"]
    with pytest.raises(ConfigError, match="unknown engine 'sglang-typo'"):
        expand_grid(cfg)
    cfg = _cfg()
    cfg["grid"][0]["models"] = ["nope"]
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        expand_grid(cfg)


def test_context_overflow_names_cell():
    cfg = _cfg()
    cfg["grid"][0]["shapes"] = [{"isl": 4000, "osl": 200}]
    with pytest.raises(ConfigError, match="m1__vllm__bf16__4000-200 needs isl\\+osl=4200"):
        expand_grid(cfg)


def test_impossible_quantization_names_cell():
    cfg = _cfg(grid=[{"models": ["m1"], "engines": ["vllm-cpu"], "quantizations": ["fp8"],
                      "shapes": [{"isl": 16, "osl": 8}]}])
    with pytest.raises(ConfigError, match="cell m1__vllm-cpu__fp8__16-8: vllm on CPU serves"):
        expand_grid(cfg)


def test_model_key_must_be_slug():
    cfg = _cfg()
    cfg["models"]["Org/Model"] = cfg["models"].pop("m1")
    with pytest.raises(ConfigError, match="'Org/Model' is not a slug.*'org-model'"):
        expand_grid(cfg)


def test_slugify_and_ids_are_path_safe():
    assert slugify("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama-llama-3.1-8b-instruct"
    cid = cell_id("meta-llama-llama-3.1-8b-instruct", "vllm", "fp8", 128, 1024)
    assert "/" not in cid and cid.count("__") == 3


def test_engine_args_and_env_merge_into_cell():
    cfg = _cfg()
    cfg["engines"]["vllm"]["args"] = ["--a"]
    cfg["engines"]["vllm"]["env"] = {"X": "1"}
    cfg["models"]["m1"]["engine_args"] = {"vllm": ["--m"]}
    cfg["models"]["m1"]["engine_env"] = {"vllm": {"Y": "2"}}
    cfg["grid"][0]["engine_args"] = {"vllm": ["--g"]}
    c = expand_grid(cfg)[0]
    assert c.extra_args == ("--a", "--g", "--m")
    assert dict(c.extra_env) == {"X": "1", "Y": "2"}


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(modles={}), r"^config: unknown key 'modles'; allowed keys: "
                                        r"\['allow_simulator', .*'models'.*\] \(and keys matching \^x-\)"),
    (lambda c: c["grid"][0]["shapes"][0].update(isl="128"), r"^config\.grid\[0\]\.shapes\[0\]\.isl: "
                                                             r"'128' is not of type 'integer'"),
    (lambda c: c["grid"][0]["shapes"][0].update(osl=0), r"^config\.grid\[0\]\.shapes\[0\]\.osl: 0 is less than the minimum of 1"),
    (lambda c: c["engines"]["vllm-cpu"].update(module="vlm"), r"^config\.engines\.vllm-cpu\.module: "
     r"'vlm' is not one of \['vllm', 'sglang', 'trtllm', 'llamacpp', 'sim', 'sglang-standin'\]"),
    (lambda c: c["bench"].update(burst_requests=-1), r"^config\.bench\.burst_requests: -1 is less than the minimum of 1"),
    (lambda c: c["engines"]["vllm-cpu"].update(versoin="1"), r"^config\.engines\.vllm-cpu: unknown key 'versoin'; "
                                                              r"allowed keys: \['args', .*'version'\]$"),
])
def test_schema_errors_name_the_key(default_config, schema_path, mutate, message):
    validate(default_config, schema_path)  # the shipped config is valid
    mutate(default_config)
    with pytest.raises(ConfigError, match=message):
        validate(default_config, schema_path)


def test_missing_local_model_path_stops_at_dag_build(tmp_path):
    from llm_almanac.config import check_local_paths

    cfg = _cfg()
    with pytest.raises(ConfigError, match=r"config\.models\.m1\.path: /x does not exist"):
        check_local_paths(cfg)
    cfg["models"]["m1"]["path"] = str(tmp_path)
    check_local_paths(cfg)  # exists: fine


def test_simulator_needs_explicit_test_opt_in():
    cfg = _cfg()
    cfg["engines"]["fake"] = {"module": "sim", "version": "0"}
    cfg["grid"][0]["engines"] = ["fake"]
    with pytest.raises(ConfigError, match="module 'sim', the test simulator, which is not an engine"):
        expand_grid(cfg)
    cfg["allow_simulator"] = True
    assert expand_grid(cfg)[0].engine == "fake"


def test_fp8_on_llamacpp_is_rejected_naming_the_cell():
    cfg = _cfg()
    cfg["engines"]["llama-cpp"] = {"module": "llamacpp", "device": "cpu", "version": "1"}
    cfg["grid"] = [{"models": ["m1"], "engines": ["llama-cpp"], "quantizations": ["fp8"],
                    "shapes": [{"isl": 16, "osl": 8}]}]
    with pytest.raises(ConfigError, match="cell m1__llama-cpp__fp8__16-8: llama.cpp serves GGUF files"):
        expand_grid(cfg)
