"""Logging for Snakemake jobs: every line goes to the job's log file *and* to the terminal,
scrubbed of every known secret value (redact.known()), tracebacks included."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .redact import scrub

if TYPE_CHECKING:
    from rich.console import Console


class _Scrubbing(logging.Formatter):
    """Formats a record as usual, then removes secret values from the whole text (message,
    arguments and any traceback), with the secrets known at that moment."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An uncaught exception, into the job's log file as well as the terminal (before, it reached
    only stderr, so a failed job's own log was empty), scrubbed like every log line. The
    project's own errors (`llm_almanac.*`) already say what is wrong and what to do: one line;
    anything else keeps its traceback."""
    root = logging.getLogger()
    if not root.handlers:
        sys.stderr.write(scrub("".join(traceback.format_exception(kind, exc, tb))))
        return
    if kind.__module__.startswith("llm_almanac."):
        root.error("%s: %s", kind.__name__, exc)
    else:
        root.error("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))
    for h in root.handlers:
        h.flush()


def setup(log_path: str | Path | None = None, level: int = logging.INFO, console: Console | None = None) -> None:
    """Log lines to stderr (and `log_path`); with a rich `console` (one showing live progress
    bars) the terminal's lines go through it, above the bars."""
    fmt = _Scrubbing("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if console is not None:
        from rich.logging import RichHandler

        handlers = [RichHandler(console=console, show_path=False, markup=False)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        h.setFormatter(_Scrubbing("%(name)s: %(message)s") if console is not None and h is handlers[0] else fmt)
        root.addHandler(h)
    root.setLevel(level)
    sys.excepthook = _excepthook
    for noisy in ("httpx", "httpcore", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
