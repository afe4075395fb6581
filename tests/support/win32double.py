"""Recording doubles of the Win32 calls, for a machine without Windows.

- ``RecordingWin32`` stands in for ``regpatch.platform._win32.Win32`` (the
  ``_windows.Win32Api`` protocol) under the Windows-API layer: each call is recorded in
  ``calls`` and done the nearest way Linux can, so that real runs go through: a Job
  Object is the child's process group (the double starts it in a new session), its end
  a SIGKILL to that group; ``msvcrt.locking`` is an open-file-description lock of the
  same byte range (per handle, as on Windows); the NTFS change time is the ctime; the
  owner-only ACL is mode 0600. ``fail_replace`` scripts sharing violations.
- ``FakeLibrary`` stands in for kernel32 / advapi32 under ``_win32.Win32`` itself: every
  function records its arguments and answers what a test scripts, so that the real
  Windows code (structures, flags, the order of calls) runs here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Call:
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


class RecordingWin32:
    """The Win32 API as the Windows implementation uses it, emulated on Linux and recorded."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self.jobs: dict[int, dict] = {}
        self._next_job = 0x1000
        self.replace_failures: list[int] = []    # winerrors to raise, one per replace or remove call
        self.console_window = True
        self.break_handler: Optional[Callable] = None
        self.console_handlers: list[Callable[[int], bool]] = []
        self.change_times = True
        self.images: dict[int, Optional[str]] = {}  # pid -> image path the double reports
        self.created: dict[int, Optional[int]] = {}  # pid -> creation FILETIME the double reports
        self.services: dict[str, "FakeService"] = {}  # the Service Control Manager's services
        self.service_failures: dict[tuple[str, str], int] = {}  # (verb, name) -> winerror to raise once
        self.long_paths = True

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append(Call(name, args, kwargs))

    def called(self, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.name == name]

    # -- files ------------------------------------------------------------------------
    def fail_replace(self, *winerrors: int) -> None:
        self.replace_failures.extend(winerrors)

    def fail_remove(self, *winerrors: int) -> None:
        self.replace_failures.extend(winerrors)  # (one queue: a test fails one kind of call at a time)

    def replace(self, src: str, dst: str) -> None:
        self._record("replace", src, dst)
        with self._lock:
            code = self.replace_failures.pop(0) if self.replace_failures else None
        if code is not None:
            e = PermissionError(13, "The process cannot access the file because it is being used by another "
                                    "process" if code == 32 else "Access is denied", dst)
            e.winerror = code  # (OSError takes a winerror argument only on Windows)
            raise e
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        self._record("remove", path)
        with self._lock:
            code = self.replace_failures.pop(0) if self.replace_failures else None
        if code is not None:
            e = PermissionError(13, "The process cannot access the file because it is being used by another "
                                    "process", path)
            e.winerror = code
            raise e
        os.unlink(path)

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        import fcntl  # (Linux's open-file-description locks stand for Windows' byte-range locks)

        offset = os.lseek(fd, 0, os.SEEK_CUR)
        self._record("locking", fd, mode, nbytes, offset=offset)
        kind = fcntl.F_UNLCK if mode == 0 else fcntl.F_WRLCK
        lock = struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, nbytes, 0)  # struct flock, l_pid 0 (OFD)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        except (BlockingIOError, PermissionError) as e:
            raise PermissionError(13, "Permission denied (locked by another handle)") from e

    def change_time(self, path: str) -> Optional[int]:
        self._record("change_time", path)
        if not self.change_times:
            return None
        try:
            return os.stat(path).st_ctime_ns // 100
        except OSError:
            return None

    def set_owner_only(self, path: str) -> None:
        self._record("set_owner_only", path, size=os.path.getsize(path))
        os.chmod(path, 0o600)

    # -- processes ----------------------------------------------------------------------
    def popen(self, args: Any, *, creationflags: int, **kwargs: Any) -> subprocess.Popen:
        self._record("popen", args, creationflags=creationflags)
        return subprocess.Popen(args, start_new_session=True, **kwargs)  # the new group stands for the job

    def create_job(self) -> int:
        with self._lock:
            self._next_job += 1
            job = self._next_job
            self.jobs[job] = {"pids": [], "kill_on_close": True, "closed": False}
        self._record("create_job", job)
        return job

    def assign_to_job(self, job: int, pid: int) -> None:
        self._record("assign_to_job", job, pid)
        self.jobs[job]["pids"].append(pid)

    def resume(self, pid: int) -> None:
        self._record("resume", pid)

    def terminate_job(self, job: int, code: int) -> None:
        self._record("terminate_job", job, code)
        for pid in self.jobs[job]["pids"]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def release_job(self, job: int) -> None:
        self._record("release_job", job)
        self.jobs[job]["kill_on_close"] = False

    def close_handle(self, handle: int) -> None:
        self._record("close_handle", handle)
        job = self.jobs.get(handle)
        if job is not None and not job["closed"]:
            job["closed"] = True
            if job["kill_on_close"]:
                self.terminate_job(handle, 1)

    def process_alive(self, pid: int) -> bool:
        self._record("process_alive", pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    def process_image(self, pid: int) -> Optional[str]:
        self._record("process_image", pid)
        if pid in self.images:
            return self.images[pid]
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None

    def terminate_process(self, pid: int) -> None:
        self._record("terminate_process", pid)
        os.kill(pid, signal.SIGKILL)  # TerminateProcess: no grace

    def process_created(self, pid: int) -> Optional[int]:
        self._record("process_created", pid)
        if pid in self.created:
            return self.created[pid]
        from regpatch.platform import _procfs

        started = _procfs.started(_procfs.stat_fields(pid), os.sysconf("SC_CLK_TCK"))
        return int(started * 1e7) + EPOCH_AS_FILETIME if started is not None else None

    def process_parent(self, pid: int) -> Optional[int]:
        self._record("process_parent", pid)
        from regpatch.platform import _procfs

        fields = _procfs.stat_fields(pid)
        return int(fields[1]) if fields else None

    # -- the network (Linux's /proc/net/tcp stands for GetExtendedTcpTable) -----------------
    def tcp_listeners(self) -> list[tuple[str, int, int]]:
        self._record("tcp_listeners")
        from regpatch.platform import _procfs

        return [(l.address, l.port, l.pid or 0) for l in _procfs.linux_listeners(None) or []]

    # -- the Service Control Manager ----------------------------------------------------------
    def _service(self, verb: str, name: str) -> "FakeService":
        self._record(f"service_{verb}", name)
        code = self.service_failures.pop((verb, name), None)
        if code is None and name not in self.services:
            code = 1060  # ERROR_SERVICE_DOES_NOT_EXIST
        if code is not None:
            e = OSError(f"[WinError {code}]")
            e.winerror = code  # (OSError takes a winerror argument only on Windows)
            e.strerror = f"WinError {code}"
            raise e
        return self.services[name]

    def service_status(self, name: str) -> tuple[int, int]:
        return self._service("status", name).status()

    def service_stop(self, name: str) -> None:
        self._service("stop", name).stop()

    def service_start(self, name: str) -> None:
        self._service("start", name).start()

    def long_paths_enabled(self) -> Optional[bool]:
        self._record("long_paths_enabled")
        return self.long_paths

    # -- the console ----------------------------------------------------------------------
    def on_break(self, handler: Callable[[int, Any], None]) -> None:
        self._record("on_break")
        self.break_handler = handler

    def on_console_event(self, handler: Callable[[int], bool]) -> None:
        self._record("on_console_event")
        self.console_handlers.append(handler)

    def has_console_window(self) -> bool:
        return self.console_window


EPOCH_AS_FILETIME = 116_444_736_000_000_000


class FakeService:
    """A service as the Service Control Manager runs it: ``argv`` started for real on a start
    (its own session, output to ``log``), asked to stop with SIGTERM on a stop. Like the SCM,
    ControlService(STOP) returns at once (STOP_PENDING until the process has exited) and a
    control of a service in the wrong state fails (1062 not active, 1056 already running)."""

    STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4

    def __init__(self, argv: list[str], log: str, *, start_delay: float = 0.0):
        self.argv, self.log, self.start_delay = argv, log, start_delay
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self.stopping = False
        self.pids: list[int] = []

    def status(self) -> tuple[int, int]:
        import time

        if self.proc is None:
            return self.STOPPED, 0
        if self.proc.poll() is not None:
            self.proc, self.stopping = None, False
            return self.STOPPED, 0
        if self.stopping:
            return self.STOP_PENDING, self.proc.pid
        if time.monotonic() - self.started_at < self.start_delay:
            return self.START_PENDING, self.proc.pid
        return self.RUNNING, self.proc.pid

    def _error(self, code: int) -> OSError:
        e = OSError(f"[WinError {code}]")
        e.winerror, e.strerror = code, f"WinError {code}"
        return e

    def stop(self) -> None:
        if self.status()[0] == self.STOPPED:
            raise self._error(1062)  # ERROR_SERVICE_NOT_ACTIVE
        assert self.proc is not None
        self.stopping = True
        self.proc.send_signal(signal.SIGTERM)

    def start(self) -> None:
        import time

        if self.status()[0] != self.STOPPED:
            raise self._error(1056)  # ERROR_SERVICE_ALREADY_RUNNING
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self.started_at = time.monotonic()
        self.pids.append(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- doubles of the libraries under _win32.Win32 -------------------------------------------

class FakeFunction:
    """One DLL function: records each call's arguments; answers ``result`` or ``effect(*args)``."""

    def __init__(self, name: str, log: list):
        self.name, self._log = name, log
        self.result: Any = 1
        self.effect: Optional[Callable[..., Any]] = None
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> Any:
        self._log.append((self.name, args))
        return self.effect(*args) if self.effect else self.result


class FakeLibrary:
    def __init__(self, name: str, log: Optional[list] = None):
        self._name, self.log = name, log if log is not None else []
        self._functions: dict[str, FakeFunction] = {}

    def __getattr__(self, name: str) -> FakeFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._functions:
            self._functions[name] = FakeFunction(name, self.log)
        return self._functions[name]

    def calls(self, name: str) -> list[tuple]:
        return [args for n, args in self.log if n == name]


def pointee(arg: Any) -> Any:
    """The object a ``ctypes.byref(...)`` argument points at."""
    return arg._obj


def fake_win32(*, last_error: int = 0):
    """A ``_win32.Win32`` over fake libraries; returns (win32, kernel32, advapi32, state)."""
    from regpatch.platform._win32 import Win32  # the module under test (importable on any machine)

    log: list = []
    k32, adv = FakeLibrary("kernel32", log), FakeLibrary("advapi32", log)
    state = {"last_error": last_error, "locking": []}

    def win_error(code: int) -> OSError:
        e = OSError(f"[WinError {code}]")
        e.winerror = code
        e.strerror = f"WinError {code}"
        return e

    win32 = Win32(kernel32=k32, advapi32=adv, locking=lambda fd, mode, n: state["locking"].append((fd, mode, n)),
                  last_error=lambda: state["last_error"], win_error=win_error,
                  handler_type=ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32))  # (WINFUNCTYPE on Windows)
    return win32, k32, adv, state
