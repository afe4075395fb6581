"""Restart strategies for the registry, and the process helpers behind them.

Why a restart at all: the registry sees additions to its storage at once, but
not removals (a rollback that unlinks, a garbage collection), because the
in-memory blob descriptor cache remembers what existed until the process
restarts. A patch therefore needs no restart; a removal does.

Strategies, chosen with a one-line spec (``parse_restart_spec``):

    none                      nothing to do (``needed`` is False)
    command:<shell command>   run a shell command (systemctl, sc.exe, ssh ...)
    process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH][,url=URL][,timeout=SECONDS][,pass_env=A+B]
                              the registry is a plain process regpatch manages:
                              stop the pid in the pidfile, start
                              ``<binary> serve <config>`` again detached, write
                              the new pid; it never inherits REGISTRY_*, REGPATCH_*,
                              AWS_* or PREFECT_* variables except those in pass_env

``process:`` takes key=value pairs separated by commas because Windows paths
contain ':'. After a restart both strategies wait until ``/v2/`` answers when
they know the registry's address (``url=`` or ``http.addr`` of the config).

The process helpers (``start_detached``, ``stop_pid``, ``pid_alive``,
``read_pidfile``, ``write_pidfile``) are the one implementation of "start the
registry detached and write the pidfile"; ``regpatch.localregistry`` uses them.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import httpx

from . import interrupt
from .sanitize import redact_command
from .errors import RegistryUnavailable, RestartError, UsageError

DEFAULT_BINARY = "docker-registry"
DEFAULT_COMMAND_TIMEOUT = 300.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_READY_TIMEOUT = 30.0

SPEC_FORMS = ("none", "command:<shell command>",
              "process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH][,url=URL][,timeout=SECONDS]"
              "[,pass_env=NAME+NAME]")


# --------------------------------------------------------------------------- waiting

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


def url_from_registry_config(config: Path) -> Optional[str]:
    """The registry's URL from its config.yml, or None when it cannot be read
    (the restart then skips the readiness wait rather than failing)."""
    from .errors import ConfigError
    from .registry_config import registry_url_from_config

    try:
        return registry_url_from_config(config)
    except ConfigError:
        return None


# --------------------------------------------------------------------------- processes

# Children started here are reaped by a daemon thread as soon as they exit, so
# that ``pid_alive`` sees them die (an unreaped child is a zombie, still "alive"
# to kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


def read_pidfile(path: Path) -> Optional[int]:
    """The pid written in ``path``, or None when the file is missing or not a pid."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pidfile(path: Path, pid: int) -> None:
    """Write ``pid`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    os.replace(tmp, path)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')'
    return stat[stat.rfind(")") + 2:][:1] in ("Z", "X")


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    with _children_lock:
        child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _is_zombie(pid)


def _cmdline(pid: int) -> Optional[list[str]]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def looks_like_registry(pid: int) -> bool:
    """Guard against a recycled pid: where /proc exists, the process must have a
    ``serve`` argument (``<binary> serve <config>``). Elsewhere: assume yes."""
    args = _cmdline(pid)
    if args is None:
        return True
    return "serve" in args[1:]


def start_detached(argv: Sequence[str], *, log_path: Path, pidfile: Optional[Path] = None,
                   cwd: Optional[Path] = None, env: Optional[dict] = None) -> int:
    """Start ``argv`` detached from this process and return its pid.

    New session (POSIX) or new process group (Windows), stdin from /dev/null,
    stdout and stderr appended to ``log_path``; the pid is written to
    ``pidfile`` when given. The process outlives this Python process.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {}
    if sys.platform == "win32":  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    close_fds=True, **kwargs)
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
    """Stop process ``pid``: SIGTERM, wait up to ``timeout``, then SIGKILL.

    Returns True when a process was stopped, False when there was none (None,
    stale or already gone). Raises ``RestartError`` if it survives SIGKILL or
    cannot be signalled.
    """
    if pid is None or not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError as e:
        raise RestartError(f"not allowed to stop process {pid}: {e.strerror}; "
                           "run regpatch as the registry's user") from e
    if _wait_gone(pid, timeout):
        return True
    kill = getattr(signal, "SIGKILL", signal.SIGTERM)
    try:
        os.kill(pid, kill)
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


