"""Expand the declarative config into benchmark cells.

A *cell* is one (model, engine, quantization, ISL, OSL) point measured on one replica. The
expansion is a pure function of the (already schema-validated) config so that it can be unit
tested and so that Snakemake's DAG is exactly what the config says.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: A name that becomes part of a path (a quantization inside a cell id): no '/', no '..' alone.
PATH_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A variant's name: a slug without '.', so that `<engine>.<variant>` names one variant of one engine.
VARIANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: The variant every engine has: its entry as configured.
DEFAULT_VARIANT = "default"


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
    #: the engine's variant (engines.<e>.variants); `engine` is then `<e>.<variant>`
    variant: str = DEFAULT_VARIANT

    @property
    def cell_id(self) -> str:
        return cell_id(self.model, self.engine, self.quantization, self.isl, self.osl)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_args"] = list(self.extra_args)
        d["extra_env"] = dict(self.extra_env)
        d["cell_id"] = self.cell_id
        if self.variant == DEFAULT_VARIANT:
            # a default cell's job parameters stay as they were before variants existed, so
            # Snakemake does not re-measure it (the record says "default" all the same)
            del d["variant"]
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
        try:
            example = f", e.g. {slugify(name.replace('__', '-'))!r}"
        except ConfigError:
            example = ""
        raise ConfigError(
            f"{kind} key {name!r} is not a slug: use lower-case letters, digits, '.', '-' or '_' "
            f"(no '/' and no '__'){example}"
            + ("; put a hub name such as 'org/name' under the model's 'hub:' key instead" if kind == "model" else "")
        )


def _check_path_part(where: str, kind: str, name: str) -> None:
    """A config value that becomes part of a file name must stay one path component."""
    if not PATH_PART_RE.match(name) or "__" in name:
        raise ConfigError(
            f"{where}: {kind} {name!r} becomes part of a file name: use letters, digits, '.', '-' "
            "or '_' (no '/', no '__', not starting with '.')")


def _check_host(cid: str, engine: str, ecfg: dict[str, Any], args: list[str]) -> None:
    """Loopback unless the config says otherwise: engine args that make the server listen on
    another address are refused, unless the engine sets `expose: true`."""
    from .engines import LOOPBACK, requested_host

    host = requested_host(args)
    if host is not None and host not in LOOPBACK and not ecfg.get("expose"):
        raise ConfigError(
            f"cell {cid}: engine args set --host {host}, which makes the server reachable from the "
            f"network (engines serve without authentication by default); remove it, or set "
            f"`expose: true` on engine {engine!r} to allow it")


def _matches(rule: dict[str, Any], values: dict[str, Any]) -> bool:
    """An exclusion rule matches when every key it names equals (or lists) the cell's value. A
    variant's cell has two engine names, `<e>.<variant>` and `<e>`: either matches."""
    for key, want in rule.items():
        have = values[key]
        haves = have if isinstance(have, tuple) else (have,)
        wants = want if isinstance(want, list) else [want]
        if not any(h in wants for h in haves):
            return False
    return True


def _variant_entry(name: str, ecfg: dict[str, Any], variant: str, vcfg: dict[str, Any]) -> dict[str, Any]:
    """Engine entry `name` with a variant's args appended and env added, `module` set (the same
    adapter, and the same install: its id ignores args and env) and the variant recorded."""
    if not VARIANT_RE.match(variant) or variant == DEFAULT_VARIANT:
        raise ConfigError(
            f"engines.{name}.variants: variant name {variant!r} "
            + ("is reserved: 'default' always means the entry unchanged; pick another name"
               if variant == DEFAULT_VARIANT
               else "is not a slug without '.': use lower-case letters, digits, '-' or '_'"))
    entry = copy.deepcopy({k: v for k, v in ecfg.items() if k != "variants"})
    entry["module"] = ecfg.get("module", name)
    entry["args"] = [*(ecfg.get("args") or []), *(vcfg.get("args") or [])]
    if ecfg.get("env") or vcfg.get("env"):
        entry["env"] = {**(ecfg.get("env") or {}), **(vcfg.get("env") or {})}
    entry["variant"] = variant
    return entry


