"""Prompts of exactly ISL tokens by the model's own tokenizer, unique per request.

Each prompt starts with its request number (so no two prompts share a first block and the
engine's prefix cache can never turn a measurement into a cache hit) followed by random
vocabulary words. Decoding and re-encoding text can change the token count, so every prompt is
re-encoded and trimmed or padded until the count, including the special tokens the server
adds (e.g. BOS), is exactly ISL.

The tokenizer comes from a tokenizer.json, a folder holding one, or a Hugging Face Hub id
(`load_tokenizer`); a folder or repository with only a slow tokenizer is converted by
`transformers` when it is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .redact import scrub

log = logging.getLogger(__name__)

_WORD = re.compile(r"^ [a-z]{3,10}$")


class PromptError(ValueError):
    pass


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Tokenizer
    sha256: str  # of its tokenizer.json: a changed tokenizer is a changed measurement
    source: str  # the file it was read from, or the Hub repository


_LOCAL_HINT = "pass a local folder holding tokenizer.json with --tokenizer"


def load_tokenizer(spec: str) -> LoadedTokenizer:
    """The tokenizer `spec` names: a tokenizer.json file, a folder holding one, or a Hugging Face
    Hub id (its tokenizer.json, fetched with HF_TOKEN if set, from the cache under HF_HUB_OFFLINE).
    A local path wins over a Hub id of the same name."""
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith(("/", ".", "~")) or spec.endswith(".json") or spec.count("/") > 1:
        return _from_local(path)
    return _from_hub(spec)


def _from_file(path: Path) -> LoadedTokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise TokenizerError(f"{path} is not a tokenizer.json ({str(exc).splitlines()[0]})") from None
    return LoadedTokenizer(tok, hashlib.sha256(path.read_bytes()).hexdigest(), str(path))


def _from_local(path: Path) -> LoadedTokenizer:
    if path.is_file():
        return _from_file(path)
    if (path / "tokenizer.json").is_file():
        return _from_file(path / "tokenizer.json")
    if path.is_dir():
        return _via_transformers(str(path), None, "the folder has no tokenizer.json")
    raise TokenizerError("no tokenizer.json there (no such file or folder)")


def _via_transformers(spec: str, token: str | None, why: str) -> LoadedTokenizer:
    """A slow tokenizer (tokenizer.model, vocab files) converted to a fast one by transformers."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"{why}; converting its other tokenizer files needs the transformers package "
                             f"(pip install transformers sentencepiece), or {_LOCAL_HINT}") from None
    try:
        tok = AutoTokenizer.from_pretrained(spec, token=token)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise TokenizerError(scrub(f"{why}, and transformers could not load one ({exc}); {_LOCAL_HINT}",
                                   [token] if token else None)) from None
    backend = getattr(tok, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TokenizerError(f"{why}, and transformers has no fast tokenizer for it; {_LOCAL_HINT}")
    return LoadedTokenizer(backend, hashlib.sha256(backend.to_str().encode()).hexdigest(), spec)


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs a line per retry of an unreachable Hub (five, 24 s): the one error after
    them says it all."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


def _from_hub(repo: str) -> LoadedTokenizer:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise TokenizerError(f"no such file or folder, and not a Hugging Face Hub id either; {_LOCAL_HINT}") from None
    token = os.environ.get("HF_TOKEN") or None  # never logged, and scrubbed from every message
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    if not offline:  # an unreachable Hub takes about 25 s to give up
        log.info("tokenizer: fetching tokenizer.json of %s from the Hugging Face Hub", repo)
    try:
        with _quiet_hub():
            path = hf_hub_download(repo, "tokenizer.json", token=token, local_files_only=offline)
    except GatedRepoError:
        raise TokenizerError(f"the Hugging Face Hub repository {repo} is gated: set HF_TOKEN to a token of an "
                             f"account that was granted access, or {_LOCAL_HINT}") from None
    except RepositoryNotFoundError:
        raise TokenizerError(f"no local folder of that name, and no Hugging Face Hub repository {repo} "
                             f"(or a private one: set HF_TOKEN); {_LOCAL_HINT}") from None
    except RemoteEntryNotFoundError:
        return _via_transformers(repo, token, f"the Hugging Face Hub repository {repo} has no tokenizer.json")
    except OSError as exc:  # offline, no network, Hub errors: not in the cache either
        where = ("HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
                 if isinstance(exc, LocalEntryNotFoundError | ConnectionError)
                 else f"the Hub answered {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise TokenizerError(scrub(
            f"no local folder of that name, and tokenizer.json of the Hugging Face Hub repository {repo} "
            f"could not be fetched: {where}, and it is not in the local Hugging Face cache; {_LOCAL_HINT} "
            f"(e.g. one `hf download {repo} tokenizer.json --local-dir DIR` wrote)", [token] if token else None)) from None
    loaded = _from_file(Path(path))
    return LoadedTokenizer(loaded.tokenizer, loaded.sha256, repo)


class PromptFactory:
    def __init__(self, tokenizer: Tokenizer, isl: int, seed: int = 0) -> None:
        if isl < 4:
            raise PromptError(f"isl={isl} is too short to make unique prompts (need >= 4)")
        self.tok = tokenizer
        self.isl = isl
        self.seed = seed
        self.n_special = len(tokenizer.encode("", add_special_tokens=True).ids)
        words = []
        for tid in range(tokenizer.get_vocab_size()):
            text = tokenizer.decode([tid])
            if _WORD.match(text):
                words.append(text)
        if len(words) < 100:
            raise PromptError("tokenizer vocabulary has too few plain words to build prompts")
        self.words = words

    @classmethod
    def from_file(cls, path: str | Path, isl: int, seed: int = 0) -> PromptFactory:
        return cls(Tokenizer.from_file(str(path)), isl, seed)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True).ids)

    def make(self, request_id: int) -> str:
        """The prompt of request `request_id`; deterministic for (seed, request_id)."""
        rng = random.Random(f"{self.seed}:{self.isl}:{request_id}")
        head = f"{request_id}:"
        body = "".join(rng.choice(self.words) for _ in range(self.isl))
        # Trim to the target on token boundaries, then nudge: re-encoding can merge or split
        # tokens at the joins, so check the real count each time.
        text = head + body
        for _ in range(50):
            ids = self.tok.encode(text, add_special_tokens=False).ids
            n = len(ids) + self.n_special
            if n == self.isl:
                return text
            if n > self.isl:
                text = self.tok.decode(ids[: self.isl - self.n_special])
                if not text.startswith(head):
                    text = head + text[len(head):]
            else:
                text += "".join(rng.choice(self.words) for _ in range(self.isl - n))
        raise PromptError(f"could not build a prompt of exactly {self.isl} tokens")
