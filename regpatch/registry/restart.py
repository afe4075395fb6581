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
    service:NAME[,timeout=SECONDS][,url=URL]
                              the registry is a service of the host's service manager
                              (systemd through systemctl; Windows' Service Control
                              Manager): stop it, wait until it has stopped, start it,
                              wait until it runs

A restart counts as done only when it is proven (``prove_new_registry``): the pid
regpatch stops is the registry it was told about (``process:``: its binary, its config
among its arguments, started before the pidfile was written), nothing answers the
registry's address once it is stopped, and the new process is alive and holds the
registry's port (or, where the host does not tell who holds a port, is alive while
``/v2/`` answers where nothing answered a moment before).

``process:`` takes key=value pairs separated by commas because Windows paths
contain ':'. After a restart both strategies wait until ``/v2/`` answers when
they know the registry's address (``url=`` or ``http.addr`` of the config).

The process helpers (``start_detached``, ``stop_pid``, ``pid_alive``,
``read_pidfile``, ``write_pidfile``) are the one implementation of "start the
registry detached and write the pidfile"; ``regpatch.demo.loopback`` uses them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import httpx

from regpatch import interrupt, platform
from regpatch.errors import ConfigError, RestartError, UsageError
from regpatch.platform import children
from regpatch.platform.services import service_manager
from regpatch.registry.config import registry_url_from_config
from regpatch.registry.processes import (
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    _last_line,
    http_probe,
    pid_alive,
    pidfile_mtime,
    read_pidfile,
    start_detached,
    stop_pid,
    wait_for_registry_process,
    wait_until_ready,
)
from regpatch.sanitize import command_secrets, redact_command

log = logging.getLogger("regpatch.restart")

DEFAULT_BINARY = platform.default_registry_binary()  # docker-registry (Debian), registry.exe (Windows)
DEFAULT_COMMAND_TIMEOUT = 300.0
STDERR_KEPT = 64 << 10  # the last lines of a failing command are what tell

SPEC_FORMS = ("none", "command:<shell command>",
              "process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH][,url=URL][,timeout=SECONDS]"
              "[,pass_env=NAME+NAME]",
              "service:NAME[,timeout=SECONDS][,url=URL]")
DEFAULT_SERVICE_TIMEOUT = 60.0
START_SLACK = 2.0  # seconds a pidfile's mtime may precede its process's start (clock steps, /proc's rounding)


# --------------------------------------------------------------------------- waiting


def url_from_registry_config(config: Path) -> Optional[str]:
    """The registry's URL from its config.yml, or None when it cannot be read
    (the restart then skips the readiness wait rather than failing)."""
    try:
        return registry_url_from_config(config)
    except ConfigError:
        return None


# --------------------------------------------------------------------------- proof


def url_port(url: str) -> Optional[int]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    return parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)


def _in_tree(pid: int, root: int) -> bool:
    """True when ``pid`` is ``root`` or one of its descendants (a service wrapper's child)."""
    seen = 0
    while pid and seen < 16:
        if pid == root:
            return True
        info = platform.process_info(pid)
        pid = info.parent if info and info.parent else 0
        seen += 1
    return False


def holders_of(url: str) -> Optional[set[int]]:
    """The pids listening on ``url``'s port; None when this host does not tell (no /proc, another
    user's sockets, a port not on this host)."""
    port = url_port(url)
    found = platform.listeners(port) if port else None
    if not found:
        return None
    pids = {listener.pid for listener in found if listener.pid}
    return pids or None


def prove_stopped(url: Optional[str], *, what: str, verify: bool = False) -> None:
    """After the registry was stopped, nothing may answer its address: what answers then is another
    process, and a registry started now would die on the taken port while that one is taken for it."""
    if not url or not http_probe(url, verify=verify, timeout=1.0):
        return
    holders = holders_of(url)
    who = (", ".join(f"pid {p} ({platform.describe_process(p)[:80]})" for p in sorted(holders))
           if holders else "a process this host does not name")
    raise RestartError(f"after stopping {what}, {url} still answers ({who} holds port {url_port(url)}): "
                       "another registry holds its port; stop it, or fix url= / http.addr")


