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
registry detached and write the pidfile"; ``regpatch.demo.loopback`` uses them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Optional, Sequence

from regpatch import platform
from regpatch.errors import ConfigError, RestartError, UsageError
from regpatch.platform import children
from regpatch.registry.config import registry_url_from_config
from regpatch.registry.processes import (
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    _last_line,
    http_probe,
    looks_like_registry,
    pid_alive,
    read_pidfile,
    start_detached,
    stop_pid,
    wait_for_registry_process,
    wait_until_ready,
)
from regpatch.sanitize import command_secrets, redact_command

DEFAULT_BINARY = platform.default_registry_binary()  # docker-registry (Debian), registry.exe (Windows)
DEFAULT_COMMAND_TIMEOUT = 300.0
STDERR_KEPT = 64 << 10  # the last lines of a failing command are what tell

SPEC_FORMS = ("none", "command:<shell command>",
              "process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH][,url=URL][,timeout=SECONDS]"
              "[,pass_env=NAME+NAME]")


# --------------------------------------------------------------------------- waiting


def url_from_registry_config(config: Path) -> Optional[str]:
    """The registry's URL from its config.yml, or None when it cannot be read
    (the restart then skips the readiness wait rather than failing)."""
    try:
        return registry_url_from_config(config)
    except ConfigError:
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
        try:
            done = children.run(self.command, shell=True, stderr=children.Capture(STDERR_KEPT, "tail"),
                                timeout=self.timeout, leftovers="keep")
        except children.ChildTimeout:
            raise RestartError(f"restart command timed out after {self.timeout:g} s: "
                               f"{redact_command(self.command)}") from None
        except OSError as e:
            raise RestartError(f"restart command could not start: {redact_command(self.command)}: "
                               f"{e.strerror or type(e).__name__}") from None
        if done.returncode != 0:
            lines = done.stderr.lines()
            secrets = command_secrets(self.command)  # what it carries or expands may show up in its stderr
            last = redact_command(lines[-1], secrets) if lines else "(no stderr)"
            raise RestartError(f"restart command {done.status()}: {redact_command(self.command)}; "
                               f"last stderr line: {last}")
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
        self._start(self._check())

    def running(self) -> Optional[int]:
        """The pid of the registry the pidfile names while it runs, else None."""
        old = read_pidfile(self.pidfile)
        return old if old is not None and pid_alive(old) else None

    def _stop(self) -> None:
        old = self.running()
        if old is not None:
            if not looks_like_registry(old, self.binary):
                raise RestartError(f"pid {old} in {self.pidfile} is not a registry "
                                   f"({platform.describe_process(old)!r}); fix the pidfile")
            stop_pid(old, timeout=self.stop_timeout)

    def _start(self, binary: str) -> None:
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
        return _process_restart(spec, rest, registry_config)
    raise _bad(spec, f"unknown kind {kind!r}" if kind not in ("none", "command", "process")
               else "malformed")


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
                          binary=opts.get("binary", DEFAULT_BINARY),
                          log=Path(opts["log"]) if "log" in opts else None,
                          ready_url=opts.get("url"), ready_timeout=timeout, pass_env=pass_env)
