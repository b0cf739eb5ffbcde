"""Keep secrets out of everything the project writes or prints, and only secrets.

A value is secret, exactly when:
- it is the value of an environment variable whose *name* has TOKEN, KEY, SECRET, PASSWORD
  (or PASSWD, APIKEY) as a whole part (HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY), never
  as a substring of another word (TOKENIZERS_PARALLELISM, --max-num-batched-tokens and
  --tokenizer-mode are not secrets);
- it follows a known secret flag of an engine (SECRET_FLAGS, the one list of them);
- the config marks it secret: an engine's `secrets:` lists environment variables and flags
  whose values are secret.

Every known secret value is replaced by `***` wherever the project writes or prints text
(cell files, the database, job logs and the console through logs.py, server logs, error
messages, notes); everything else is recorded exactly as it ran.

Secrets never reach what Snakemake persists (`.snakemake/metadata` keeps each job's params):
when the DAG is built, `externalize` replaces each secret in the config by a reference
`${ALMANAC_SECRET_…}` to an environment variable that holds it (jobs inherit the environment,
on SLURM too), and the job resolves references (`resolve`). A config can also refer to a
secret itself, `--api-key ${MY_API_KEY}`, so that the config file holds no secret either.

Engine servers do not inherit secret-named variables from the job's environment (models are
prepared before the server starts, so no engine needs the hub token); a secret an engine needs
goes in its `env:` or `args:`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDACTED = "***"

#: Name parts that make an environment variable's value secret.
SECRET_PARTS = frozenset({"TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "APIKEY"})
_NAME_PARTS = re.compile(r"[^A-Za-z0-9]+")

#: Flags whose value is a secret, for every engine adapter (the one list; a config adds its
#: own with an engine's `secrets:`).
SECRET_FLAGS: dict[str, str] = {
    "--api-key": "vLLM, SGLang, llama.cpp: the key clients must send",
    "--admin-api-key": "SGLang: the key of its admin endpoints",
    "--hf-token": "vLLM, llama.cpp: the Hugging Face token",
    "-hft": "llama.cpp: short for --hf-token",
}

#: Values shorter than this are masked where they stand (after their flag, in a recorded
#: environment) but not searched for in free text, where they would blank ordinary words.
MIN_SCRUB_LEN = 6

#: `${NAME}`: a reference to an environment variable, resolved in the job.
REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
EXTERNAL_PREFIX = "ALMANAC_SECRET_"


class SecretError(ValueError):
    """A reference to an environment variable that is not set."""


def is_secret_name(name: str) -> bool:
    return any(p.upper() in SECRET_PARTS for p in _NAME_PARTS.split(name) if p)


is_secret = is_secret_name  # the name this module's callers knew


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus secret-named variables (what an engine server inherits)."""
    return {k: v for k, v in env.items() if not is_secret_name(k)}


def _flags(marked: Iterable[str] = ()) -> set[str]:
    return set(SECRET_FLAGS) | {m for m in marked if m.startswith("-")}


def _flag_name(arg: str) -> tuple[str, bool]:
    name, eq, _ = arg.partition("=")
    return name, bool(eq)


def flag_values(args: list[str], marked: Iterable[str] = ()) -> list[str]:
    """The values that follow secret flags (`--api-key V` or `--api-key=V`)."""
    flags, out = _flags(marked), []
    for i, arg in enumerate(args):
        name, has_value = _flag_name(arg)
        if name not in flags:
            continue
        if has_value:
            out.append(arg.partition("=")[2])
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):  # vLLM's --hf-token takes none
            out.append(args[i + 1])
    return [v for v in out if v]