# --------------------------------------------------------------------------- strategies

class RestartStrategy(ABC):
    """How to restart the registry so that it forgets removed content."""

    needed: bool = True

    @abstractmethod
    def restart(self) -> None:
        """Restart the registry; raise ``RestartError`` / ``RegistryUnavailable``."""

    @abstractmethod
    def describe(self) -> str:
        """One line saying what ``restart`` does."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class NoRestart(RestartStrategy):
    needed = False

    def restart(self) -> None:
        return None

    def describe(self) -> str:
        return "no restart"


class CommandRestart(RestartStrategy):
    """Run a shell command (``sh -c`` / ``cmd /c``), bounded by ``timeout``.

    Output goes to temporary files, not pipes, so a command that leaves a
    registry running in the background cannot make us wait for it. When
    ``ready_url`` is set, wait until it answers afterwards.
    """

    def __init__(self, command: str, *, timeout: float = DEFAULT_COMMAND_TIMEOUT,
                 ready_url: Optional[str] = None, ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 verify: bool = False):
        if not command.strip():
            raise UsageError("restart spec 'command:' needs a command, e.g. "
                             "'command:systemctl restart docker-registry'")
        self.command = command
        self.timeout = timeout
        self.ready_url = ready_url
        self.ready_timeout = ready_timeout
        self.verify = verify

    def describe(self) -> str:
        return f"run command: {redact_command(self.command)}" + (
            f" (then wait for {self.ready_url})" if self.ready_url else "")

    def restart(self) -> None:
        kwargs: dict = {}
        if sys.platform != "win32":
            kwargs["start_new_session"] = True
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, **kwargs)
            try:
                code = interrupt.wait_child(proc, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise RestartError(f"restart command timed out after {self.timeout:g} s: "
                                   f"{redact_command(self.command)}") from None
            if code != 0:
                err.seek(0)
                lines = [l.strip() for l in err.read().decode("utf-8", "replace").splitlines() if l.strip()]
                last = lines[-1] if lines else "(no stderr)"
                raise RestartError(f"restart command exited with code {code}: {self.command}; "
                                   f"last stderr line: {last}")
        if self.ready_url:
            wait_until_ready(lambda: http_probe(self.ready_url, verify=self.verify, timeout=1.0),
                             timeout=self.ready_timeout, what=f"registry at {self.ready_url} after restart")


class ProcessRestart(RestartStrategy):
    """Stop the registry whose pid is in ``pidfile`` and start it again.

    A missing pidfile or a stale pid is fine (nothing to stop). A pid that
    belongs to some other program (no ``serve`` argument) is not signalled.
    The new process runs ``<binary> serve <config>`` in a new session, output
    appended to ``log`` (default: ``registry.log`` next to the pidfile), and
    its pid replaces the old one in the pidfile.
    """

    def __init__(self, pidfile: Path, config: Path, *, binary: str = DEFAULT_BINARY,
                 log: Optional[Path] = None, ready_url: Optional[str] = None,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 pass_env: Sequence[str] = ()):
        self.pidfile = Path(pidfile)
        self.config = Path(config)
        self.binary = binary
        self.log = Path(log) if log else self.pidfile.with_name("registry.log")
        self.ready_url = ready_url
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.pass_env = tuple(pass_env)
        self.last_pid: Optional[int] = None

    def describe(self) -> str:
        return (f"restart process from pidfile {self.pidfile}: {self.binary} serve {self.config}"
                f" (log {self.log})")

    def _resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if not found:
            raise RestartError(f"registry binary {self.binary!r} not found (not a file, not on PATH); "
                               "give binary=PATH in the restart spec")
        return found

    def restart(self) -> None:
        binary = self._resolve_binary()
        if not self.config.is_file():
            raise RestartError(f"registry config {self.config} does not exist; give config=PATH")
        old = read_pidfile(self.pidfile)
        if old is not None and pid_alive(old):
            if not looks_like_registry(old):
                raise RestartError(f"pid {old} in {self.pidfile} is not a registry "
                                   f"({' '.join(_cmdline(old) or [])!r}); fix the pidfile")
            stop_pid(old, timeout=self.stop_timeout)
        pid = start_detached([binary, "serve", str(self.config)], log_path=self.log,
                             pidfile=self.pidfile, env=registry_environment(os.environ, self.pass_env))
        self.last_pid = pid
        url = self.ready_url or url_from_registry_config(self.config)
        if url:
            wait_for_registry_process(pid, url, timeout=self.ready_timeout, log_path=self.log,
                                      verify=False)
        else:
            time.sleep(0.2)
            if not pid_alive(pid):
                last = _last_line(self.log)
                raise RestartError(f"registry exited right after start (pid {pid})"
                                   + (f"; last log line: {last}" if last else ""))


# --------------------------------------------------------------------------- environment

#: Variables a registry started by regpatch never inherits unless the operator names
#: them (``pass_env=``): distribution reads every ``REGISTRY_*`` variable as a
#: configuration override (``REGISTRY_AUTH_FILE`` would replace its auth section),
#: and regpatch's own, AWS's and Prefect's variables may hold credentials.
WITHHELD_ENV_PREFIXES = ("REGISTRY_", "REGPATCH_", "AWS_", "PREFECT_")


def registry_environment(env: Mapping[str, str], pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a registry process regpatch starts: ``env`` without the
    withheld prefixes, except the variables named in ``pass_env``."""
    keep = set(pass_env)
    return {k: v for k, v in env.items() if k in keep or not k.upper().startswith(WITHHELD_ENV_PREFIXES)}


