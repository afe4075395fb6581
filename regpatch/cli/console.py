"""Log lines of a command run here (no Prefect): ``regpatch: LEVEL: message`` on stderr, escaped."""

from __future__ import annotations

import logging
import sys


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.formatTime(record, '%H:%M:%S')} {prefix}{record.getMessage()}"


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _console_logging(debug: bool) -> None:
    """The core's log lines on stderr for runs without Prefect (Prefect has its own)."""
    core = logging.getLogger("regpatch")
    if not any(isinstance(h, _ConsoleHandler) for h in core.handlers):
        core.addHandler(_ConsoleHandler())
    core.setLevel(logging.DEBUG if debug else logging.INFO)

