"""Logging for Snakemake jobs: every line goes to the job's log file *and* to the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class _Scrub(logging.Filter):
    """Replace the values of secret environment variables in every log record."""

    def __init__(self) -> None:
        super().__init__()
        from .redact import secret_values

        self.values = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            from .redact import scrub

            record.msg = scrub(record.getMessage(), self.values)
            record.args = ()
        return True


def setup(log_path: str | Path | None = None, level: int = logging.INFO) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    root = logging.getLogger()
    root.handlers.clear()
    scrub = _Scrub()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(scrub)
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