# --------------------------------------------------------------------------- parsing

def _bad(spec: str, why: str) -> UsageError:
    return UsageError(f"invalid restart spec {spec!r}: {why}; accepted forms: " + " | ".join(SPEC_FORMS))


def parse_restart_spec(spec: str, *, registry_config: Optional[Path] = None) -> RestartStrategy:
    """Turn a restart spec into a strategy (see the module docstring).

    ``registry_config`` is the default ``config=`` of ``process:`` and lets
    ``command:`` wait for the registry's ``http.addr`` after running.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "none" and not rest.strip():
        return NoRestart()
    if kind == "command" and sep:
        url = url_from_registry_config(registry_config) if registry_config else None
        if not rest.strip():
            raise _bad(spec, "'command:' needs a shell command")
        return CommandRestart(rest.strip(), ready_url=url)
    if kind == "process" and sep:
        opts: dict[str, str] = {}
        for part in rest.split(","):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if not eq or not value.strip():
                raise _bad(spec, f"{part.strip()!r} is not key=value")
            if key not in ("pidfile", "config", "binary", "log", "url", "timeout", "pass_env"):
                raise _bad(spec, f"unknown key {key!r}")
            if key in opts:
                raise _bad(spec, f"key {key!r} given twice")
            opts[key] = value.strip()
        if "pidfile" not in opts:
            raise _bad(spec, "'process:' needs pidfile=PATH")
        config = opts.get("config") or (str(registry_config) if registry_config else None)
        if not config:
            raise _bad(spec, "'process:' needs config=PATH (or the registry config given elsewhere)")
        timeout = DEFAULT_READY_TIMEOUT
        if "timeout" in opts:
            try:
                timeout = float(opts["timeout"])
            except ValueError:
                raise _bad(spec, f"timeout {opts['timeout']!r} is not a number of seconds") from None
            if not (math.isfinite(timeout) and timeout > 0):
                raise _bad(spec, "timeout must be a positive number of seconds")
        pass_env = [n for n in opts.get("pass_env", "").split("+") if n]
        for name in pass_env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise _bad(spec, f"pass_env: {name!r} is not an environment variable name")
        return ProcessRestart(Path(opts["pidfile"]), Path(config),
                              binary=opts.get("binary", DEFAULT_BINARY),
                              log=Path(opts["log"]) if "log" in opts else None,
                              ready_url=opts.get("url"), ready_timeout=timeout, pass_env=pass_env)
    raise _bad(spec, f"unknown kind {kind!r}" if kind not in ("none", "command", "process")
               else "malformed")
