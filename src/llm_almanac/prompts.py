"""Prompts of exactly ISL tokens by the model's own tokenizer, unique per request.

Each prompt starts with its request number (so no two prompts share a first block and the
engine's prefix cache can never turn a measurement into a cache hit) followed by random
vocabulary words. Decoding and re-encoding text can change the token count, so every prompt is
re-encoded and trimmed or padded until the count, including the special tokens the server
adds (e.g. BOS), is exactly ISL.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from tokenizers import Tokenizer

_WORD = re.compile(r"^ [a-z]{3,10}$")


class PromptError(ValueError):
    pass


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
