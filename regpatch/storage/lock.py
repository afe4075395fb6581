"""One patch or rollback per repository at a time: an OS file lock under the storage root (a killed run
frees it), with the holder written inside; and the storage's maintenance gate (``regpatch gc``)."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from regpatch import interrupt, platform
from regpatch.errors import LockLost, LockTimeout, RegpatchError, os_errors
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso

#: the repository locks this process holds: lock path -> (fd, identity of the file locked)
_held: dict[Path, tuple[int, tuple[int, int]]] = {}


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _names_locked_file(path: Path, fd: int) -> bool:
    """True while ``path`` still names the file locked through ``fd`` (not removed, not replaced)."""
    try:
        return _identity(os.stat(path)) == _identity(os.fstat(fd))
    except OSError:
        return False


@contextmanager
def _file_lock(path: Path, what: str, deadline: float, busy: Callable[[str], str], on_wait=None, *,
               track: bool = False) -> Iterator[None]:
    """Hold the OS file lock ``path`` (``platform.try_lock``: flock, or on Windows a byte-range
    lock beyond the holder's text), released by the OS when the holder dies, so a killed run
    never leaves a stale lock behind; ``busy(holder)`` is the message of a timeout. A lock whose
    file vanished is not a free lock: a lock taken on a file that was removed or replaced
    meanwhile is taken again on the file now at the path. ``track``: remembered for
    ``check_lock_held``."""
    delay, warned = 0.05, False
    while True:
        with os_errors(f"creating the {what}", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = platform.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
        if platform.try_lock(fd):
            if _names_locked_file(path, fd):
                break
            platform.unlock(fd)  # locked a file removed meanwhile: take the one at the path now
            os.close(fd)
            continue
        os.close(fd)
        if time.monotonic() >= deadline:
            raise LockTimeout(busy(_read_holder(path)))
        if on_wait and not warned:
            on_wait(_read_holder(path))
            warned = True
        interrupt.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{actor()} since {now_iso()}".encode())
        if track:
            _held[path] = (fd, _identity(os.fstat(fd)))
        try:
            yield
        finally:
            if track:
                _held.pop(path, None)
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
                        on_wait, track=True):
            gate.close()
            yield
    finally:
        gate.close()


def check_lock_held(layout: Layout, repo: Repository) -> None:
    """Before a commit point: when this process holds the repository's lock, its file must still be
    the one at the lock's path. Removed or replaced during the run, another run may hold a lock of
    its own on the new file: ``LockLost``, nothing moved."""
    path = layout.lock(repo)
    held = _held.get(path)
    if held is None:
        return
    fd, _ = held
    if not _names_locked_file(path, fd):
        raise LockLost(f"the lock file {path} of repository {repo} was removed or replaced during this run: another "
                       "run may be writing the repository now; nothing was moved; never remove a lock file by hand "
                       "(a killed run frees its lock), then run again")


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