def expand_variants(config: dict[str, Any]) -> None:
    """Turn every `engines.<e>.variants.<v>` into an engine entry `<e>.<v>`, in place, before the
    grid is expanded: rules, cells, installs and adapters then see ordinary engine entries.
    `variants` leaves `<e>`, whose settings (and so its cells' job parameters) stay exactly what
    they were without it. A second call finds nothing to do."""
    engines = config.get("engines") or {}
    for name in list(engines):
        ecfg = engines[name]
        variants = ecfg.pop("variants", None) or {}
        for variant, vcfg in variants.items():
            derived = f"{name}.{variant}"
            if derived in engines:
                raise ConfigError(f"engines.{name}.variants.{variant} makes engine {derived!r}, which the "
                                  "config already defines; rename the variant or that engine")
            engines[derived] = _variant_entry(name, ecfg, variant, vcfg or {})


def variant_of(name: str, ecfg: dict[str, Any]) -> tuple[str, str]:
    """(base engine, variant) of engine entry `name`: (`e`, `v`) for an entry `e.v` made from
    `engines.e.variants.v`, (`name`, "default") for any other."""
    variant = ecfg.get("variant") or DEFAULT_VARIANT
    if variant != DEFAULT_VARIANT and name.endswith(f".{variant}"):
        return name.removesuffix(f".{variant}"), variant
    return name, variant


def defined_variants(engines: dict[str, Any], engine: str) -> list[str]:
    """The variants a grid entry may name for `engine`: default, and those its entry defined."""
    return [DEFAULT_VARIANT] + sorted(
        v for n, ecfg in engines.items() if (v := ecfg.get("variant")) and n == f"{engine}.{v}")


def _check_variants(where: str, engines: dict[str, Any], entry: dict[str, Any]) -> None:
    for e in entry["engines"]:
        have = defined_variants(engines, e)
        for v in entry.get("variants") or [DEFAULT_VARIANT]:
            if v not in have:
                raise ConfigError(f"{where}: engine {e!r} has no variant {v!r}; its variants: {have} "
                                  f"(define it under engines.{e}.variants.{v})")


def _check_quant(engine: str, ecfg: dict[str, Any], quant: str, cid: str) -> None:
    from .engines import UnsupportedQuantization, adapter_for

    try:
        adapter = adapter_for(engine, ecfg)
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


def _check_names(config: dict[str, Any]) -> None:
    for name in config.get("models") or {}:
        _check_slug("model", name)
    for name, ecfg in (config.get("engines") or {}).items():
        _check_slug("engine", name)
        module = ecfg.get("module", name)
        if module in TEST_INSTRUMENTS and not config.get("allow_simulator"):
            raise ConfigError(
                f"engine {name!r} uses module {module!r}, {TEST_INSTRUMENTS[module]}, which is not "
                "an engine; it is allowed only in test configs that set allow_simulator: true"
            )


def _per_engine(table: dict[str, Any] | None, base: str, e: str) -> list[Any]:
    """The values a per-engine table (engine_args, engine_env) gives engine `e`: its base
    engine's, then its own (a variant `vllm.ngram` gets what is written for `vllm`)."""
    table = table or {}
    return [table[k] for k in dict.fromkeys((base, e)) if k in table]


def _make_cell(config: dict[str, Any], entry: dict[str, Any], where: str, m: str, e: str, q: Any,
               isl: int, osl: int) -> Cell:
    """One cell of a grid entry, with its engine's arguments and environment (engine, then the
    entry's, then the model's), checked against the engine and the model's context length."""
    mcfg, ecfg = config["models"][m], config["engines"][e]
    base, variant = variant_of(e, ecfg)
    _check_path_part(where, "quantization", str(q))
    cid = cell_id(m, e, q, isl, osl)
    _check_quant(e, ecfg, q, cid)
    max_len = mcfg.get("max_model_len")
    if max_len and isl + osl > max_len:
        raise ConfigError(
            f"{where}: cell {cid} needs isl+osl={isl + osl} tokens but model {m!r} has max_model_len "
            f"{max_len}; drop the shape or raise max_model_len"
        )
    args = list(ecfg.get("args") or [])
    for more in _per_engine(entry.get("engine_args"), base, e) + _per_engine(mcfg.get("engine_args"), base, e):
        args += list(more)
    env = dict(ecfg.get("env") or {})
    for extra in _per_engine(mcfg.get("engine_env"), base, e):
        env.update(extra)
    _check_host(cid, e, ecfg, args)
    return Cell(
        model=m, engine=e, quantization=str(q), isl=isl, osl=osl,
        # the grid decides a cell's GPU count once: a CPU engine's cells need none
        n_gpus=int(mcfg.get("gpus", 1)) if ecfg.get("device", "cuda") != "cpu" else 0,
        extra_args=tuple(args),
        extra_env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
        variant=variant,
    )


