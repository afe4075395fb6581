"""One patch or rollback per repository at a time: an OS file lock under the storage root (a killed run
frees it), with the holder written inside; and the storage's maintenance gate (``regpatch gc``)."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from regpatch import interrupt, platform
from regpatch.errors import LockTimeout, RegpatchError, os_errors
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso


@contextmanager
def _file_lock(path: Path, what: str, deadline: float, busy: Callable[[str], str], on_wait=None) -> Iterator[None]:
    """Hold the OS file lock ``path`` (``platform.try_lock``: flock, or on Windows a byte-range
    lock beyond the holder's text), released by the OS when the holder dies, so a killed run
    never leaves a stale lock behind; ``busy(holder)`` is the message of a timeout."""
    with os_errors(f"creating the {what}", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = platform.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        delay, warned = 0.05, False
        while not platform.try_lock(fd):
            if time.monotonic() >= deadline:
                raise LockTimeout(busy(_read_holder(path)))
            if on_wait and not warned:
                on_wait(_read_holder(path))
                warned = True
            interrupt.sleep(delay)
            delay = min(delay * 2, 1.0)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{actor()} since {now_iso()}".encode())
        try:
            yield
        finally:
            platform.unlock(fd)
    finally:
        os.close(fd)


def _still_held(name: str, timeout: float) -> Callable[[str], str]:
    return lambda holder: (f"a run still holds {name} ({holder}); waited {timeout:.0f}s for it before the "
                           f"maintenance window; try again or raise {opt.lock_timeout}")


def _in_maintenance(timeout: float) -> Callable[[str], str]:
    return lambda holder: (f"the storage is in a maintenance window (regpatch gc: {holder}); waited {timeout:.0f}s; "
                           f"try again when it ends or raise {opt.lock_timeout}")


@contextmanager
def repository_lock(layout: Layout, repo: Repository, *, timeout: float = 300.0,
                    on_wait=None) -> Iterator[None]:
    """Hold the repository's lock; wait up to ``timeout`` seconds for it.

    The storage's maintenance gate is passed first (held only while the repository's lock is
    taken): a maintenance window (``maintenance_window``) holds the gate, so no patch, rollback
    or prune starts in any repository, the registry's garbage collection cannot delete blobs a
    patch has copied but not linked yet.
    """
    deadline = time.monotonic() + timeout
    gate = ExitStack()
    try:
        gate.enter_context(_file_lock(layout.maintenance_lock, MAINTENANCE_LOCK, deadline, _in_maintenance(timeout),
                                      on_wait))
        with _file_lock(layout.lock(repo), "repository lock", deadline,
                        lambda holder: (f"repository {repo} is being patched by another run ({holder}); "
                                        f"waited {timeout:.0f}s; try again later or raise {opt.lock_timeout}"),
                        on_wait):
            gate.close()
            yield
    finally:
        gate.close()


MAX_LOCKS = 100_000
MAINTENANCE_LOCK = "storage's maintenance lock"


@contextmanager
def maintenance_window(layout: Layout, *, timeout: float = 300.0, on_wait=None) -> Iterator[None]:
    """Hold the storage's maintenance gate, once every run that holds a repository's lock has
    ended: while it is held no patch, rollback or prune of this storage runs (they wait at the
    gate, ``repository_lock``). Each repository lock is taken and released in turn: a run that
    took one before the gate closed is waited for; none can take one after."""
    deadline = time.monotonic() + timeout
    with _file_lock(layout.maintenance_lock, MAINTENANCE_LOCK, deadline, _in_maintenance(timeout), on_wait):
        try:
            names = sorted(os.listdir(layout.maintenance_lock.parent))[:MAX_LOCKS]
        except FileNotFoundError:
            names = []
        for name in names:
            path = layout.maintenance_lock.parent / name
            if not name.endswith(".lock") or path == layout.maintenance_lock:
                continue
            with _file_lock(path, "repository lock", deadline, _still_held(name, timeout), on_wait):
                pass
        yield


HOLDER_LIMIT = 4096


def _read_holder(path: Path) -> str:
    try:
        data = read_own_file(path, HOLDER_LIMIT, what="lock")
    except RegpatchError:
        return "holder unknown"
    return (data or b"").decode("utf-8", "replace").strip() or "holder unknown"

