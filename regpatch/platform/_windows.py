"""The Windows implementation of the platform seam, for the host ``registry.exe`` runs on.

Plain Python over the names a Windows Python 3.11 has; every Win32 call (a Job Object,
an ACL, the console's close event, ``msvcrt.locking``, the process API, ``MoveFileEx``)
goes through ``self.native`` (``Win32Api``): ``_win32.Win32`` on Windows, a recording
double of the test kit under the Windows-API test layer (``tests/support/winapi.py``).
This module is importable and type-checked everywhere; it never names a Unix-only call.

Choices, and why:

- positional reads: ``lseek`` + ``readinto`` under a lock per descriptor. Every
  descriptor regpatch reads by position is its own (an archive member's window, a file
  being hashed, the history file), so moving its position hides nothing from anyone; a
  ``ReadFile`` with an ``OVERLAPPED`` offset moves the position on a synchronous handle
  too, so it would buy no more and need a native call the layer cannot run;
- locks: ``msvcrt.locking`` of one byte at ``LOCK_OFFSET``, far beyond the holder's text,
  because a Windows byte-range lock is mandatory: a lock on byte 0 would make the text
  that names the holder unreadable to the run that waits;
- replacing a file: ``MoveFileEx`` fails while another program holds the target open
  without delete sharing (Go's ``os.Open`` in ``registry.exe``, virus scanners,
  indexers): retried for ``timeout`` seconds, then ``FileInUse``, which says so;
- verified-blob markers: ``st_ctime`` is the creation time here, so a marker records the
  NTFS change time instead (``native.change_time``); a file system without one (or
  without file ids) gets no marker and its files are hashed again every time;
- children: a Job Object that ends on close (``KILL_ON_JOB_CLOSE``), the child created
  suspended and resumed once it is in the job, so nothing it starts escapes.
"""

from __future__ import annotations

import errno
import getpass
import logging
import ntpath
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Protocol, Sequence

from regpatch.errors import FileInUse, RestartError
from regpatch.platform._base import (
    Args,
    ChildTree,
    Listener,
    Owner,
    Platform,
    ProcessInfo,
    ServiceManager,
    ServiceState,
    Stream,
    StrPath,
)
from regpatch.platform.stopflag import wait, wait_finished

log = logging.getLogger("regpatch.platform")

# process creation flags (winbase.h)
CREATE_SUSPENDED = 0x00000004
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_BREAKAWAY_FROM_JOB = 0x01000000

# msvcrt.locking modes (sys/locking.h)
LK_UNLCK, LK_NBLCK = 0, 2
LOCK_OFFSET = 1 << 30  # the locked byte: beyond any text the lock file holds

# console control events (wincon.h); SIGBREAK's number (signal.h)
CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 0, 1, 2, 5, 6
SIGBREAK = 21
CLOSE_GRACE = 4.5  # Windows ends a closed console's processes 5 s after the event

FILE_ATTRIBUTE_REPARSE_POINT = 0x400
SHARING_ERRORS = {5: "ERROR_ACCESS_DENIED", 32: "ERROR_SHARING_VIOLATION"}

# a FILETIME (100 ns ticks since 1601-01-01) of the Unix epoch
EPOCH_AS_FILETIME = 116_444_736_000_000_000

# the service states of QueryServiceStatusEx (winsvc.h) in the words of ServiceState
SERVICE_STATES = {1: "stopped", 2: "starting", 3: "stopping", 4: "running", 5: "continuing", 6: "pausing",
                  7: "paused"}
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_NOT_ACTIVE = 1062
SERVICE_ERRORS = {
    5: "not allowed to control it: run regpatch as an administrator, or grant this account the right to "
       "start and stop the service (sc sdset)",
    1053: "it did not answer the request in time (ERROR_SERVICE_REQUEST_TIMEOUT): check its wrapper and its log",
    1058: "it is disabled (ERROR_SERVICE_DISABLED): set its start type (sc config NAME start= demand)",
    1060: "there is no such service on this host (ERROR_SERVICE_DOES_NOT_EXIST): check the name with "
          "'sc query NAME' (the service's key name, not its display name)",
    1061: "it cannot accept control messages now (ERROR_SERVICE_CANNOT_ACCEPT_CTRL): wait and run again",
    1069: "its account could not log on (ERROR_SERVICE_LOGON_FAILED): check the service's account and password",
}