def redact_args(cmd: list[str], marked: Iterable[str] = (), values: Iterable[str] | None = None) -> list[str]:
    """A command line as it ran, with the values of secret flags masked and every known secret
    value scrubbed from the other arguments; nothing else changes."""
    flags, vals = _flags(marked), known() if values is None else list(values)
    # the values after its own secret flags are known secrets too, wherever else they appear
    own = [v for v in flag_values(cmd, marked) if len(v) >= MIN_SCRUB_LEN]
    vals = sorted({*vals, *own}, key=len, reverse=True)
    out: list[str] = []
    hide_next = False
    for i, arg in enumerate(cmd):
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, has_value = _flag_name(arg)
        if arg.startswith("-") and name in flags:
            if has_value:
                out.append(f"{name}={REDACTED}")
                continue
            hide_next = i + 1 < len(cmd) and not cmd[i + 1].startswith("-")
        out.append(scrub(arg, vals))
    return out


def redact_env(env: Mapping[str, str], marked: Iterable[str] = (), values: Iterable[str] | None = None) -> dict[str, str]:
    """An environment as it was given, secret-named (or marked) variables masked and known
    secret values scrubbed from the rest."""
    marked, vals = set(marked), known() if values is None else list(values)
    return {k: REDACTED if (is_secret_name(k) or k in marked) else scrub(v, vals) for k, v in env.items()}


# -- the values known to be secret in this process -----------------------------------------------
_known: set[str] = set()


def remember(values: Iterable[str]) -> None:
    """Add secret values (e.g. a cell's, once resolved) to what every scrub removes."""
    _known.update(v for v in values if v)


def secret_values(*envs: Mapping[str, str]) -> list[str]:
    """Values of secret-named variables of the process environment and of `envs`, longest
    first (long enough not to blank out ordinary words)."""
    vals = {v for env in (os.environ, *envs) for k, v in env.items() if is_secret_name(k)}
    return sorted((v for v in vals if len(v) >= MIN_SCRUB_LEN), key=len, reverse=True)


def known() -> list[str]:
    """Every secret value this process knows: its environment's and the remembered ones."""
    return sorted({*secret_values(), *(v for v in _known if len(v) >= MIN_SCRUB_LEN)}, key=len, reverse=True)


def scrub(text: str, values: Iterable[str] | None = None) -> str:
    for v in known() if values is None else values:
        if v:
            text = text.replace(v, REDACTED)
    return text


def scrub_obj(obj: Any, values: Iterable[str] | None = None) -> Any:
    """Every string inside a JSON-like structure, scrubbed."""
    vals = known() if values is None else list(values)
    if isinstance(obj, str):
        return scrub(obj, vals)
    if isinstance(obj, dict):
        return {k: scrub_obj(v, vals) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_obj(v, vals) for v in obj]
    return obj


def scrub_file(path: Path, values: Iterable[str] | None = None) -> None:
    vals = known() if values is None else list(values)
    if not vals or not path.exists():
        return
    data = path.read_bytes()
    new = data
    for v in vals:
        if v:
            new = new.replace(v.encode(), REDACTED.encode())
    if new != data:
        tmp = path.with_name(f".{path.name}.scrub")
        tmp.write_bytes(new)
        tmp.replace(path)


# -- references: secrets out of the config Snakemake sees, back in the job -----------------------
def _is_ref(value: str) -> bool:
    return bool(REF.search(value))


def _external_name(where: str) -> str:
    return EXTERNAL_PREFIX + re.sub(r"[^A-Z0-9]+", "_", where.upper()).strip("_")


def _externalize_args(args: list[str], marked: Iterable[str], where: str, out: dict[str, str]) -> None:
    flags = _flags(marked)
    for i, arg in enumerate(args):
        name, has_value = _flag_name(arg)
        if not arg.startswith("-") or name not in flags:
            continue
        if has_value:
            value = arg.partition("=")[2]
            if value and not _is_ref(value):
                ref = _external_name(f"{where}.{i}")
                out[ref] = value
                args[i] = f"{name}=${{{ref}}}"
        elif i + 1 < len(args) and not args[i + 1].startswith("-") and not _is_ref(args[i + 1]):
            ref = _external_name(f"{where}.{i + 1}")
            out[ref] = args[i + 1]
            args[i + 1] = f"${{{ref}}}"


