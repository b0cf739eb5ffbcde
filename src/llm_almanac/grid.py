"""Expand the declarative config into benchmark cells.

A *cell* is one (model, engine, quantization, ISL, OSL) point measured on one replica. The
expansion is a pure function of the (already schema-validated) config so that it can be unit
tested and so that Snakemake's DAG is exactly what the config says.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ConfigError(ValueError):
    """A config problem, worded for the user: what is wrong, where, and what to do."""


@dataclass(frozen=True)
class Cell:
    model: str
    engine: str
    quantization: str
    isl: int
    osl: int
    n_gpus: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def cell_id(self) -> str:
        return cell_id(self.model, self.engine, self.quantization, self.isl, self.osl)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_args"] = list(self.extra_args)
        d["extra_env"] = dict(self.extra_env)
        d["cell_id"] = self.cell_id
        return d


def cell_id(model: str, engine: str, quantization: str, isl: int, osl: int) -> str:
    """A safe path component: slugs joined by '__' (slugs never contain '__' nor '/')."""
    return f"{model}__{engine}__{quantization}__{isl}-{osl}"


def slugify(name: str) -> str:
    """Turn a hub name such as 'meta-llama/Llama-3.1-8B-Instruct' into a path-safe slug."""
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    s = re.sub(r"-{2,}", "-", s)
    if not s or not SLUG_RE.match(s):
        raise ConfigError(f"cannot make a slug out of {name!r}")
    return s


def _check_slug(kind: str, name: str) -> None:
    if not SLUG_RE.match(name) or "__" in name:
        raise ConfigError(
            f"{kind} key {name!r} is not a slug: use lower-case letters, digits, '.', '-' or '_' "
            f"(no '/' and no '__'), e.g. {slugify(name.replace('__', '-'))!r}; "
            "put a hub name such as 'org/name' under the model's 'hub:' key instead"
        )


def _matches(rule: dict[str, Any], values: dict[str, Any]) -> bool:
    """An exclusion rule matches when every key it names equals (or lists) the cell's value."""
    for key, want in rule.items():
        have = values[key]
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _check_quant(engine: str, ecfg: dict[str, Any], quant: str, cid: str) -> None:
    from .engines import UnsupportedQuantization, get_engine

    try:
        adapter = get_engine(ecfg.get("module", engine))
    except ValueError as exc:
        raise ConfigError(f"engine {engine!r}: {exc}") from None
    try:
        adapter.quant_flags(str(quant), ecfg.get("device", "cuda"))
    except UnsupportedQuantization as exc:
        raise ConfigError(f"cell {cid}: {exc}; remove it from the grid or exclude it") from None


#: Engine modules that are test instruments, not engines: allowed only with allow_simulator.
TEST_INSTRUMENTS = {
    "sim": "the test simulator",
    "sglang-standin": "SGLang's CPU mode with llm-almanac's stand-in kernels (a test instrument)",
}


def expand_grid(config: dict[str, Any]) -> list[Cell]:
    """Return the cells of the config, in config order, without duplicates.

    Each entry of `grid` is a product of its `models × engines × quantizations × shapes`;
    `exclude` rules (top level or inside an entry) remove matching cells. A cell produced twice
    is an error: two entries that claim the same cell with possibly different settings would make
    the measurement ambiguous.
    """
    models = config.get("models") or {}
    engines = config.get("engines") or {}
    for name in models:
        _check_slug("model", name)
    for name, ecfg in engines.items():
        _check_slug("engine", name)
        module = ecfg.get("module", name)
        if module in TEST_INSTRUMENTS and not config.get("allow_simulator"):
            raise ConfigError(
                f"engine {name!r} uses module {module!r}, {TEST_INSTRUMENTS[module]}, which is not "
                "an engine; it is allowed only in test configs that set allow_simulator: true"
            )
    global_excl = config.get("exclude") or []

    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for idx, entry in enumerate(config.get("grid") or []):
        where = f"grid[{idx}]"
        for m in entry["models"]:
            if m not in models:
                raise ConfigError(f"{where}: unknown model {m!r}; defined models: {sorted(models)}")
        for e in entry["engines"]:
            if e not in engines:
                raise ConfigError(
                    f"{where}: unknown engine {e!r}; defined engines: {sorted(engines)}"
                )
        excl = global_excl + (entry.get("exclude") or [])
        for m, e, q, shape in itertools.product(
            entry["models"], entry["engines"], entry["quantizations"], entry["shapes"]
        ):
            isl, osl = int(shape["isl"]), int(shape["osl"])
            if isl <= 0 or osl <= 0:
                raise ConfigError(f"{where}: shape isl={isl} osl={osl} must be positive")
            values = {"model": m, "engine": e, "quantization": q, "isl": isl, "osl": osl}
            if any(_matches(rule, values) for rule in excl):
                continue
            mcfg, ecfg = models[m], engines[e]
            _check_quant(e, ecfg, q, cell_id(m, e, q, isl, osl))
            max_len = mcfg.get("max_model_len")
            if max_len and isl + osl > max_len:
                raise ConfigError(
                    f"{where}: cell {cell_id(m, e, q, isl, osl)} needs isl+osl={isl + osl} tokens "
                    f"but model {m!r} has max_model_len {max_len}; drop the shape or raise "
                    "max_model_len"
                )
            args = list(ecfg.get("args") or []) + list(entry.get("engine_args", {}).get(e, []))
            args += list((mcfg.get("engine_args") or {}).get(e, []))
            env = dict(ecfg.get("env") or {})
            env.update((mcfg.get("engine_env") or {}).get(e, {}))
            cell = Cell(
                model=m,
                engine=e,
                quantization=str(q),
                isl=isl,
                osl=osl,
                n_gpus=int(mcfg.get("gpus", 1)) if ecfg.get("device", "cuda") != "cpu" else 0,
                extra_args=tuple(args),
                extra_env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
            )
            if cell.cell_id in seen:
                raise ConfigError(
                    f"cell {cell.cell_id} is listed twice (grid[{seen[cell.cell_id]}] and {where});"
                    " remove one, or exclude it from one entry"
                )
            seen[cell.cell_id] = idx
            cells.append(cell)
    if not cells:
        raise ConfigError("the grid expands to no cells: check 'grid' and 'exclude' in the config")
    return cells
