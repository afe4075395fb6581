"""The POSIX implementation of the platform seam (Linux first: its fast paths are here).

Imported on POSIX only (``regpatch.platform`` picks it); the assert below also tells
mypy's Windows pass to skip the module.
"""

from __future__ import annotations

import errno
import getpass
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable, Literal, Mapping, Optional, Sequence

from regpatch.platform._base import Args, ChildTree, Listener, Owner, Platform, ProcessInfo, Stream, StrPath
from regpatch.platform._procfs import linux_listeners
from regpatch.platform._procfs import readlink as _readlink
from regpatch.platform._procfs import started as _started
from regpatch.platform._procfs import stat_fields as _stat_fields

assert sys.platform != "win32", "regpatch.platform._posix is the POSIX implementation"

FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's blocks (XFS, btrfs)

_SYNC_FILE_RANGE_WRITE = 2

_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.EPERM, errno.ENOSYS}


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2: Callable[..., int] | Literal[False] | None = None  # False: not available here


def _rename2(src: StrPath, dst: StrPath, flags: int) -> bool:
    """Linux's ``renameat2(src, dst, flags)``; False where the system or the file system has
    no such rename (the caller falls back); OSError for any other failure (EEXIST, ENOENT)."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            import ctypes  # Linux only: renameat2 (glibc 2.28+), loaded when first used

            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (AttributeError, OSError):
                pass
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    import ctypes  # Linux only: the errno of the call above (loaded with it)

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the file system (NFS, some FUSE) or the kernel does not do it
    raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


class _Libc:
    """libc's ``sync_file_range`` through ctypes, loaded when first used (False: not there)."""

    fn: Callable[..., int] | Literal[False] | None = None

    @classmethod
    def sync_file_range(cls) -> Callable[..., int] | Literal[False]:
        if cls.fn is None:
            import ctypes  # Linux only: sync_file_range, loaded when first used
            import ctypes.util  # Linux only: sync_file_range, loaded when first used

            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                fn = lib.sync_file_range
                fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
                fn.restype = ctypes.c_int
                cls.fn = fn
            except (OSError, AttributeError):
                cls.fn = False
        return cls.fn


