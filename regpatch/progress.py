"""Progress of long copies: a bar on a terminal, periodic log lines elsewhere.

A copy's progress is an ``advance(n)`` callback (``Progress`` returns a ``Bar``: the callback
and ``end``). A copy does not always count its last byte (a foreign layer the pull skips,
an error, a stop): ``StepCopies`` keeps the copies a step opened and ends each when the step
ends, with the step's error if it failed, so whatever shows a copy's progress says 100 %
or where it stopped (``copy_words``) before the step is over."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional, Protocol, TextIO

from regpatch.sanitize import redact

log = logging.getLogger("regpatch.progress")

LOG_MIN_BYTES = 64 << 20   # blobs smaller than this get no progress lines
LOG_EVERY_SECONDS = 10.0


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Bar(Protocol):
    """One copy's progress: called with each byte count; ``end`` once the copy is over
    (``error``: why it stopped short; None: the work is done)."""

    def __call__(self, n: int) -> None: ...

    def end(self, error: Optional[BaseException] = None) -> None: ...


def why_stopped(error: BaseException) -> str:
    """The first line of an error, redacted, as a copy's progress says why it stopped."""
    text = redact(str(error)).strip().splitlines()
    return text[0] if text else type(error).__name__


def copy_words(label: str, total: int, done: int, seconds: float, *, final: bool = False,
               error: Optional[BaseException] = None) -> tuple[float, str]:
    """What a copy's progress shows: (percent, description). Under way: the percent and the
    rate; ended (``final``): 100 % with its time, or, stopped by ``error`` short of its total,
    where it stopped and why. A copy that ended without an error is complete, whatever it
    counted (a pull skips the foreign layers the registry does not store)."""
    secs = max(seconds, 1e-6)
    pct = min(100.0, 100.0 * done / total) if total > 0 else 100.0
    rate = f"{human(done / secs)}/s"
    if final and error is not None and done < total:
        return pct, f"{label}: stopped at {pct:.0f}% of {human(total)}: {why_stopped(error)}"
    if final:
        counted = f"{human(total)}" if done >= total else f"{human(done)} of {human(total)} counted"
        return 100.0, f"{label}: {counted} in {secs:.1f} s ({rate})"
    return pct, f"{label}: {pct:.0f}% of {human(total)}, {rate}"


class StepCopies:
    """The progress factory of one step: the copies it opens are kept, and ``end`` ends
    every one of them (``Bar.end``, where the callback has one) with the step's error, or
    None when the step succeeded. Thread-safe: a step's copies run in worker threads."""

    def __init__(self, factory: Callable[[str, int], Callable[[int], None]]):
        self.factory = factory
        self._open: list[Callable[[int], None]] = []
        self._lock = threading.Lock()

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        bar = self.factory(label, total)
        with self._lock:
            self._open.append(bar)
        return bar

    def end(self, error: Optional[BaseException] = None) -> None:
        with self._lock:
            bars, self._open = self._open, []
        for bar in bars:
            end = getattr(bar, "end", None)
            if end is not None:
                end(error)


class Progress:
    """Callable factory: ``progress(label, total)`` returns a ``Bar``."""

    def __init__(self, stream: Optional[TextIO] = None, logger: Optional[logging.Logger] = None,
                 terminal: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.logger = logger or log
        self._lock = threading.Lock()

    def __call__(self, label: str, total: int) -> Bar:
        return _Line(self, label, total)


class _Line:
    """One copy of a ``Progress``: a bar redrawn at most every 0.2 s on a terminal, else a log
    line every 10 s for a big copy."""

    def __init__(self, progress: Progress, label: str, total: int):
        self.p, self.label, self.total = progress, label, total
        self.start = time.monotonic()
        self.done, self.drawn, self.logged = 0, 0.0, self.start

    def __call__(self, n: int) -> None:
        p, total = self.p, self.total
        with p._lock:
            self.done += n
            done = self.done
            now = time.monotonic()
            rate = done / max(now - self.start, 1e-6)
            if p.terminal and (now - self.drawn >= 0.2 or done >= total):
                pct = 100.0 * done / total if total else 100.0
                width = 30
                fill = int(width * min(done, total) / total) if total else width
                p.stream.write(f"\r{self.label[:40]:40} [{'#' * fill}{'.' * (width - fill)}] "
                               f"{pct:5.1f}% {human(done)}/{human(total)} {human(rate)}/s ")
                if done >= total:
                    p.stream.write("\n")
                p.stream.flush()
                self.drawn = now
            elif (not p.terminal and total >= LOG_MIN_BYTES
                  and now - self.logged >= LOG_EVERY_SECONDS and done < total):
                p.logger.info("%s: %s of %s (%.0f%%), %s/s", self.label, human(done), human(total),
                              100.0 * done / total, human(rate))
                self.logged = now

    def end(self, error: Optional[BaseException] = None) -> None:
        """A bar drawn short of its total ends its line where it stopped (the error follows
        on a line of its own)."""
        with self.p._lock:
            if self.p.terminal and self.drawn and self.done < self.total:
                self.p.stream.write(" stopped\n" if error is not None else "\n")
                self.p.stream.flush()
                self.drawn = 0.0
