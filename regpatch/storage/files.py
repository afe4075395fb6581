"""File primitives of the storage: modes, the temp-file mark, fsync of folders, and the
one mapping of OS errors (``errors.os_errors``) that every read and write here uses."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from regpatch import platform
from regpatch.errors import os_error, os_errors

log = logging.getLogger("regpatch.store")

TMP_MARK = ".regpatch-tmp-"

FILE_MODE = 0o644

DIR_MODE = 0o755

def _is_plain_file(f) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False

_io = os_errors  # every OSError of a read or write here goes through errors.os_error

def _raise_write_error(e: OSError, path: Path):
    raise os_error(e, doing="writing", path=path) from e

def sweep_temp_files(folder: Path) -> int:
    """Remove regpatch temp files in folder left by a process that is gone (killed): the
    name carries the writer's pid, and ``platform.pid_alive`` never signals a process."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for e in entries:
        if not e.name.startswith(TMP_MARK):
            continue
        pid_part = e.name[len(TMP_MARK):].split("-", 1)[0]
        if pid_part.isdigit() and not platform.pid_alive(int(pid_part)) and e.is_file(follow_symlinks=False):
            try:
                os.unlink(e.path)
                n += 1
            except FileNotFoundError:
                pass
    return n

fsync_dir = platform.fsync_dir  # a folder's entries made durable (nothing to do on Windows)