class Win32Api(Protocol):
    """The Win32 calls the Windows implementation makes (``_win32.Win32``, or a test double)."""

    def replace(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def locking(self, fd: int, mode: int, nbytes: int) -> None: ...
    def change_time(self, path: str) -> Optional[int]: ...
    def set_owner_only(self, path: str) -> None: ...
    def popen(self, args: Args, *, creationflags: int, **kwargs: Any) -> subprocess.Popen: ...
    def create_job(self) -> int: ...
    def assign_to_job(self, job: int, pid: int) -> None: ...
    def resume(self, pid: int) -> None: ...
    def terminate_job(self, job: int, code: int) -> None: ...
    def release_job(self, job: int) -> None: ...
    def close_handle(self, handle: int) -> None: ...
    def process_alive(self, pid: int) -> bool: ...
    def process_image(self, pid: int) -> Optional[str]: ...
    def process_created(self, pid: int) -> Optional[int]: ...
    def process_parent(self, pid: int) -> Optional[int]: ...
    def terminate_process(self, pid: int) -> None: ...
    def tcp_listeners(self) -> list[tuple[str, int, int]]: ...
    def service_status(self, name: str) -> tuple[int, int]: ...
    def service_stop(self, name: str) -> None: ...
    def service_start(self, name: str) -> None: ...
    def long_paths_enabled(self) -> Optional[bool]: ...
    def on_break(self, handler: Callable[[int, Any], None]) -> None: ...
    def on_console_event(self, handler: Callable[[int], bool]) -> None: ...
    def has_console_window(self) -> bool: ...


def cmd_quote(arg: str) -> str:
    """``arg`` as one argument on a ``cmd.exe /c`` line: in double quotes (``&|<>()^`` and
    spaces are then literal), trailing backslashes doubled (the program's own parsing).
    ``"``, ``%``, ``!`` and line breaks cannot be quoted for cmd.exe: ValueError."""
    bad = sorted(set('"%!\r\n\x00') & set(arg))
    if bad:
        raise ValueError(f"{arg!r} holds {''.join(bad)!r}, which cmd.exe cannot take inside quotes")
    trailing = len(arg) - len(arg.rstrip("\\"))
    return '"' + arg + "\\" * trailing + '"'


class WindowsTree(ChildTree):
    """A child in a Job Object of its own: the job is its tree."""

    def __init__(self, proc: subprocess.Popen, job: int, native: Win32Api):
        self.proc, self.job, self.native = proc, job, native
        self._closed = False

    def exited(self) -> bool:
        return self.proc.poll() is not None  # (the job keeps the rest of the tree reachable)

    def stop_all(self) -> None:
        self.kill_all()  # a detached child has no console to send Ctrl-Break to: end the job

    def kill_all(self) -> None:
        if not self._closed:
            self.native.terminate_job(self.job, 1)

    def reap(self) -> int:
        return self.proc.wait()

    def release(self) -> None:
        if not self._closed:
            self.native.release_job(self.job)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.native.close_handle(self.job)


class WindowsServices(ServiceManager):
    """The Service Control Manager, through ``native`` (OpenSCManager, OpenService, ControlService,
    StartService, QueryServiceStatusEx). A stop of a service already stopped, or a start of one
    already running, is no error: the caller waits for the state it needs either way."""

    kind = "the Service Control Manager"

    def __init__(self, native: "Win32Api"):
        self.native = native

    def _fail(self, e: OSError, doing: str, name: str) -> RestartError:
        code = getattr(e, "winerror", None)
        why = SERVICE_ERRORS.get(code or 0) or f"[WinError {code}] {e.strerror or e}"
        return RestartError(f"{doing} the Windows service {name!r} failed: {why}")

    def query(self, name: str) -> ServiceState:
        try:
            state, pid = self.native.service_status(name)
        except OSError as e:
            raise self._fail(e, "querying", name) from None
        return ServiceState(name, SERVICE_STATES.get(state, f"state {state}"), pid or None)

    def request_stop(self, name: str, timeout: float) -> None:
        try:
            self.native.service_stop(name)
        except OSError as e:
            if getattr(e, "winerror", None) != ERROR_SERVICE_NOT_ACTIVE:
                raise self._fail(e, "stopping", name) from None

    def request_start(self, name: str, timeout: float) -> None:
        try:
            self.native.service_start(name)
        except OSError as e:
            if getattr(e, "winerror", None) != ERROR_SERVICE_ALREADY_RUNNING:
                raise self._fail(e, "starting", name) from None


class WindowsPlatform(Platform):
    name = "windows"
    default_registry_binary = "registry.exe"  # distribution's binary, built for Windows
    max_pid = 0xFFFFFFFF  # a DWORD

    def __init__(self, native: Optional[Win32Api] = None):
        self._native = native
        self._fd_locks: dict[int, threading.Lock] = {}
        self._fd_locks_guard = threading.Lock()

    @property
    def native(self) -> Win32Api:
        if self._native is None:
            from regpatch.platform._win32 import load  # Windows only: ctypes and msvcrt, loaded when first used

            self._native = load()
        return self._native

    @property
    def binary_flag(self) -> int:
        return getattr(os, "O_BINARY", 0)  # read when used: the os module this code sees

    # -- files ------------------------------------------------------------------
    def _fd_lock(self, fd: int) -> threading.Lock:
        with self._fd_locks_guard:
            return self._fd_locks.setdefault(fd, threading.Lock())

    def pread_into(self, fd: int, view: memoryview, offset: int) -> int:
        with self._fd_lock(fd):
            os.lseek(fd, offset, os.SEEK_SET)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                return f.readinto(view) or 0

    def has_kernel_copy(self) -> bool:
        return False

    def kernel_copy(self, src_fd: int, dst_fd: int, n: int, src_offset: Optional[int]) -> int:
        raise OSError(errno.ENOSYS, "no kernel copy on Windows")

    def reflink(self, src_fd: int, dst_fd: int) -> bool:
        return False  # (ReFS block cloning is not used)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        return None

    def advise_sequential(self, fd: int) -> None:
        return None

    def try_lock(self, fd: int) -> bool:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            self.native.locking(fd, LK_NBLCK, 1)
            return True
        except OSError:  # EACCES / EDEADLOCK: another handle holds it
            return False

    def unlock(self, fd: int) -> None:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        self.native.locking(fd, LK_UNLCK, 1)

    def fsync_dir(self, path: StrPath) -> None:
        return None  # a folder cannot be opened for fsync; NTFS journals its entries itself

    def fsync_path(self, path: StrPath) -> None:
        fd = os.open(path, os.O_RDWR | self.binary_flag)  # FlushFileBuffers needs a writable handle
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exchange(self, src: StrPath, dst: StrPath) -> bool:
        return False  # no atomic exchange of two names on Windows: the caller replaces

    def create_new(self, src: StrPath, dst: StrPath) -> None:
        os.rename(src, dst)  # MoveFileEx without REPLACE_EXISTING: refuses an existing dst

    def holds_open_files_replaceable(self) -> bool:
        return False  # a file held open cannot be replaced: nothing is held across a swap

    def replace(self, src: StrPath, dst: StrPath, timeout: float) -> None:
        self._while_in_use("replacing", dst, lambda: self.native.replace(os.fspath(src), os.fspath(dst)), timeout)

    def remove(self, path: StrPath, timeout: float) -> None:
        self._while_in_use("removing", path, lambda: self.native.remove(os.fspath(path)), timeout)

    @staticmethod
    def _while_in_use(verb: str, path: StrPath, op: Callable[[], None], timeout: float) -> None:
        """``op`` retried while another program holds ``path`` open (a sharing violation)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                op()
                return
            except PermissionError as e:
                code = getattr(e, "winerror", None)
                if code not in SHARING_ERRORS:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FileInUse(f"{verb} {os.fspath(path)} failed: another program holds it open (the "
                                    f"registry, a virus scanner or an indexer; [WinError {code}] "
                                    f"{SHARING_ERRORS[code]}) for {timeout:g} s; run the same command again, "
                                    "and if it keeps failing, check that this user may write "
                                    f"{ntpath.dirname(os.fspath(path)) or '.'}") from e
                if delay == 0.02:
                    log.info("%s is in use by another program ([WinError %s]): retrying for up to %g s",
                             os.fspath(path), code, timeout)
                wait(min(delay, left))
                delay = min(delay * 2, 0.5)

    def is_link(self, st: os.stat_result) -> bool:
        return _is_link(st)

    def open_nofollow(self, path: StrPath, flags: int, mode: int) -> int:
        try:
            before: Optional[os.stat_result] = os.lstat(path)
        except FileNotFoundError:
            before = None
        if before is not None and _is_link(before):
            raise OSError(errno.ELOOP, "a symbolic link or junction: not followed", os.fspath(path))
        fd = os.open(path, flags | self.binary_flag, mode)
        try:
            opened, now = os.fstat(fd), os.lstat(path)
            if _is_link(now) or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                raise OSError(errno.ELOOP, "replaced by a link while it was opened: not used", os.fspath(path))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def file_identity(self, path: StrPath, st: os.stat_result) -> Optional[dict[str, int]]:
        change = self.native.change_time(os.fspath(path))
        if change is None or not st.st_ino:
            return None  # nothing proves the file unchanged: never trusted, hashed again
        return {"size": st.st_size, "dev": st.st_dev, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
                "change": change}

    def set_mode(self, fd: int, mode: int) -> None:
        return None  # files take their folder's ACL

    def storage_owner(self, folders: Sequence[Path]) -> Optional[Owner]:
        return None

    def chown(self, path: StrPath, owner: Owner) -> None:
        return None

    def fchown(self, fd: int, owner: Owner) -> None:
        return None

    def create_private(self, path: StrPath) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | self.binary_flag, 0o600)
        try:
            self.native.set_owner_only(os.fspath(path))  # before a byte is written
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd

    # -- the user ---------------------------------------------------------------
    def user_name(self) -> str:
        try:
            return getpass.getuser()
        except Exception:  # no USERNAME in the environment
            return "unknown"

    def home_dir(self, env: Mapping[str, str]) -> Optional[Path]:
        if env.get("USERPROFILE"):
            return Path(env["USERPROFILE"])
        if env.get("HOMEDRIVE") and env.get("HOMEPATH"):
            return Path(env["HOMEDRIVE"] + env["HOMEPATH"])
        return None

    # -- processes --------------------------------------------------------------
    def pid_alive(self, pid: int) -> bool:
        return pid > 0 and self.native.process_alive(pid)

    def is_registry_process(self, pid: int, binary: Optional[str]) -> bool:
        image = self.native.process_image(pid)
        if image is None:  # unknown: never end a process that may be someone else's
            return False
        have = ntpath.basename(image).casefold()
        want = ntpath.basename(binary or self.default_registry_binary).casefold()
        return have in (want, want + ".exe")

    def describe_process(self, pid: int) -> str:
        return self.native.process_image(pid) or ""

    def process_info(self, pid: int) -> Optional[ProcessInfo]:
        image = self.native.process_image(pid)
        created = self.native.process_created(pid)
        if image is None and created is None:
            return None  # gone, or not ours to open
        started = (created - EPOCH_AS_FILETIME) / 1e7 if created else None
        return ProcessInfo(pid, image, None, None, started, self.native.process_parent(pid))

    def listeners(self, port: int) -> Optional[list[Listener]]:
        try:
            table = self.native.tcp_listeners()
        except OSError as e:
            log.debug("the TCP table could not be read: %s", e)
            return None
        return [Listener(address, p, pid or None) for address, p, pid in table if p == port]

    def services(self) -> ServiceManager:
        return WindowsServices(self.native)

    def same_path(self, a: str, b: str) -> bool:
        return _win_path(a) == _win_path(b)

    def long_paths(self) -> bool:
        return bool(self.native.long_paths_enabled())

    def stop_process(self, pid: int) -> None:
        self.native.terminate_process(pid)  # a detached process has no gentler stop

    def kill_process(self, pid: int) -> None:
        self.native.terminate_process(pid)

    def spawn_tree(self, args: Args, *, shell: bool, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                   stdin: Stream, stdout: Stream, stderr: Stream) -> ChildTree:
        job = self.native.create_job()
        try:
            proc = self.native.popen(args, shell=shell, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                                     creationflags=CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED)
        except BaseException:
            self.native.close_handle(job)
            raise
        try:
            self.native.assign_to_job(job, proc.pid)
            self.native.resume(proc.pid)
        except BaseException:
            proc.kill()
            proc.wait()
            self.native.close_handle(job)
            raise
        return WindowsTree(proc, job, self.native)

    def spawn_detached(self, args: Sequence[str], *, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                       stdout: IO[Any]) -> subprocess.Popen:
        flags = CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS
        options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": stdout, "stderr": subprocess.STDOUT,
                                   "cwd": cwd, "env": env, "close_fds": True}
        try:
            return self.native.popen(list(args), creationflags=flags | CREATE_BREAKAWAY_FROM_JOB, **options)
        except PermissionError as e:
            if getattr(e, "winerror", None) != 5:
                raise
            log.warning("regpatch runs in a job that keeps its children: the registry started now ends "
                        "when that job does")
            return self.native.popen(list(args), creationflags=flags, **options)

    def shell_quote(self, arg: str) -> str:
        return cmd_quote(arg)

    # -- stopping ---------------------------------------------------------------
    def install_stop_handlers(self, on_stop: Callable[[int], None]) -> None:
        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal API
            on_stop(signal.SIGINT if signum == SIGBREAK else signum)  # Ctrl-Break: as Ctrl-C

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        self.native.on_break(handler)
        self.native.on_console_event(self.console_handler(on_stop))

    def console_handler(self, on_stop: Callable[[int], None]) -> Callable[[int], bool]:
        """The console's close, a logoff or a shutdown stop the run as SIGTERM does; the
        handler returns once the run has unwound (``stopflag.mark_finished``) or after
        ``CLOSE_GRACE``, since Windows ends the process when it returns. Ctrl-C and
        Ctrl-Break are left to Python's own handler (SIGINT, SIGBREAK). A logoff seen by a
        process without a console window (a service) is another user's: ignored."""

        def on_event(event: int) -> bool:
            if event in (CTRL_C_EVENT, CTRL_BREAK_EVENT):
                return False
            if event == CTRL_LOGOFF_EVENT and not self.native.has_console_window():
                return False
            on_stop(signal.SIGTERM)
            wait_finished(CLOSE_GRACE)
            return True

        return on_event


def _win_path(path: str) -> str:
    """A Windows path compared as Windows does: case-insensitive, ``/`` as ``\\``, without ``\\\\?\\``."""
    text = path[4:] if path.startswith("\\\\?\\") else path
    return ntpath.normcase(ntpath.normpath(text))


def _is_link(st: os.stat_result) -> bool:
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & FILE_ATTRIBUTE_REPARSE_POINT)