def prove_new_registry(pid: int, url: Optional[str], *, what: str, log_path: Optional[Path] = None,
                       timeout: float = DEFAULT_READY_TIMEOUT, verify: bool = False) -> None:
    """The new registry process ``pid`` is alive and is the one answering at ``url``: it (or a
    process it started) holds the port. Where the host does not name the holder, it is still alive
    once ``/v2/`` answers (``prove_stopped`` saw nothing answer before it started)."""
    if not url:
        time.sleep(0.2)
        if not pid_alive(pid):
            last = _last_line(log_path) if log_path else ""
            raise RestartError(f"registry exited right after start (pid {pid}: {what})"
                               + (f"; last log line: {last}" if last else ""))
        return
    wait_for_registry_process(pid, url, timeout=timeout, log_path=log_path, verify=verify)
    holders = holders_of(url)
    if holders is not None and not any(_in_tree(h, pid) for h in holders):
        other = min(holders)
        raise RestartError(f"{url} answers, but port {url_port(url)} is held by pid {other} "
                           f"({platform.describe_process(other)[:80]}), not by {what} (pid {pid}): the restart did "
                           "not happen; stop the other process")
    if not pid_alive(pid):
        raise RestartError(f"{what} (pid {pid}) exited after {url} answered: another process answers there")


def _same_file(named: str, expected: str, cwd: Optional[str]) -> bool:
    named = named.removesuffix(" (deleted)")  # a binary replaced (upgraded) while it runs
    if cwd and not os.path.isabs(named):
        named = os.path.join(cwd, named)
    return platform.same_path(named, expected)


def registry_identity(pid: int, *, binary: str, config: Path, pidfile: Path) -> Optional[str]:
    """Why process ``pid`` is not the registry ``<binary> serve <config>`` that ``pidfile`` names,
    or None when it is: its file is ``binary`` (POSIX: or the script run before ``serve``), its
    arguments have ``serve <config>`` (POSIX; Windows does not show another process's command
    line), and it started before the pidfile was written (a pid reused since is not it)."""
    info = platform.process_info(pid)
    if info is None:
        return "this host does not tell what it runs"
    args = list(info.args or ())
    serving = args.index("serve") if "serve" in args else -1
    runs = ((info.exe is not None and _same_file(info.exe, binary, info.cwd))
            or (serving > 0 and _same_file(args[serving - 1], binary, info.cwd)))
    if not runs:
        return f"it runs {info.exe or (args[:1] or ['an unknown file'])[0]!r}, not {binary!r}"
    if info.args is not None and not (0 <= serving < len(args) - 1
                                      and _same_file(args[serving + 1], str(config), info.cwd)):
        return f"its arguments {' '.join(args)[:160]!r} are not 'serve {config}'"
    written = pidfile_mtime(pidfile)
    if info.started is not None and written is not None and info.started > written + START_SLACK:
        return (f"it started at {time.strftime('%H:%M:%S', time.localtime(info.started))}, after the pidfile was "
                f"written ({time.strftime('%H:%M:%S', time.localtime(written))}): its pid was reused")
    return None


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- strategies

