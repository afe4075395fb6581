"""The platform seam: every operation whose code differs between POSIX and Windows.

Nothing outside this package imports ``fcntl``, ``msvcrt``, ``ctypes``, ``subprocess``
or another OS-only module, calls a Unix-only name of ``os`` or ``signal``, or reads
``os.name`` / ``sys.platform`` (``tests/unit/test_platform_rules.py`` holds the rule).
The functions here are the API; each platform implements them once:
``_posix.PosixPlatform`` (Linux's fast paths: ``copy_file_range``, ``FICLONE``,
``preadv``, ``sync_file_range``, ``posix_fadvise``) and ``_windows.WindowsPlatform``
(plain Python over ``_win32``'s Win32 calls). Three more modules build on them:

- ``regpatch.platform.children``: the one runner of child processes (verify and restart
  commands, credential helpers): a tree of their own, bounded output, interruptible;
- ``regpatch.platform.ownfiles``: the one reader of regpatch's own small files
  (journals, history, pidfiles, markers, keys): regular files only, bounded, no link;
- ``regpatch.platform.services``: the host's service manager (systemd through the runner,
  or the Service Control Manager);
- ``regpatch.platform.stopflag``: the stop flag every wait polls (``regpatch.interrupt``
  is its API for the rest of the code).

The platform is chosen once, by ``sys.platform``; ``use`` swaps it (the test kit's
Windows-API layer runs the Windows implementation on Linux, see ``tests/support/winapi.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Sequence

from regpatch.platform._base import Args, ChildTree, Listener, Owner, Platform, ProcessInfo, Stream, StrPath
from regpatch.platform._base import ServiceManager as ServiceManager
from regpatch.platform._base import ServiceState as ServiceState
from regpatch.platform._windows import WindowsPlatform

REPLACE_TIMEOUT = 10.0  # seconds a replace waits for a file another program holds open (Windows)

_impl: Platform
if sys.platform == "win32":
    _impl = WindowsPlatform()
else:
    from regpatch.platform._posix import PosixPlatform

    _impl = PosixPlatform()


def current() -> Platform:
    return _impl


def use(impl: Platform) -> Platform:
    """Make ``impl`` the platform of this process; returns the one it replaces (the test kit only)."""
    global _impl
    before, _impl = _impl, impl
    return before


def is_windows() -> bool:
    return _impl.name == "windows"


# -- files ------------------------------------------------------------------------------

def open_file(path: StrPath, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a binary descriptor (``O_BINARY`` on Windows: a text-mode descriptor
    would turn every ``\\n`` written into ``\\r\\n``)."""
    return os.open(path, flags | _impl.binary_flag, mode)


def open_nofollow(path: StrPath, flags: int, mode: int = 0o644) -> int:
    """``open_file`` that refuses a symbolic link (or junction) at ``path`` with ``OSError``
    ELOOP: ``O_NOFOLLOW`` on POSIX; on Windows the file is checked before and after it is
    opened (``lstat`` before, the same file id as ``fstat`` after)."""
    return _impl.open_nofollow(path, flags, mode)


def is_link(st: os.stat_result) -> bool:
    """``st`` (of ``os.lstat``) is a symbolic link, or on Windows any reparse point (a junction)."""
    return _impl.is_link(st)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from byte ``offset`` of ``fd``; bytes read (0 at the end). POSIX:
    ``preadv``, the position untouched. Windows: ``lseek`` + read under a lock per
    descriptor (the position moves: only for descriptors the caller owns)."""
    return _impl.pread_into(fd, view, offset)


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (``pread_into`` into a new buffer)."""
    buf = bytearray(n)
    got = _impl.pread_into(fd, memoryview(buf), offset)
    del buf[got:]
    return bytes(buf)


def has_kernel_copy() -> bool:
    """True when ``kernel_copy`` exists (Linux's ``copy_file_range``)."""
    return _impl.has_kernel_copy()


