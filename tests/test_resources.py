"""What a cell's job asks a scheduler for (llm_almanac.resources), from the config."""

import pytest

from llm_almanac.resources import DEFAULTS, ResourceError, cell_resources, settings


def test_settings_layer_defaults_config_and_model():
    cfg = {"resources": {"runtime": 60, "cpus_per_gpu": 4},
           "models": {"big": {"resources": {"runtime": 480}}, "small": {}}}
    assert settings(cfg, "small") == {**DEFAULTS, "runtime": 60, "cpus_per_gpu": 4}
    assert settings(cfg, "big")["runtime"] == 480 and settings(cfg, "big")["cpus_per_gpu"] == 4
    assert settings({"models": {"m": {}}}, "m") == DEFAULTS


def test_gpu_cell_asks_for_its_gpus_cpus_and_memory_per_gpu():
    res = {**DEFAULTS, "gpu_model": "h100", "cpus_per_gpu": 12, "mem_mb_per_gpu": 120000}
    r = cell_resources(8, res, local_cores=None)
    assert r == {"threads": 1, "gpu": 8, "gpu_model": "h100", "cpus_per_gpu": 12, "cpus_per_task": None,
                 "mem_mb": 960000, "runtime": 240, "constraint": None, "slurm_extra": None}
    # the same locally: a GPU cell is bounded by its GPUs, not by --cores
    assert cell_resources(8, res, local_cores=32) == r


def test_cpu_cell_takes_every_local_core_or_the_configured_cpus_and_the_node():
    local = cell_resources(0, dict(DEFAULTS), local_cores=6)
    assert local["threads"] == 6 and local["cpus_per_task"] == 6 and local["gpu"] == 0
    assert local["gpu_model"] is None and local["cpus_per_gpu"] is None
    assert local["mem_mb"] == DEFAULTS["mem_mb"] and local["slurm_extra"] == "--exclusive"
    cluster = cell_resources(0, {**DEFAULTS, "cpus": 32, "gpu_model": "h100"}, local_cores=None)
    assert cluster["threads"] == 32 and cluster["cpus_per_task"] == 32
    assert cluster["gpu_model"] is None  # a GPU type means nothing to a CPU cell


def test_cpu_cell_on_a_cluster_without_cpus_is_an_error_naming_the_key():
    with pytest.raises(ResourceError, match=r"cell c1 runs a CPU engine on a cluster: set resources\.cpus"):
        cell_resources(0, dict(DEFAULTS), local_cores=None, cell_id="c1")


def test_retry_gets_more_time_and_exclusive_and_extra_flags_combine():
    res = {**DEFAULTS, "runtime": 90, "exclusive": True, "slurm_extra": "--qos=long", "constraint": "h100&nvlink"}
    r = cell_resources(1, res, local_cores=None, attempt=3)
    assert r["runtime"] == 270 and r["slurm_extra"] == "--exclusive --qos=long"
    assert r["constraint"] == "h100&nvlink"
    assert cell_resources(0, {**DEFAULTS, "exclusive": False, "cpus": 4}, None)["slurm_extra"] is None


def test_config_schema_checks_resources_top_level_and_per_model(default_config):
    from llm_almanac.config import validate
    from llm_almanac.grid import ConfigError

    cfg = {**default_config, "resources": {"cpus": 2, "runtime": 30, "exclusive": False}}
    cfg["models"]["smollm2-135m"]["resources"] = {"mem_mb": 4000}
    validate(cfg)
    with pytest.raises(ConfigError, match=r"config\.resources: unknown key 'cpu'"):
        validate({**cfg, "resources": {"cpu": 2}})
    with pytest.raises(ConfigError, match=r"config\.models\.smollm2-135m\.resources\.gpu_model"):
        cfg["models"]["smollm2-135m"]["resources"] = {"gpu_model": "h100:2"}
        validate(cfg)