class RestartStrategy(ABC):
    """How to restart the registry so that it forgets removed content.

    ``restart`` is what a patch or rollback uses. ``stop`` and ``start`` are separate
    operations for a maintenance window (``regpatch gc``: the registry's own garbage
    collection needs it stopped); a strategy that cannot do them separately says so with
    ``can_stop = False`` and a ``UsageError`` naming what can.
    """

    needed: bool = True
    can_stop: bool = False

    @abstractmethod
    def restart(self) -> None:
        """Restart the registry; raise ``RestartError`` / ``RegistryUnavailable``."""

    def stop(self) -> None:
        """Stop the registry and return once it no longer runs."""
        raise UsageError(f"the restart strategy '{self.describe()}' cannot stop the registry on its own; "
                         "a maintenance window needs --restart process:... (or service:NAME)")

    def start(self) -> None:
        """Start the registry and return once the new process answers."""
        raise UsageError(f"the restart strategy '{self.describe()}' cannot start the registry on its own; "
                         "a maintenance window needs --restart process:... (or service:NAME)")

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
    """Run a shell command (``sh -c`` / ``cmd /c``), bounded by ``timeout``, through the one
    runner (``regpatch.platform.children``): its own process group or Job Object, killed on
    a stop or the timeout. What it leaves running (a registry it started in the
    background) keeps running; stdout is dropped, the last 64 KiB of stderr kept for the
    error. When ``ready_url`` is set, wait until it answers afterwards.
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
        secrets = command_secrets(self.command)  # what it carries or expands may show up in its output
        children.run_or_raise(self.command, shell=True, stderr=children.Capture(STDERR_KEPT, "tail"),
                              timeout=self.timeout, leftovers="keep", error=RestartError,
                              what=f"restart command ({redact_command(self.command)})",
                              show=lambda line: redact_command(line, secrets))
        url = self.ready_url
        if url:
            wait_until_ready(lambda: http_probe(url, verify=self.verify, timeout=1.0),
                             timeout=self.ready_timeout, what=f"registry at {url} after restart")


class ProcessRestart(RestartStrategy):
    """Stop the registry whose pid is in ``pidfile`` and start it again.

    A missing pidfile or a stale pid is fine (nothing to stop). A pid that
    belongs to some other program (no ``serve`` argument) is not signalled.
    The new process runs ``<binary> serve <config>`` in a new session, output
    appended to ``log`` (default: ``registry.log`` next to the pidfile), and
    its pid replaces the old one in the pidfile.
    """

    def __init__(self, pidfile: Path, config: Path, *, binary: Optional[str] = None,
                 log: Optional[Path] = None, ready_url: Optional[str] = None,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 pass_env: Sequence[str] = ()):
        self.pidfile = Path(pidfile)
        self.config = Path(config)
        self.binary = binary or platform.default_registry_binary()  # this host's: registry.exe on Windows
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

    can_stop = True

    def _check(self) -> str:
        binary = self._resolve_binary()
        if not self.config.is_file():
            raise RestartError(f"registry config {self.config} does not exist; give config=PATH")
        return binary

    def restart(self) -> None:
        binary = self._check()
        self._stop()
        self._start(binary)

    def stop(self) -> None:
        self._check()
        self._stop()

    def start(self) -> None:
        """Start the registry unless the pidfile's registry already runs (a re-run after a kill)."""
        binary = self._check()
        running = self.running()
        if running is not None and registry_identity(running, binary=binary, config=self.config,
                                                      pidfile=self.pidfile) is None:
            self.last_pid = running
            return
        self._start(binary)

    def running(self) -> Optional[int]:
        """The pid of the registry the pidfile names while it runs, else None."""
        old = read_pidfile(self.pidfile)
        return old if old is not None and pid_alive(old) else None

    def _stop(self) -> None:
        old = self.running()
        if old is not None:
            why = registry_identity(old, binary=self._resolve_binary(), config=self.config, pidfile=self.pidfile)
            if why is not None:
                raise RestartError(f"pid {old} in {self.pidfile} is not the registry it names ({why}); nothing was "
                                   "stopped: fix or remove the pidfile")
            stop_pid(old, timeout=self.stop_timeout)
        prove_stopped(self._url(), what=f"the registry of {self.pidfile}" + (f" (pid {old})" if old else ""))

    def _url(self) -> Optional[str]:
        return self.ready_url or url_from_registry_config(self.config)

    def _start(self, binary: str) -> None:
        pid = start_detached([binary, "serve", str(self.config)], log_path=self.log,
                             pidfile=self.pidfile, env=registry_environment(os.environ, self.pass_env))
        self.last_pid = pid
        prove_new_registry(pid, self._url(), what=f"the registry started from {binary}", log_path=self.log,
                           timeout=self.ready_timeout)