def _entry_cells(config: dict[str, Any], idx: int, entry: dict[str, Any], used: set[str]) -> list[Cell]:
    """The cells of grid[idx]: its product minus the exclusions that apply to it (the labels of
    the exclusions that removed something go into `used`)."""
    where = f"grid[{idx}]"
    models, engines = config.get("models") or {}, config.get("engines") or {}
    for m in entry["models"]:
        if m not in models:
            raise ConfigError(f"{where}: unknown model {m!r}; defined models: {sorted(models)}")
    for e in entry["engines"]:
        if e not in engines:
            raise ConfigError(f"{where}: unknown engine {e!r}; defined engines: {sorted(engines)}")
    _check_variants(where, engines, entry)
    excl = [(f"exclude[{i}]", r) for i, r in enumerate(config.get("exclude") or [])]
    excl += [(f"{where}.exclude[{i}]", r) for i, r in enumerate(entry.get("exclude") or [])]
    cells = []
    for m, e0, v, q, shape in itertools.product(entry["models"], entry["engines"],
                                                entry.get("variants") or [DEFAULT_VARIANT],
                                                entry["quantizations"], entry["shapes"]):
        isl, osl = int(shape["isl"]), int(shape["osl"])
        if isl <= 0 or osl <= 0:
            raise ConfigError(f"{where}: shape isl={isl} osl={osl} must be positive")
        e = e0 if v == DEFAULT_VARIANT else f"{e0}.{v}"
        base, variant = variant_of(e, engines[e])
        values = {"model": m, "engine": (e, base), "variant": variant, "quantization": q, "isl": isl, "osl": osl}
        hits = [label for label, rule in excl if _matches(rule, values)]
        used.update(hits)
        if not hits:
            cells.append(_make_cell(config, entry, where, m, e, q, isl, osl))
    return cells


def expand_grid(config: dict[str, Any]) -> list[Cell]:
    """Return the cells of the config, in config order, without duplicates.

    Each entry of `grid` is a product of its `models × engines × quantizations × shapes`;
    `exclude` rules (top level or inside an entry) remove matching cells. A cell produced twice
    is an error: two entries that claim the same cell with possibly different settings would make
    the measurement ambiguous, and so is an exclusion that removes nothing (a typo would
    otherwise measure cells the user meant to skip). An entry's `variants` (default: just
    `default`) multiply its engines by the variants they define (expand_variants): the variant
    `v` of engine `e` is the engine entry `e.v`.
    """
    _check_names(config)
    expand_variants(config)
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    used: set[str] = set()
    for idx, entry in enumerate(config.get("grid") or []):
        for cell in _entry_cells(config, idx, entry, used):
            if cell.cell_id in seen:
                raise ConfigError(
                    f"cell {cell.cell_id} is listed twice (grid[{seen[cell.cell_id]}] and grid[{idx}]);"
                    " remove one, or exclude it from one entry"
                )
            seen[cell.cell_id] = idx
            cells.append(cell)
    rules = [(f"exclude[{i}]", r) for i, r in enumerate(config.get("exclude") or [])]
    rules += [(f"grid[{g}].exclude[{i}]", r) for g, entry in enumerate(config.get("grid") or [])
              for i, r in enumerate(entry.get("exclude") or [])]
    for label, rule in rules:
        if label not in used:
            raise ConfigError(f"config.{label} {rule} matches no cell of the grid; remove it or correct it")
    if not cells:
        raise ConfigError("the grid expands to no cells: check 'grid' and 'exclude' in the config")
    return cells


def _format_of(engine: str, config: dict[str, Any]) -> str:
    from .engines import adapter_for

    return adapter_for(engine, config["engines"][engine]).model_format


def model_needs(model: str, config: dict[str, Any], cells: Iterable[Cell]) -> list[str]:
    """Formats the model must be prepared in, from the engines its cells use (and always a
    tokenizer, to build prompts of exactly ISL tokens)."""
    return sorted({"tokenizer"} | {_format_of(c.engine, config) for c in cells if c.model == model})


def converter_engine(model: str, config: dict[str, Any], cells: Iterable[Cell]) -> str | None:
    """An engine whose environment can convert a bundled GGUF into transformers format: a
    bundled model that some cell serves in "hf" format is converted with that engine's
    transformers (the project's own environment carries no torch)."""
    cells = list(cells)
    if config["models"][model]["source"] != "bundled" or "hf" not in model_needs(model, config, cells):
        return None
    return next(c.engine for c in cells if c.model == model and _format_of(c.engine, config) == "hf")
