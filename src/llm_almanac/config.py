"""Config validation with one readable message per problem, and the defaults it declares.

The schema is package data (`llm_almanac/config_schema.yaml`; `config/schema.yaml` in a checkout
links to it), so a checkout and an installed wheel find it the same way. Its `default:` values
are the only place bench and analysis defaults are written down: code reads them from here.
"""

from __future__ import annotations

import functools
import math
import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .grid import Cell, ConfigError, expand_grid

if TYPE_CHECKING:  # loaded by the validating functions only: reading defaults needs no validator
    import jsonschema

SCHEMA_PATH = Path(str(files("llm_almanac") / "config_schema.yaml"))

#: bench settings that bound a run but are not part of what is measured: changing them
#: re-measures nothing (kept out of bench_cell's params and of a cell's checkpoint fingerprint).
GUARD_RAILS = ("retries", "max_response_bytes")


@functools.cache
def _schema(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def defaults(section: str) -> dict[str, Any]:
    """The schema's default for every key of a config section (e.g. "bench", "analysis")."""
    props = _schema(str(SCHEMA_PATH))["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def choices(section: str, key: str) -> list[str]:
    """The values the schema allows for one key of a config section (its `enum`): the command
    line offers exactly what a config file may say."""
    return list(_schema(str(SCHEMA_PATH))["properties"][section]["properties"][key]["enum"])


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping; ConfigError with the file (and line, for malformed YAML)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}malformed YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (models, engines, grid, ...), "
                          f"not {type(data).__name__}")
    return data


def config_file_problem(path: str | Path) -> str | None:
    """What is wrong with a config file that exists and is not a YAML mapping (its file and
    line), or None."""
    if Path(path).exists():
        try:
            load_yaml(path)
        except ConfigError as exc:
            return f"invalid config: {exc}"
    return None


def _bench_message(err: jsonschema.ValidationError) -> str:
    if err.validator == "minimum":
        return f"must be at least {err.validator_value}"
    if err.validator == "exclusiveMinimum":
        return f"must be greater than {err.validator_value}"
    if err.validator == "maximum":
        return f"must be at most {err.validator_value}"
    return err.message


def bench_problems(bench: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, what is wrong) for each bench setting the schema refuses (for `almanac bench`,
    whose options are the same settings)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(str(SCHEMA_PATH))["properties"]["bench"])
    # NaN passes every minimum and maximum: name it here
    nan = [(k, "must be a finite number") for k, v in bench.items() if isinstance(v, float) and not math.isfinite(v)]
    return nan + [(".".join(map(str, e.absolute_path)), _bench_message(e))
                  for e in sorted(validator.iter_errors(bench), key=lambda e: list(map(str, e.absolute_path)))]


def _where(err: jsonschema.ValidationError) -> str:
    return "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)


def validate(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> None:
    """Raise ConfigError naming the first offending key (the most specific schema error)."""
    import jsonschema

    schema = _schema(str(schema_path))
    validator = jsonschema.Draft202012Validator(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if err is not None:
        msg = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted(err.schema.get("properties", {}))
            patterns = list(err.schema.get("patternProperties", {}))
            extra = sorted(k for k in err.instance if k not in allowed
                           and not any(re.search(p, k) for p in patterns))
            msg = f"unknown key {', '.join(map(repr, extra))}; allowed keys: {allowed}"
            if patterns:
                msg += f" (and keys matching {', '.join(patterns)})"
        raise ConfigError(f"{_where(err)}: {msg}")


def check_local_paths(config: dict[str, Any]) -> None:
    """Local models must exist when the DAG is built, not minutes later in a job."""
    for name, m in (config.get("models") or {}).items():
        if m.get("source") == "local" and not Path(m["path"]).expanduser().exists():
            raise ConfigError(f"config.models.{name}.path: {m['path']} does not exist; fix the path or the source")
        tok = m.get("tokenizer")
        if tok and not Path(tok).expanduser().exists():
            raise ConfigError(f"config.models.{name}.tokenizer: {tok} does not exist")


def load_cells(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> list[Cell]:
    validate(config, schema_path)
    check_local_paths(config)
    return expand_grid(config)