class PosixTree(ChildTree):
    """A child in a session of its own: its process group is its tree."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def exited(self) -> bool:
        if self.proc.returncode is not None:
            return True
        try:  # WNOWAIT: the child stays a zombie, so its group id is not given to anyone else
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere
            return True

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        self._signal(signal.SIGTERM)

    def kill_all(self) -> None:
        self._signal(signal.SIGKILL)

    def reap(self) -> int:
        return self.proc.wait()

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


class PosixPlatform(Platform):
    name = "posix"
    default_registry_binary = "docker-registry"  # Debian's package
    max_pid = 1 << 22  # Linux's PID_MAX_LIMIT (other systems stay below it)

    @property
    def binary_flag(self) -> int:
        return 0

    # -- files ------------------------------------------------------------------
    def pread_into(self, fd: int, view: memoryview, offset: int) -> int:
        return os.preadv(fd, [view], offset)

    def has_kernel_copy(self) -> bool:
        return hasattr(os, "copy_file_range")

    def kernel_copy(self, src_fd: int, dst_fd: int, n: int, src_offset: Optional[int]) -> int:
        if src_offset is None:
            return os.copy_file_range(src_fd, dst_fd, n)
        return os.copy_file_range(src_fd, dst_fd, n, src_offset)

    def reflink(self, src_fd: int, dst_fd: int) -> bool:
        import fcntl  # POSIX only: the FICLONE ioctl

        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return True
        except OSError as e:
            if e.errno in _NO_REFLINK:
                return False
            raise

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        fn = _Libc.sync_file_range()
        if fn:
            fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def advise_sequential(self, fd: int) -> None:
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass

    def try_lock(self, fd: int) -> bool:
        import fcntl  # POSIX only: flock

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def unlock(self, fd: int) -> None:
        import fcntl  # POSIX only: flock

        fcntl.flock(fd, fcntl.LOCK_UN)

    def fsync_dir(self, path: StrPath) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_path(self, path: StrPath) -> None:
        fd = os.open(path, os.O_RDONLY)  # fsync needs no write access here
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: StrPath, dst: StrPath, timeout: float) -> None:
        os.replace(src, dst)  # atomic; nobody's open file stops it here

    def remove(self, path: StrPath, timeout: float) -> None:
        os.unlink(path)

    def exchange(self, src: StrPath, dst: StrPath) -> bool:
        return _rename2(src, dst, _RENAME_EXCHANGE)

    def create_new(self, src: StrPath, dst: StrPath) -> None:
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
        try:
            os.link(src, dst)  # refuses an existing dst
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if os.path.lexists(dst):  # no hard links here: a last look, then a plain rename
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(dst)) from None
            os.replace(src, dst)
            return
        os.unlink(src)

    def holds_open_files_replaceable(self) -> bool:
        return True

    def open_nofollow(self, path: StrPath, flags: int, mode: int) -> int:
        return os.open(path, flags | os.O_NOFOLLOW, mode)

    def is_link(self, st: os.stat_result) -> bool:
        return stat.S_ISLNK(st.st_mode)

    def file_identity(self, path: StrPath, st: os.stat_result) -> Optional[dict[str, int]]:
        # ``touch`` can restore an mtime; only the kernel sets the ctime: a file changed in
        # place after it was hashed never matches
        return {"size": st.st_size, "dev": st.st_dev, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns}

    def set_mode(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def storage_owner(self, folders: Sequence[Path]) -> Optional[Owner]:
        if os.geteuid() != 0:
            return None
        for folder in folders:
            try:
                st = os.stat(folder)
            except OSError:
                continue
            return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)
        return None

    def chown(self, path: StrPath, owner: Owner) -> None:
        os.chown(path, *owner)

    def fchown(self, fd: int, owner: Owner) -> None:
        os.fchown(fd, *owner)

    def create_private(self, path: StrPath) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # umask-proof
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- the user ---------------------------------------------------------------
    def user_name(self) -> str:
        try:
            return getpass.getuser()
        except Exception:  # no passwd entry in some containers
            return str(os.getuid())

    def home_dir(self, env: Mapping[str, str]) -> Optional[Path]:
        return Path(env["HOME"]) if env.get("HOME") else None

    # -- processes --------------------------------------------------------------
    def pid_alive(self, pid: int) -> bool:
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return not _is_zombie(pid)

    def is_registry_process(self, pid: int, binary: Optional[str]) -> bool:
        args = _cmdline(pid)
        if args is None:  # no /proc: nothing to say against it
            return True
        return "serve" in args[1:]

    def describe_process(self, pid: int) -> str:
        return " ".join(_cmdline(pid) or [])

    def process_info(self, pid: int) -> Optional[ProcessInfo]:
        args = _cmdline(pid)
        stat = _stat_fields(pid)
        if args is None and stat is None:
            return None  # gone, or no /proc
        started = _started(stat, os.sysconf("SC_CLK_TCK"))
        return ProcessInfo(pid, _readlink(f"/proc/{pid}/exe"), tuple(args) if args is not None else None,
                           _readlink(f"/proc/{pid}/cwd"), started, int(stat[1]) if stat else None)

    def listeners(self, port: int) -> Optional[list[Listener]]:
        return linux_listeners(port)

    def same_path(self, a: str, b: str) -> bool:
        try:
            return os.path.samefile(a, b)
        except (OSError, ValueError):
            return os.path.realpath(a) == os.path.realpath(b)

    def long_paths(self) -> bool:
        return True  # PATH_MAX is 4096: a storage path never comes near it

    def stop_process(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    def kill_process(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def spawn_tree(self, args: Args, *, shell: bool, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                   stdin: Stream, stdout: Stream, stderr: Stream) -> ChildTree:
        proc = subprocess.Popen(args, shell=shell, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                                close_fds=True, start_new_session=True)
        return PosixTree(proc)

    def spawn_detached(self, args: Sequence[str], *, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                       stdout: IO[Any]) -> subprocess.Popen:
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, close_fds=True, start_new_session=True)

    def shell_quote(self, arg: str) -> str:
        return shlex.quote(arg)

    # -- stopping ---------------------------------------------------------------
    def install_stop_handlers(self, on_stop: Callable[[int], None]) -> None:
        def handler(signum: int, frame: object) -> None:  # noqa: ARG001 - signal API
            on_stop(signum)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)  # a dropped SSH session: stop the same clean way


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')'
    return stat[stat.rfind(")") + 2:][:1] in ("Z", "X")


def _cmdline(pid: int) -> Optional[list[str]]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