def kernel_copy(src_fd: int, dst_fd: int, n: int, src_offset: Optional[int] = None) -> int:
    """Copy up to ``n`` bytes in the kernel to ``dst_fd``'s position, from ``src_offset`` (or
    ``src_fd``'s position); bytes copied. Raises OSError (EXDEV, EINVAL, ...) where it cannot."""
    return _impl.kernel_copy(src_fd, dst_fd, n, src_offset)


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Share the source's blocks with the (empty) destination: an instant copy (XFS, btrfs).
    False, nothing written, where the file system cannot."""
    return _impl.reflink(src_fd, dst_fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``[offset, offset+length)`` to disk now, without waiting (Linux's
    ``sync_file_range``), so a final fsync finds little to do. Elsewhere nothing."""
    _impl.start_writeback(fd, offset, length)


def advise_sequential(fd: int) -> None:
    """Tell the kernel ``fd`` is read front to back (``posix_fadvise``); elsewhere nothing."""
    _impl.advise_sequential(fd)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of an open lock file without waiting; False: another holds it.
    Released by the OS when the holder dies. POSIX: ``flock``. Windows: ``msvcrt.locking``
    of one byte far beyond the file's text, which stays readable to the runs that wait."""
    return _impl.try_lock(fd)


def unlock(fd: int) -> None:
    _impl.unlock(fd)


def fsync_dir(path: StrPath) -> None:
    """Make a folder's entries durable (a rename into it). Windows: nothing (cannot be done)."""
    _impl.fsync_dir(path)


def fsync_path(path: StrPath) -> None:
    """Make the data of the file at ``path`` durable when the caller holds it open read-only
    (a file taken with ``--consume``): POSIX fsyncs any descriptor; Windows'
    ``FlushFileBuffers`` needs a writable one, so the file must be writable (not read-only)."""
    _impl.fsync_path(path)


def replace(src: StrPath, dst: StrPath, *, timeout: float = REPLACE_TIMEOUT) -> None:
    """``os.replace``. On Windows a target another program holds open (a sharing violation,
    winerror 32 or 5) is retried for ``timeout`` seconds (a stop request ends the wait),
    then ``FileInUse`` (exit 4) says the file is in use."""
    _impl.replace(src, dst, timeout)


def remove(path: StrPath, *, timeout: float = REPLACE_TIMEOUT) -> None:
    """``os.unlink``; on Windows a file another program holds open is retried for ``timeout``
    seconds, as ``replace`` does, then ``FileInUse``."""
    _impl.remove(path, timeout)


def exchange(src: StrPath, dst: StrPath) -> bool:
    """Swap the names ``src`` and ``dst`` atomically (Linux's ``renameat2(RENAME_EXCHANGE)``):
    True when done; False where this system or file system cannot (the caller replaces)."""
    return _impl.exchange(src, dst)


