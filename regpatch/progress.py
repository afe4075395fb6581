"""Progress of long copies: a bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional, TextIO

log = logging.getLogger("regpatch.progress")

LOG_MIN_BYTES = 64 << 20   # blobs smaller than this get no progress lines
LOG_EVERY_SECONDS = 10.0


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Progress:
    """Callable factory: ``progress(label, total)`` returns an ``advance(n)`` callback."""

    def __init__(self, stream: Optional[TextIO] = None, logger: Optional[logging.Logger] = None,
                 terminal: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.logger = logger or log
        self._lock = threading.Lock()

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        start = time.monotonic()
        state = {"done": 0, "drawn": 0.0, "logged": start}

        def advance(n: int) -> None:
            with self._lock:
                state["done"] += n
                done = state["done"]
                now = time.monotonic()
                rate = done / max(now - start, 1e-6)
                if self.terminal and (now - state["drawn"] >= 0.2 or done >= total):
                    pct = 100.0 * done / total if total else 100.0
                    width = 30
                    fill = int(width * min(done, total) / total) if total else width
                    self.stream.write(f"\r{label[:40]:40} [{'#' * fill}{'.' * (width - fill)}] "
                                      f"{pct:5.1f}% {human(done)}/{human(total)} {human(rate)}/s ")
                    if done >= total:
                        self.stream.write("\n")
                    self.stream.flush()
                    state["drawn"] = now
                elif (not self.terminal and total >= LOG_MIN_BYTES
                      and now - state["logged"] >= LOG_EVERY_SECONDS and done < total):
                    self.logger.info("%s: %s of %s (%.0f%%), %s/s", label, human(done), human(total),
                                     100.0 * done / total, human(rate))
                    state["logged"] = now

        return advance