def _externalize_env(env: dict[str, Any], marked: Iterable[str], where: str, out: dict[str, str]) -> None:
    marked = set(marked)
    for k, v in env.items():
        if (is_secret_name(k) or k in marked) and isinstance(v, str) and v and not _is_ref(v):
            ref = _external_name(f"{where}.{k}")
            out[ref] = v
            env[k] = f"${{{ref}}}"


def externalize(config: dict[str, Any]) -> dict[str, str]:
    """Replace every secret written in the config by a `${ALMANAC_SECRET_…}` reference (in place)
    and return those variables with their values, for the caller to put in the environment the
    jobs inherit. Names follow the secret's place in the config, so they are the same in every
    run (a job's params, and so Snakemake's decision to rerun it, do not change)."""
    out: dict[str, str] = {}
    engines = config.get("engines") or {}
    for e, ecfg in engines.items():
        marked = ecfg.get("secrets") or []
        if isinstance(ecfg.get("args"), list):
            _externalize_args(ecfg["args"], marked, f"engines.{e}.args", out)
        if isinstance(ecfg.get("env"), dict):
            _externalize_env(ecfg["env"], marked, f"engines.{e}.env", out)
    for m, mcfg in (config.get("models") or {}).items():
        for e, args in (mcfg.get("engine_args") or {}).items():
            _externalize_args(args, (engines.get(e) or {}).get("secrets") or [], f"models.{m}.engine_args.{e}", out)
        for e, env in (mcfg.get("engine_env") or {}).items():
            _externalize_env(env, (engines.get(e) or {}).get("secrets") or [], f"models.{m}.engine_env.{e}", out)
    for i, entry in enumerate(config.get("grid") or []):
        for e, args in (entry.get("engine_args") or {}).items():
            _externalize_args(args, (engines.get(e) or {}).get("secrets") or [], f"grid.{i}.engine_args.{e}", out)
    return out


@dataclass
class Resolved:
    """A cell's engine arguments and environment with references resolved, and every secret
    value among them."""

    args: list[str]
    env: dict[str, str]
    marked: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def command(self, cmd: list[str]) -> list[str]:
        """A command line as it may be recorded."""
        return redact_args(cmd, self.marked, self.scrub_values())

    def recorded_env(self) -> dict[str, str]:
        masked = {k: REDACTED if v in self.secrets else v for k, v in self.env.items()}
        return redact_env(masked, self.marked, self.scrub_values())

    def scrub_values(self) -> list[str]:
        return sorted({*known(), *(v for v in self.secrets if len(v) >= MIN_SCRUB_LEN)}, key=len, reverse=True)

    def short(self) -> list[str]:
        """Secret values too short to be scrubbed from free text (masked where they stand)."""
        return [v for v in self.secrets if len(v) < MIN_SCRUB_LEN]


def resolve(args: Iterable[str], env: Mapping[str, str], marked: Iterable[str] = (),
            environ: Mapping[str, str] | None = None) -> Resolved:
    """Resolve `${NAME}` references from the environment; collect the secret values: those of
    secret-named (or marked) variables, those after secret flags, those of secret-named (or
    marked) entries of `env`. Raises SecretError for a reference to an unset variable."""
    environ = os.environ if environ is None else environ
    marked = list(marked)
    secrets: set[str] = set()

    def sub(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                raise SecretError(f"${{{name}}} is not set in the environment")
            value = environ[name]
            if is_secret_name(name) or name in marked:
                secrets.add(value)
            return value

        return REF.sub(one, text)

    r_args = [sub(a) for a in args]
    r_env = {k: sub(v) for k, v in env.items()}
    secrets.update(flag_values(r_args, marked))
    secrets.update(v for k, v in r_env.items() if is_secret_name(k) or k in marked)
    secrets.discard("")
    return Resolved(r_args, r_env, marked, sorted(secrets, key=len, reverse=True))