class ServiceRestart(RestartStrategy):
    """Stop and start the service ``name`` through the host's service manager
    (``platform.services()``: systemd, or Windows' Service Control Manager), each step waited
    for (``sc stop`` returns before the service has stopped), the new process proven
    (``prove_new_registry``: its pid, or a process it started, holds the registry's port)."""

    can_stop = True

    def __init__(self, name: str, *, timeout: float = DEFAULT_SERVICE_TIMEOUT, ready_url: Optional[str] = None,
                 manager: Optional[platform.ServiceManager] = None):
        if not re.fullmatch(r"[A-Za-z0-9_.@:\-]{1,256}", name or ""):
            raise UsageError(f"service name {name[:64]!r} is not a service name (letters, digits, '_', '.', '-', "
                             "'@', ':'); give the service's key name, as 'sc query' or 'systemctl status' shows it")
        self.name = name
        self.timeout = timeout
        self.ready_url = ready_url
        self._manager = manager
        self.last_pid: Optional[int] = None

    @property
    def manager(self) -> platform.ServiceManager:
        if self._manager is None:
            self._manager = service_manager()
        return self._manager

    def describe(self) -> str:
        return (f"restart the service {self.name} ({self.manager.kind}), waiting up to {self.timeout:g} s each way"
                + (f", then for {self.ready_url}" if self.ready_url else ""))

    def _wait(self, done: Callable[[platform.ServiceState], bool], doing: str) -> platform.ServiceState:
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            state = self.manager.query(self.name)
            if done(state):
                return state
            if time.monotonic() >= deadline:
                raise RestartError(f"the service {self.name} did not {doing} within {self.timeout:g} s (it is "
                                   f"{state.state}); check its log, or raise timeout= in --restart "
                                   f"service:{self.name},timeout=SECONDS")
            interrupt.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    def stop(self) -> None:
        before = self.manager.query(self.name)
        if not before.down:
            self.manager.request_stop(self.name, self.timeout)
            self._wait(lambda s: s.down, "stop")
            if before.pid and not _gone(before.pid, self.timeout):
                raise RestartError(f"the service {self.name} reports stopped but its process {before.pid} still "
                                   "runs; stop it, then run again")
        prove_stopped(self.ready_url, what=f"the service {self.name}")

    def start(self) -> None:
        self.manager.request_start(self.name, self.timeout)
        state = self._wait(lambda s: (s.state == "running" and s.pid is not None) or s.down, "start")
        if state.down or state.pid is None:
            raise RestartError(f"the service {self.name} is {state.state} right after its start; check its log "
                               "(the registry's config, its port)")
        self.last_pid = state.pid
        prove_new_registry(state.pid, self.ready_url, what=f"the service {self.name}",
                           timeout=self.timeout)

    def restart(self) -> None:
        old = self.manager.query(self.name).pid
        self.stop()
        self.start()
        if old is not None and self.last_pid == old:
            raise RestartError(f"the service {self.name} still runs as pid {old} after its restart: it was not "
                               "restarted; check the service's wrapper")


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        interrupt.sleep(0.05)
    return True


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
        return _process_restart(spec, rest, registry_config)
    if kind == "service" and sep:
        return _service_restart(spec, rest, registry_config)
    raise _bad(spec, f"unknown kind {kind!r}" if kind not in ("none", "command", "process", "service")
               else "malformed")


SERVICE_KEYS = ("timeout", "url")


def _service_restart(spec: str, rest: str, registry_config: Optional[Path]) -> ServiceRestart:
    name, _, options = rest.partition(",")
    name = name.strip()
    if not name or "=" in name:
        raise _bad(spec, "'service:' needs the service's name first, e.g. 'service:registry,timeout=120'")
    opts = _spec_options(spec, options, SERVICE_KEYS)
    url = opts.get("url") or (url_from_registry_config(registry_config) if registry_config else None)
    return ServiceRestart(name, timeout=_seconds(spec, opts, DEFAULT_SERVICE_TIMEOUT), ready_url=url)


PROCESS_KEYS = ("pidfile", "config", "binary", "log", "url", "timeout", "pass_env")


def _spec_options(spec: str, rest: str, keys: Sequence[str]) -> dict[str, str]:
    """``key=value,key=value`` of a spec: known keys, each once, never empty."""
    opts: dict[str, str] = {}
    for part in rest.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise _bad(spec, f"{part.strip()!r} is not key=value")
        if key not in keys:
            raise _bad(spec, f"unknown key {key!r}")
        if key in opts:
            raise _bad(spec, f"key {key!r} given twice")
        opts[key] = value.strip()
    return opts


def _seconds(spec: str, opts: dict[str, str], default: float) -> float:
    if "timeout" not in opts:
        return default
    try:
        timeout = float(opts["timeout"])
    except ValueError:
        raise _bad(spec, f"timeout {opts['timeout']!r} is not a number of seconds") from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise _bad(spec, "timeout must be a positive number of seconds")
    return timeout


def _process_restart(spec: str, rest: str, registry_config: Optional[Path]) -> "ProcessRestart":
    opts = _spec_options(spec, rest, PROCESS_KEYS)
    if "pidfile" not in opts:
        raise _bad(spec, "'process:' needs pidfile=PATH")
    config = opts.get("config") or (str(registry_config) if registry_config else None)
    if not config:
        raise _bad(spec, "'process:' needs config=PATH (or the registry config given elsewhere)")
    timeout = _seconds(spec, opts, DEFAULT_READY_TIMEOUT)
    pass_env = [n for n in opts.get("pass_env", "").split("+") if n]
    for name in pass_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _bad(spec, f"pass_env: {name!r} is not an environment variable name")
    return ProcessRestart(Path(opts["pidfile"]), Path(config),
                          binary=opts.get("binary"),
                          log=Path(opts["log"]) if "log" in opts else None,
                          ready_url=opts.get("url"), ready_timeout=timeout, pass_env=pass_env)
