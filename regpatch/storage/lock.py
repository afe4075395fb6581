"""One patch or rollback per repository at a time: an OS file lock under the storage root (a killed run
frees it), with the holder written inside."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
def repository_lock(layout: Layout, repo: Repository, *, timeout: float = 300.0,
                    on_wait=None) -> Iterator[None]:
    """Hold the repository's lock; wait up to ``timeout`` seconds for it.

    An OS file lock (``platform.try_lock``: flock, or on Windows a byte-range lock beyond
    the holder's text): released by the OS when the holder dies, so a killed patch never
    leaves a stale lock behind. A lock whose file vanished is not a free lock: a lock taken
    on a file that was removed or replaced meanwhile is taken again on the file now at the
    path, and the holder checks before its commit point (``check_lock_held``) that its file
    is still the one at the path.
    """
    path = layout.lock(repo)
    deadline = time.monotonic() + timeout
    delay, warned = 0.05, False
    while True:
        with os_errors("creating the repository lock", path):
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
            holder = _read_holder(path)
            raise LockTimeout(f"repository {repo} is being patched by another run ({holder}); "
                              f"waited {timeout:.0f}s; try again later or raise {opt.lock_timeout}")
        if on_wait and not warned:
            on_wait(_read_holder(path))
            warned = True
        interrupt.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{actor()} since {now_iso()}".encode())
        _held[path] = (fd, _identity(os.fstat(fd)))
        try:
            yield
        finally:
            _held.pop(path, None)
            platform.unlock(fd)
    finally:
        os.close(fd)


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


HOLDER_LIMIT = 4096


def _read_holder(path: Path) -> str:
    try:
        data = read_own_file(path, HOLDER_LIMIT, what="repository lock")
    except RegpatchError:
        return "holder unknown"
    return (data or b"").decode("utf-8", "replace").strip() or "holder unknown"

