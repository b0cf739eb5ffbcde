"""The user's pip configuration, carried over to uv (which reads none of pip's files).

Standard library only: the Makefile runs this file before any of this project's dependencies
are installed, to make the project's own environment with uv, as the user configured pip:

    .venv/bin/python src/llm_almanac/pipconf.py UV [uv pip install's arguments ...]

runs `UV pip install <pip's configuration as uv flags> ARGS...` with the matching environment,
and exits with uv's code (the Makefile falls back to pip when it fails). The engine installs
(install.py) use the same translation.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: pip configuration keys (`pip config list`, PIP_* variables included) -> uv's flag for each.
_PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}


def pip_config_for_uv(pip_config_list: str) -> tuple[list[str], dict[str, str]]:
    """pip's configuration (the output of `pip config list`) as uv flags and environment:
    indexes, find-links, constraints, trusted hosts, no-index, CA bundle and timeout. pip
    considers every index for every package; uv's default takes the first that has it, so uv is
    asked for pip's behaviour."""
    seen: dict[str, str] = {}
    for line in pip_config_list.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            # "global.find-links" from a file, ":env:.find-links" from PIP_FIND_LINKS: the
            # variable wins over the files, as in pip
            name = key.split(".", 1)[-1].strip()
            if key.startswith(":env:") or name not in seen:
                seen[name] = value.strip().strip("'\"")
    flags, env = ["--index-strategy", "unsafe-best-match"], {}
    for name, value in seen.items():
        if name in _PIP_TO_UV:
            for v in value.split():
                flags += [_PIP_TO_UV[name], v]
        elif name == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            flags.append("--no-index")
        elif name == "cert":
            env["SSL_CERT_FILE"] = value
        elif name == "timeout" or name == "default-timeout":
            env["UV_HTTP_TIMEOUT"] = value
    return flags, env


def pip_config(python: str) -> str:
    """`pip config list` of `python`'s pip (files and PIP_* variables)."""
    return subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: pipconf.py UV [uv pip install arguments ...]", file=sys.stderr)
        return 2
    flags, env = pip_config_for_uv(pip_config(sys.executable))
    return subprocess.run([argv[0], "pip", "install", *flags, *argv[1:]], env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
