"""What each platform implements (``_posix.PosixPlatform``, ``_windows.WindowsPlatform``); the
documented API over it is ``regpatch.platform``."""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Sequence, Union

StrPath = Union[str, "os.PathLike[str]"]
Args = Union[str, Sequence[str]]
Stream = Union[int, IO[Any], None]
Owner = tuple[int, int]


@dataclass(frozen=True)
class ProcessInfo:
    """What this host tells about a running process (``platform.process_info``); None: not known here."""

    pid: int
    exe: Optional[str]                # the file it runs (Linux: /proc/PID/exe; Windows: its image path)
    args: Optional[tuple[str, ...]]   # its command line (POSIX); None on Windows (not read there)
    cwd: Optional[str]                # its working folder, against which relative arguments resolve (Linux)
    started: Optional[float]          # when it started, seconds since the epoch
    parent: Optional[int]             # its parent's pid


@dataclass(frozen=True)
class Listener:
    """A TCP socket listening on this host (``platform.listeners``)."""

    address: str                      # the local address: '0.0.0.0' or '::' for every address
    port: int
    pid: Optional[int]                # the process holding it; None when this process may not see it


@dataclass(frozen=True)
class ServiceState:
    """A service as its manager reports it (``ServiceManager.query``)."""

    name: str
    state: str                        # running | stopped | failed | starting | stopping | another word of the manager
    pid: Optional[int]                # its main process while it has one

    @property
    def down(self) -> bool:
        return self.state in ("stopped", "failed")


class ServiceManager(ABC):
    """The host's service manager: systemd (POSIX, through ``systemctl``) or the Service Control
    Manager (Windows). ``request_stop`` and ``request_start`` ask and return; the caller waits
    on ``query`` for the state it needs (``regpatch.registry.restart.ServiceRestart``). Every
    failure is a ``RestartError`` naming the service and what to do."""

    kind: str

    @abstractmethod
    def query(self, name: str) -> ServiceState: ...

    @abstractmethod
    def request_stop(self, name: str, timeout: float) -> None: ...

    @abstractmethod
    def request_start(self, name: str, timeout: float) -> None: ...


class ChildTree(ABC):
    """A child process and every process it starts: a process group (POSIX) or a Job
    Object (Windows). ``exited`` never reaps the child, so its group stays addressable
    until ``reap``."""

    proc: subprocess.Popen

    @abstractmethod
    def exited(self) -> bool:
        """The child itself has exited (it is not reaped: ``kill_all`` still reaches its tree)."""

    @abstractmethod
    def stop_all(self) -> None:
        """Ask the whole tree to stop (POSIX: SIGTERM to the group; Windows: end the job)."""

    @abstractmethod
    def kill_all(self) -> None:
        """End the whole tree now (POSIX: SIGKILL to the group; Windows: end the job)."""

    @abstractmethod
    def reap(self) -> int:
        """Wait for the child; its return code (negative: the signal that ended it, POSIX)."""

    @abstractmethod
    def release(self) -> None:
        """What the child left running keeps running (Windows: the job no longer ends it)."""

    @abstractmethod
    def close(self) -> None:
        """Free the tree's handles (Windows: a job not released ends what is left in it)."""


class Platform(ABC):
    """Every operating-system specific operation regpatch uses (docs in ``regpatch.platform``)."""

    name: str
    default_registry_binary: str
    max_pid: int  # the largest process id this system gives

    @property
    @abstractmethod
    def binary_flag(self) -> int:
        """What ``os.open`` needs for a binary descriptor (O_BINARY on Windows, else 0)."""

    # -- files ------------------------------------------------------------------
    @abstractmethod
    def pread_into(self, fd: int, view: memoryview, offset: int) -> int: ...

    @abstractmethod
    def has_kernel_copy(self) -> bool: ...

    @abstractmethod
    def kernel_copy(self, src_fd: int, dst_fd: int, n: int, src_offset: Optional[int]) -> int: ...

    @abstractmethod
    def reflink(self, src_fd: int, dst_fd: int) -> bool: ...

    @abstractmethod
    def start_writeback(self, fd: int, offset: int, length: int) -> None: ...

    @abstractmethod
    def advise_sequential(self, fd: int) -> None: ...

    @abstractmethod
    def try_lock(self, fd: int) -> bool: ...

    @abstractmethod
    def unlock(self, fd: int) -> None: ...

    @abstractmethod
    def fsync_dir(self, path: StrPath) -> None: ...

    @abstractmethod
    def fsync_path(self, path: StrPath) -> None: ...

    @abstractmethod
    def replace(self, src: StrPath, dst: StrPath, timeout: float) -> None: ...

    @abstractmethod
    def remove(self, path: StrPath, timeout: float) -> None: ...

    @abstractmethod
    def exchange(self, src: StrPath, dst: StrPath) -> bool: ...

    @abstractmethod
    def create_new(self, src: StrPath, dst: StrPath) -> None: ...

    @abstractmethod
    def holds_open_files_replaceable(self) -> bool: ...

    @abstractmethod
    def open_nofollow(self, path: StrPath, flags: int, mode: int) -> int: ...

    @abstractmethod
    def is_link(self, st: os.stat_result) -> bool: ...

    @abstractmethod
    def file_identity(self, path: StrPath, st: os.stat_result) -> Optional[dict[str, int]]: ...

    @abstractmethod
    def set_mode(self, fd: int, mode: int) -> None: ...

    @abstractmethod
    def storage_owner(self, folders: Sequence[Path]) -> Optional[Owner]: ...

    @abstractmethod
    def chown(self, path: StrPath, owner: Owner) -> None: ...

    @abstractmethod
    def fchown(self, fd: int, owner: Owner) -> None: ...

    @abstractmethod
    def create_private(self, path: StrPath) -> int: ...

    # -- the user ---------------------------------------------------------------
    @abstractmethod
    def user_name(self) -> str: ...

    @abstractmethod
    def home_dir(self, env: Mapping[str, str]) -> Optional[Path]: ...

    # -- processes --------------------------------------------------------------
    @abstractmethod
    def pid_alive(self, pid: int) -> bool: ...

    @abstractmethod
    def is_registry_process(self, pid: int, binary: Optional[str]) -> bool: ...

    @abstractmethod
    def describe_process(self, pid: int) -> str: ...

    @abstractmethod
    def process_info(self, pid: int) -> Optional[ProcessInfo]: ...

    @abstractmethod
    def listeners(self, port: int) -> Optional[list[Listener]]: ...

    @abstractmethod
    def same_path(self, a: str, b: str) -> bool: ...

    @abstractmethod
    def long_paths(self) -> bool: ...

    @abstractmethod
    def stop_process(self, pid: int) -> None: ...

    @abstractmethod
    def kill_process(self, pid: int) -> None: ...

    @abstractmethod
    def spawn_tree(self, args: Args, *, shell: bool, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                   stdin: Stream, stdout: Stream, stderr: Stream) -> ChildTree: ...

    @abstractmethod
    def spawn_detached(self, args: Sequence[str], *, env: Optional[Mapping[str, str]], cwd: Optional[StrPath],
                       stdout: IO[Any]) -> subprocess.Popen: ...

    @abstractmethod
    def shell_quote(self, arg: str) -> str: ...

    # -- stopping ---------------------------------------------------------------
    @abstractmethod
    def install_stop_handlers(self, on_stop: Callable[[int], None]) -> None: ...
