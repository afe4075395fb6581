"""The one reader of regpatch's own small files: journals, the history, pidfiles, verified-
blob markers, rollout state files, key files, contents files.

    data = read_own_file(path, 1 << 20, what="journal")   # None: there is no such file

A file is read only when it is a regular file no larger than ``limit`` bytes, reached
without following a symbolic link (or junction) planted at its name. A FIFO, socket,
device or folder is refused without blocking (opened non-blocking where that exists,
then ``fstat``; Windows checks the name before opening). Every refusal, and every
``OSError`` but "not there", is one ``error`` (default ``StorageError``, exit 4) whose
one-line message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import Optional

from regpatch.errors import RegpatchError, StorageError
from regpatch.platform import open_nofollow, replace
from regpatch.platform._base import StrPath

__all__ = ["not_own_kind", "read_own_file", "refusal_reason", "set_aside"]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_own_file(path: StrPath, limit: int, *, what: str = "file",
                  error: type[RegpatchError] = StorageError) -> Optional[bytes]:
    """The bytes of ``path``, None when it does not exist; see the module docstring."""
    shown = os.fspath(path)
    try:
        fd = open_nofollow(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0), 0)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(_refusal(shown, what, e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {shown} is {_kind(st.st_mode)}, not a regular file; regpatch reads only the "
                        "plain files it writes: remove it")
        data = _read_upto(fd, limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            raise error(f"{what} {shown} is larger than {limit:,} bytes: not one regpatch wrote; move it "
                        "aside and run again")
        return data
    except OSError as e:
        raise error(_refusal(shown, what, e)) from None
    finally:
        os.close(fd)


log = logging.getLogger("regpatch.ownfiles")


def not_own_kind(path: StrPath, limit: int) -> bool:
    """True when ``path`` exists but is not what regpatch writes there: not a regular file (a FIFO,
    a link, a folder) or larger than ``limit``. False for a missing file, or one that cannot be
    looked at (its folder is a file, no permission): that is an error to report, not a file to
    set aside."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size > limit


def set_aside(path: StrPath, what: str, why: str) -> Optional[str]:
    """Rename a bad file of regpatch's own (never delete it: it may tell what happened) to
    ``<name>.bad-<UTC time>`` beside it, with one warning; the run goes on without it. Returns
    the new name, or None when it could not be renamed (the warning says so)."""
    shown = os.fspath(path)
    aside = f"{shown}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    try:
        replace(shown, aside, timeout=2.0)
    except OSError as e:
        log.warning("%s %s is not one regpatch wrote (%s) and could not be set aside (%s); regpatch goes on "
                    "without it: move it away by hand", what, shown, why, e.strerror or e)
        return None
    log.warning("%s %s is not one regpatch wrote (%s): set aside as %s; regpatch goes on without it, deciding "
                "from the storage", what, shown, why, aside)
    return aside


def refusal_reason(error: Exception, path: StrPath, what: str) -> str:
    """The reason of a ``read_own_file`` refusal without the file's name (``a FIFO, not a
    regular file``), for ``set_aside``'s warning."""
    text = str(error).split("; ")[0]
    return text.removeprefix(f"{what} {os.fspath(path)} ").removeprefix("is ")


def _read_upto(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _refusal(shown: str, what: str, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return (f"{what} {shown} is a symbolic link; regpatch never follows a link put in place of "
                "its own files: remove it")
    if e.errno == errno.ENXIO:
        return f"{what} {shown} is a socket or device, not a regular file; remove it"
    try:
        st = os.lstat(shown)
        if not stat.S_ISREG(st.st_mode):
            return f"{what} {shown} is {_kind(st.st_mode)}, not a regular file; remove it"
    except OSError:
        pass
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
    return f"cannot read {what} {shown}: [{name}] {e.strerror or e}; check the path and its permissions"
