"""Stopping a run cleanly on SIGINT / SIGTERM (docs/architecture.md, "Stopping").

The command line installs ``install_handlers``: a signal only sets a flag. Every
long loop of the core (the chunk loops of a copy or a hash, the lock wait, a
child process wait, the retry back-off) calls ``check()``, which raises
``Interrupted`` once the flag is set; the exception unwinds through the same
``finally`` blocks as any error, so temp files are removed, the journal records
"interrupted" and child processes are killed. A second Ctrl-C while stopping is
ignored: the run is already on its way out, at the next chunk boundary.

Code that runs without the handlers (a Prefect worker, a test) never sees the
flag set, and ``check()`` costs one attribute read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from regpatch.errors import Interrupted

_stop = threading.Event()
_signum: Optional[int] = None

POLL_SECONDS = 0.2


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask every loop of this process to stop at its next check."""
    global _signum
    if _signum is None:
        _signum = signum
    _stop.set()


def stopping() -> bool:
    return _stop.is_set()


def signal_number() -> Optional[int]:
    return _signum


def check() -> None:
    """Raise ``Interrupted`` when a stop was requested."""
    if _stop.is_set():
        raise Interrupted(_signum or signal.SIGINT)


def reset() -> None:
    """Forget a stop request (tests, and a long-lived process between runs)."""
    global _signum
    _signum = None
    _stop.clear()


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends early, with ``Interrupted``, when a stop is requested."""
    if _stop.wait(max(0.0, seconds)):
        check()


def install_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP set the flag (main thread only; the CLI calls this)."""

    def handler(signum, frame) -> None:  # noqa: ARG001 - signal API
        request_stop(signum)

    try:
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        if hasattr(signal, "SIGHUP"):  # a dropped SSH session: stop the same clean way
            signal.signal(signal.SIGHUP, handler)
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


def wait_child(proc: subprocess.Popen, *, timeout: Optional[float] = None,
               kill_grace: float = 5.0) -> int:
    """Wait for a child started with ``start_new_session=True``; on a stop request
    (or ``timeout``) its whole process group is terminated, then killed, and the
    child is reaped before ``Interrupted`` / ``subprocess.TimeoutExpired`` is raised:
    no child outlives the run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        expired = deadline is not None and time.monotonic() >= deadline
        if _stop.is_set() or expired:
            kill_group(proc, kill_grace)
            if expired and not _stop.is_set():
                raise subprocess.TimeoutExpired(proc.args, timeout or 0.0)
            check()


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL after ``grace`` seconds; reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
