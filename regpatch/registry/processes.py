"""The registry's process: pidfiles, is a pid alive and a registry, start one detached, stop one, wait
until the registry answers."""

from __future__ import annotations

import os
import shlex
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import httpx

from regpatch import interrupt, platform
from regpatch.errors import RegistryUnavailable, RestartError
from regpatch.platform.ownfiles import read_own_file

if TYPE_CHECKING:
    import subprocess

DEFAULT_STOP_TIMEOUT = 10.0

DEFAULT_READY_TIMEOUT = 30.0

def wait_until_ready(probe: Callable[[], bool], *, timeout: float = DEFAULT_READY_TIMEOUT,
                     what: str = "the registry") -> float:
    """Call ``probe`` with bounded exponential backoff until it returns True.

    Delays start at 0.05 s and double up to 1 s; the last sleep is cut so the
    total never exceeds ``timeout``. Returns the seconds waited. Raises
    ``RegistryUnavailable`` naming ``what`` and the timeout if the probe never
    succeeds. Exceptions raised by ``probe`` propagate unchanged (a probe may
    raise to stop waiting early, e.g. when the process died).
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.05
    while True:
        if probe():
            return time.monotonic() - start
        now = time.monotonic()
        if now >= deadline:
            raise RegistryUnavailable(f"{what} did not become ready within {timeout:g} s")
        interrupt.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 1.0)

def http_probe(url: str, verify: bool = True, *, timeout: float = 2.0) -> bool:
    """True when ``GET {url}/v2/`` answers 200 or 401 (401: alive, wants auth).

    Connection errors, timeouts and any other status count as "not ready".
    """
    try:
        r = httpx.get(url.rstrip("/") + "/v2/", verify=verify, timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 401)

# Children started here are reaped by a daemon thread as soon as they exit, so
# that ``pid_alive`` sees them die (an unreaped child is a zombie, still "alive"
# to kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}


_children_lock = threading.Lock()


PIDFILE_LIMIT = 64


def read_pidfile(path: Path) -> Optional[int]:
    """The pid written in ``path``, or None when there is no pidfile (or it is empty). A file that is
    not a small regular file, or a link, or a text that is not one number in 1..``platform.max_pid``,
    is refused: ``RestartError`` naming the file (a FIFO never blocks, a huge number never reaches
    the OS)."""
    try:
        data = read_own_file(path, PIDFILE_LIMIT, what="pidfile", error=RestartError)
    except RestartError:
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return None  # a folder of its path is a file: there is no pidfile
        raise
    text = (data or b"").decode("ascii", "replace").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 12 and 1 <= int(text) <= platform.max_pid()):
        raise RestartError(f"pidfile {path} holds {text[:24]!r}, not a process id (1..{platform.max_pid()}): "
                           "not one regpatch wrote; fix or remove it")
    return int(text)


def pidfile_mtime(path: Path) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def write_pidfile(path: Path, pid: int) -> None:
    """Write ``pid`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    platform.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and has not exited (never signals it)."""
    if pid <= 0:
        return False
    with _children_lock:
        child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return platform.pid_alive(pid)


def looks_like_registry(pid: int, binary: Optional[str] = None) -> bool:
    """Guard against a recycled pid (``platform.is_registry_process``): on POSIX the process
    has a ``serve`` argument (``<binary> serve <config>``); on Windows its image is
    ``binary``'s file (default ``registry.exe``)."""
    return platform.is_registry_process(pid, binary)


def start_detached(argv: Sequence[str], *, log_path: Path, pidfile: Optional[Path] = None,
                   cwd: Optional[Path] = None, env: Optional[dict] = None) -> int:
    """Start ``argv`` detached from this process and return its pid.

    ``platform.spawn_detached``: a new session (POSIX); a new process group without a
    console, out of regpatch's job (Windows). stdin from the null device, stdout and
    stderr appended to ``log_path``; the pid is written to ``pidfile`` when given. The
    process outlives this Python process.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as log:
            proc = platform.spawn_detached(list(argv), stdout=log, cwd=cwd, env=env)
    except OSError as e:
        raise RestartError(f"cannot start {shlex.join(argv)}: {e.strerror or e}") from e
    with _children_lock:
        _children[proc.pid] = proc
    threading.Thread(target=_reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True).start()
    if pidfile is not None:
        write_pidfile(pidfile, proc.pid)
    return proc.pid


def _reap(proc: subprocess.Popen) -> None:
    proc.wait()
    with _children_lock:
        if _children.get(proc.pid) is proc:
            del _children[proc.pid]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while pid_alive(pid):
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.25)
    return True


def stop_pid(pid: Optional[int], *, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop process ``pid``: SIGTERM, wait up to ``timeout``, then SIGKILL (Windows:
    TerminateProcess, ``platform.stop_process``).

    Returns True when a process was stopped, False when there was none (None,
    stale or already gone). Raises ``RestartError`` if it survives SIGKILL or
    cannot be signalled.
    """
    if pid is None or not pid_alive(pid):
        return False
    try:
        platform.stop_process(pid)
    except ProcessLookupError:
        return False
    except PermissionError as e:
        raise RestartError(f"not allowed to stop process {pid}: {e.strerror or e}; "
                           "run regpatch as the registry's user") from e
    if _wait_gone(pid, timeout):
        return True
    try:
        platform.kill_process(pid)
    except ProcessLookupError:
        return True
    if not _wait_gone(pid, 5.0):
        raise RestartError(f"process {pid} is still running after SIGTERM, {timeout:g} s and SIGKILL")
    return True


def _last_line(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    lines = [l.strip() for l in data.decode("utf-8", errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else ""


def wait_for_registry_process(pid: int, url: str, *, timeout: float = DEFAULT_READY_TIMEOUT,
                              log_path: Optional[Path] = None, verify: bool = True) -> float:
    """Wait until ``url``/v2/ answers, failing fast (``RegistryUnavailable``
    with the last log line) if process ``pid`` exits first."""

    def probe() -> bool:
        if not pid_alive(pid):
            last = _last_line(log_path) if log_path else ""
            raise RegistryUnavailable(
                f"registry process {pid} exited before answering at {url}"
                + (f"; last log line: {last}" if last else ""))
        return http_probe(url, verify=verify, timeout=1.0)

    return wait_until_ready(probe, timeout=timeout, what=f"registry at {url} (pid {pid})")

