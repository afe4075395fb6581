"""The process's stop flag: set by a stop signal (or a console's close), polled by every wait.

It lives at the bottom, in the platform seam, because the seam's own waits (a child
process, a retried replace, a lock) must end on a stop request too; ``regpatch.interrupt``
is the API the rest of the code uses (``check``, ``sleep``, the handlers).
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

from regpatch.errors import Interrupted

_stop = threading.Event()
_finished = threading.Event()
_signum: Optional[int] = None


def request(signum: int = signal.SIGINT) -> None:
    """Ask every loop of this process to stop at its next check (the first signal's number is kept)."""
    global _signum
    if _signum is None:
        _signum = signum
    _stop.set()


def is_set() -> bool:
    return _stop.is_set()


def signum() -> Optional[int]:
    return _signum


def check() -> None:
    """Raise ``Interrupted`` when a stop was requested."""
    if _stop.is_set():
        raise Interrupted(_signum or signal.SIGINT)


def wait(seconds: float) -> None:
    """Sleep ``seconds``; end early with ``Interrupted`` when a stop is requested."""
    if _stop.wait(max(0.0, seconds)):
        check()


def reset() -> None:
    """Forget a stop request (tests, and a long-lived process between runs)."""
    global _signum
    _signum = None
    _stop.clear()
    _finished.clear()


def mark_finished() -> None:
    """The run has unwound (temp files removed, children reaped): a console-close handler
    that waits for this may let Windows end the process now."""
    _finished.set()


def wait_finished(timeout: float) -> bool:
    return _finished.wait(timeout)