def create_new(src: StrPath, dst: StrPath) -> None:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (``FileExistsError``): a rename
    that never replaces (``RENAME_NOREPLACE``, a hard link, or Windows' rename)."""
    _impl.create_new(src, dst)


def can_hold_while_replacing() -> bool:
    """Whether a file held open can be replaced by another name (POSIX); not on Windows."""
    return _impl.holds_open_files_replaceable()


def file_identity(path: StrPath, st: os.stat_result) -> Optional[dict[str, int]]:
    """What proves a file unchanged since ``st`` was taken, for a verified-blob marker; None
    when this file system cannot prove it (then the file is always hashed again). POSIX:
    device, inode, size, mtime and ctime (only the kernel sets a ctime). Windows: volume,
    file id, size, mtime and the NTFS change time (``st_ctime`` is the creation time there)."""
    return _impl.file_identity(path, st)


def set_mode(fd: int, mode: int) -> None:
    """``fchmod`` (umask-proof modes of the storage's files); Windows: nothing (ACLs inherit)."""
    _impl.set_mode(fd, mode)


def storage_owner(folders: Sequence[Path]) -> Optional[Owner]:
    """The (uid, gid) new files must get: the owner of the first of ``folders`` that exists,
    when this process runs as root and that owner is another user. None: keep our own."""
    return _impl.storage_owner(folders)


def chown(path: StrPath, owner: Owner) -> None:
    _impl.chown(path, owner)


def fchown(fd: int, owner: Owner) -> None:
    _impl.fchown(fd, owner)


def create_private(path: StrPath) -> int:
    """A new file (never an existing one, never through a link) only its owner may read:
    POSIX mode 0600 (``fchmod``, umask-proof); Windows a protected DACL granting only the
    current user, set before anything is written. Returns a binary descriptor to write."""
    return _impl.create_private(path)


# -- the user -------------------------------------------------------------------------

def user_name() -> str:
    return _impl.user_name()


def home_dir(env: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The user's home: ``$HOME`` (POSIX), ``%USERPROFILE%`` (Windows)."""
    return _impl.home_dir(env)


# -- processes ------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """A process with this pid exists and has not exited (a zombie has). Never signals it."""
    return _impl.pid_alive(pid)


def is_registry_process(pid: int, binary: Optional[str] = None) -> bool:
    """Guard against a recycled pid before a registry is stopped by its pidfile. POSIX:
    ``serve`` among its arguments (/proc; without /proc nothing says against it). Windows:
    its image is ``binary``'s file name; unknown means no."""
    return _impl.is_registry_process(pid, binary)


def describe_process(pid: int) -> str:
    """Its command line (POSIX) or image path (Windows), for a message; '' when unknown."""
    return _impl.describe_process(pid)


def max_pid() -> int:
    """The largest process id this system gives (a pidfile's number is checked against it)."""
    return _impl.max_pid


def process_info(pid: int) -> Optional[ProcessInfo]:
    """What this host tells about process ``pid`` (its file, arguments, start time); None: gone."""
    return _impl.process_info(pid)


def listeners(port: int) -> Optional[list[Listener]]:
    """The TCP sockets listening on ``port`` and the pids holding them; None: not readable here."""
    return _impl.listeners(port)


def same_path(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name one file as this system compares names."""
    return _impl.same_path(a, b)


def long_paths() -> bool:
    """True when a path beyond 260 characters works here (always on POSIX; on Windows the
    LongPathsEnabled policy)."""
    return _impl.long_paths()


def stop_process(pid: int) -> None:
    """POSIX: SIGTERM. Windows: TerminateProcess (a detached process has no gentler stop).
    Raises ProcessLookupError (gone) or PermissionError."""
    _impl.stop_process(pid)


def kill_process(pid: int) -> None:
    """POSIX: SIGKILL. Windows: TerminateProcess."""
    _impl.kill_process(pid)


def spawn_tree(args: Args, *, shell: bool = False, env: Optional[Mapping[str, str]] = None,
               cwd: Optional[StrPath] = None, stdin: Stream = subprocess.DEVNULL,
               stdout: Stream = subprocess.DEVNULL, stderr: Stream = subprocess.DEVNULL) -> ChildTree:
    """Start a child in a tree of its own (``children.run`` is the API that uses it)."""
    return _impl.spawn_tree(args, shell=shell, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr)


def spawn_detached(args: Sequence[str], *, stdout: IO[Any], env: Optional[Mapping[str, str]] = None,
                   cwd: Optional[StrPath] = None) -> subprocess.Popen:
    """Start a process that outlives this one: POSIX a new session; Windows a new process
    group, no console, out of this process's job. stdin is nothing, stderr goes to stdout."""
    return _impl.spawn_detached(args, env=env, cwd=cwd, stdout=stdout)


def shell_quote(arg: str) -> str:
    """``arg`` as one word of the shell ``children.run(shell=True)`` uses: ``sh`` quoting
    (POSIX), ``cmd.exe`` quoting (Windows; ValueError for what cmd.exe cannot quote)."""
    return _impl.shell_quote(arg)


def default_registry_binary() -> str:
    return _impl.default_registry_binary


# -- stopping -------------------------------------------------------------------------

def install_stop_handlers(on_stop: Callable[[int], None]) -> None:
    """Call ``on_stop(signum)`` on a stop: SIGINT, SIGTERM, SIGHUP (POSIX); SIGINT, SIGTERM,
    SIGBREAK (as SIGINT) and the console's close, logoff or shutdown (as SIGTERM) on
    Windows. Main thread only (ValueError elsewhere)."""
    _impl.install_stop_handlers(on_stop)
