"""One patch or rollback per repository at a time: an OS file lock under the storage root (a killed run
frees it), with the holder written inside."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from regpatch import interrupt
from regpatch.errors import LockTimeout, os_errors
from regpatch.options import opt
from regpatch.reference import Repository
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt  # one of the two exists, by platform

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl  # one of the two exists, by platform

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt  # one of the two exists, by platform

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl  # one of the two exists, by platform

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def repository_lock(layout: Layout, repo: Repository, *, timeout: float = 300.0,
                    on_wait=None) -> Iterator[None]:
    """Hold the repository's lock; wait up to ``timeout`` seconds for it.

    An OS file lock (flock / msvcrt.locking): released by the OS when the
    holder dies, so a killed patch never leaves a stale lock behind.
    """
    path = layout.lock(repo)
    with os_errors("creating the repository lock", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay, warned = 0.05, False
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = _read_holder(path)
                raise LockTimeout(f"repository {repo} is being patched by another run ({holder}); "
                                  f"waited {timeout:.0f}s; try again later or raise {opt.lock_timeout}")
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
            _unlock(fd)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "holder unknown"
    except OSError:
        return "holder unknown"

