"""One patch or rollback per repository at a time: an OS file lock under the storage root (a killed run
frees it), with the holder written inside."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from regpatch import interrupt, platform
from regpatch.errors import LockTimeout, RegpatchError, os_errors
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso


@contextmanager
def repository_lock(layout: Layout, repo: Repository, *, timeout: float = 300.0,
                    on_wait=None) -> Iterator[None]:
    """Hold the repository's lock; wait up to ``timeout`` seconds for it.

    An OS file lock (``platform.try_lock``: flock, or on Windows a byte-range lock beyond
    the holder's text): released by the OS when the holder dies, so a killed patch never
    leaves a stale lock behind.
    """
    path = layout.lock(repo)
    with os_errors("creating the repository lock", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = platform.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay, warned = 0.05, False
        while not platform.try_lock(fd):
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
            platform.unlock(fd)
    finally:
        os.close(fd)



HOLDER_LIMIT = 4096


def _read_holder(path: Path) -> str:
    try:
        data = read_own_file(path, HOLDER_LIMIT, what="repository lock")
    except RegpatchError:
        return "holder unknown"
    return (data or b"").decode("utf-8", "replace").strip() or "holder unknown"

