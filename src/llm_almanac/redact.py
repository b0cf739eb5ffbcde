"""Keep tokens and keys out of logs, cell files, reproduce commands and the database.

An environment variable is secret when its name says so (…TOKEN, …KEY, …SECRET, …PASSWORD,
e.g. HF_TOKEN, OPENAI_API_KEY). Engine servers do not inherit secrets from the job's environment
(models are prepared before the server starts, so no engine needs the hub token); a secret an
engine really needs goes in the engine's `env:` in the config, and is then redacted wherever the
cell records its environment. Files the engine writes itself (server.log) are scrubbed of every
secret value after the server has stopped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

# TOKEN not followed by a letter: HF_TOKEN and --hf-token are secrets; token counts and
# tokenizer settings are not (SGLang's --max-total-tokens 8192, vLLM's --max-num-batched-tokens,
# --tokenizer PATH, TOKENIZERS_PARALLELISM), and hiding them broke recorded server commands.
_SECRET_NAME = re.compile(r"(TOKEN(?![a-z])|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
REDACTED = "***"


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not is_secret(k)}


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret(k) else v) for k, v in env.items()}


def redact_args(cmd: list[str]) -> list[str]:
    """A command line with the values of secret-named flags (e.g. --api-key X) replaced."""
    out: list[str] = []
    hide_next = False
    for arg in cmd:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif arg.startswith("-") and is_secret(arg.split("=", 1)[0]):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
        else:
            out.append(arg)
    return out


def secret_values(*envs: Mapping[str, str]) -> list[str]:
    """Secret values worth scrubbing (long enough not to blank out ordinary words)."""
    vals = {v for env in (os.environ, *envs) for k, v in env.items() if is_secret(k) and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


def scrub(text: str, values: Iterable[str]) -> str:
    for v in values:
        text = text.replace(v, REDACTED)
    return text


def scrub_file(path: Path, values: Iterable[str]) -> None:
    values = list(values)
    if not values or not path.exists():
        return
    data = path.read_bytes()
    new = data
    for v in values:
        new = new.replace(v.encode(), REDACTED.encode())
    if new != data:
        tmp = path.with_name(f".{path.name}.scrub")
        tmp.write_bytes(new)
        tmp.replace(path)
