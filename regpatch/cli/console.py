"""Log lines of a command run here (no Prefect): ``regpatch: LEVEL: message`` on stderr, escaped."""

from __future__ import annotations

import logging
import sys
from typing import Optional, TextIO


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




ASCII_FOR = {"→": "->", "…": "...", "—": "-"}  # what the tables print, for a console that cannot


def fit(text: str, stream: Optional[TextIO] = None) -> str:
    """``text`` as the stream can print it: unchanged when its encoding takes every
    character (UTF-8), else with ``→`` and the like written in ASCII (a Windows console or
    a redirected one in cp1252/cp437); what is left is replaced by the stream itself
    (``survive_any_code_page``)."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        for char, ascii_ in ASCII_FOR.items():
            text = text.replace(char, ascii_)
        return text


def survive_any_code_page() -> None:
    """stdout and stderr replace what their encoding cannot write instead of raising: a path
    or a message in another script never ends a run on a cp1252 console."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # (a stream that cannot change now)
                pass
