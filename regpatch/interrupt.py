"""Stopping a run cleanly on SIGINT / SIGTERM (docs/architecture.md, "Stopping").

The command line installs ``install_handlers``: a stop signal only sets a flag (on
Windows also Ctrl-Break and the console's close; ``regpatch.platform``). Every long
loop of the core (the chunk loops of a copy or a hash, the lock wait, a child process
wait, the retry back-off) calls ``check()``, which raises ``Interrupted`` once the flag
is set; the exception unwinds through the same ``finally`` blocks as any error, so temp
files are removed, the journal records "interrupted" and child processes are killed
(``regpatch.platform.children``). A second Ctrl-C while stopping is ignored: the run is
already on its way out, at the next chunk boundary.

Code that runs without the handlers (a Prefect worker, a test) never sees the flag set,
and ``check()`` costs one attribute read. The flag itself is ``regpatch.platform.stopflag``,
so that the platform seam's own waits end on it too.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator, Optional

from regpatch import platform
from regpatch.platform import stopflag


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask every loop of this process to stop at its next check."""
    stopflag.request(signum)


def stopping() -> bool:
    return stopflag.is_set()


def signal_number() -> Optional[int]:
    return stopflag.signum()


def check() -> None:
    """Raise ``Interrupted`` when a stop was requested."""
    stopflag.check()


def reset() -> None:
    """Forget a stop request (tests, and a long-lived process between runs)."""
    stopflag.reset()


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends early, with ``Interrupted``, when a stop is requested."""
    stopflag.wait(seconds)


def finished() -> None:
    """The run has unwound: a console-close handler waiting for it may let Windows end the process."""
    stopflag.mark_finished()


def install_handlers() -> None:
    """The platform's stop signals set the flag (main thread only; the CLI calls this)."""
    try:
        platform.install_stop_handlers(request_stop)
    except ValueError:  # not the main thread (the CLI called from a thread): signals stay as they are
        pass


@contextmanager
def chained_handlers() -> Iterator[None]:
    """For code run under an orchestrator that handles SIGTERM/SIGINT itself (Prefect's
    flow engine raises its own exception in the main thread): while the block runs, a
    signal first sets the stop flag, so every worker thread stops at its next chunk,
    then goes to the handler that was installed. Outside the main thread: no change."""
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(sig)

            def handler(signum, frame, before=before) -> None:
                request_stop(signum)
                if callable(before):
                    before(signum, frame)
                elif before == signal.default_int_handler or (before is signal.SIG_DFL and signum == signal.SIGINT):
                    raise KeyboardInterrupt

            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, before in previous.items():
            try:
                signal.signal(sig, before)
            except ValueError:
                pass
