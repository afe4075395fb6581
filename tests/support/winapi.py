"""The Windows-API test layer: ``pytest --windows-api ...`` runs the project's own code as a
Windows Python 3.11 sees the world, on Linux.

It changes only what the project's modules (``regpatch``, ``regpatch_flows``,
``regpatch_tasks``) see, never ``os.name`` or ``sys.platform`` of the process (the
standard library, pytest and the test code keep running as on Linux):

- their ``os`` and ``signal`` are views that raise ``AttributeError`` for every name the
  Windows stubs of Python 3.11 lack (``support.apiset.unix_only``: ``os.pread``,
  ``os.killpg``, ``signal.SIGKILL``, ...) and for ``os.kill`` (it exists on Windows but is
  ``TerminateProcess``); the ``os`` view also has ``O_BINARY`` and refuses an ``os.open``
  without it (a text-mode descriptor on Windows) and an ``os.fsync`` of a read-only
  descriptor (``FlushFileBuffers`` needs write access). Their ``subprocess`` refuses POSIX-only
  arguments (``start_new_session``, ``preexec_fn``, ...). Every refusal is recorded, and a
  test that provoked one fails, even if the project's code caught the error;
- importing ``fcntl``, ``termios``, ``resource``, ``pwd``, ``grp`` (and the other POSIX-only
  modules) from a project module raises ``ModuleNotFoundError``;
- the platform seam runs its Windows implementation (``regpatch.platform.use``) over
  ``support.win32double.RecordingWin32``: the Win32 calls (Job Objects, ACLs, the console
  handler, ``msvcrt.locking``, the process API) are recorded doubles.

So a test that passes under the layer proves that its path reaches no Unix-only call.
Tests marked ``posix_only`` are skipped here (and on Windows); tests marked
``windows_api`` run only here. ``python tests/support/winapi.py ARGS`` runs the command
line under the layer (a subprocess a test can interrupt like a console's Ctrl-C).
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from typing import Any

import pytest

PROJECT = ("regpatch", "regpatch_flows", "regpatch_tasks")
POSIX_MODULES = frozenset({"fcntl", "termios", "tty", "pty", "resource", "pwd", "grp", "posix", "syslog", "crypt",
                           "spwd", "nis", "_posixsubprocess", "_posixshmem"})
POSIX_POPEN_ARGS = ("start_new_session", "preexec_fn", "process_group", "user", "group", "extra_groups", "umask",
                    "pass_fds")
O_BINARY = 1 << 29  # a bit no Linux open flag uses: set by the view, required and stripped by its open()
ALLOWED_PROBES = {("os", "O_NONBLOCK")}  # getattr(os, name, default): asked on purpose, absent on Windows

_state: dict[str, Any] = {"installed": False, "refused": [], "native": None}
_refused_lock = threading.Lock()


def _is_project(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PROJECT)


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("support.winapi"):
        frame = frame.f_back
    return f"{frame.f_globals.get('__name__')}:{frame.f_lineno}" if frame is not None else "?"


def _refuse(module: str, name: str, error: type[Exception], message: str) -> Exception:
    with _refused_lock:
        _state["refused"].append((module, name, _caller(), "".join(traceback.format_stack(limit=8)[:-2])))
    return error(message)


class ApiView:
    """A module as the project sees it on Windows: ``hidden`` names are missing, ``extra`` added."""

    def __init__(self, real: Any, hidden: frozenset[str], extra: dict[str, Any]):
        self.__dict__.update(_real=real, _hidden=hidden, _extra=extra)

    def __getattr__(self, name: str) -> Any:
        if name in self._hidden:
            raise _refuse(self._real.__name__, name, AttributeError,
                          f"module {self._real.__name__!r} has no attribute {name!r} (not on Windows)")
        if name in self._extra:
            return self._extra[name]
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def __dir__(self) -> list[str]:
        return sorted((set(dir(self._real)) | set(self._extra)) - self._hidden)

    def __repr__(self) -> str:
        return f"<module {self._real.__name__!r} as on Windows>"


def _open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
    if not flags & O_BINARY:
        raise _refuse("os", "open", AssertionError,
                      f"os.open({path!r}) without O_BINARY: a text-mode descriptor on Windows")
    return os.open(path, flags & ~O_BINARY, mode, dir_fd=dir_fd)


def _fsync(fd: int) -> None:
    import fcntl  # (the test kit's own: the descriptor's access mode)

    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise _refuse("os", "fsync", PermissionError,
                      "os.fsync of a read-only descriptor: FlushFileBuffers needs write access on Windows")
    os.fsync(fd)


def _popen_guard(fn: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        posix = [k for k in POSIX_POPEN_ARGS if kwargs.get(k) not in (None, False, (), -1)]
        if posix:
            raise _refuse("subprocess", posix[0], TypeError,
                          f"subprocess.{fn.__name__}({posix[0]}=...) is POSIX-only")
        return fn(*args, **kwargs)

    guarded.__name__ = fn.__name__
    return guarded


def _views() -> dict[str, ApiView]:
    from support.apiset import unix_only  # (mypy's typeshed: read when the layer is installed)

    popen = {name: _popen_guard(getattr(subprocess, name))
             for name in ("Popen", "run", "call", "check_call", "check_output")}
    return {"os": ApiView(os, unix_only("os") | {"kill"}, {"O_BINARY": O_BINARY, "open": _open, "fsync": _fsync}),
            "signal": ApiView(signal, unix_only("signal"), {}),
            "subprocess": ApiView(subprocess, frozenset(), popen)}


def install() -> Any:
    """Install the layer in this process (once); returns the ``RecordingWin32`` double."""
    if _state["installed"]:
        return _state["native"]
    from regpatch import platform
    from regpatch.platform._windows import WindowsPlatform
    from support.win32double import RecordingWin32  # (the test kit's doubles of the Win32 calls)

    views = _views()
    real_import = builtins.__import__

    def layered_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0):
        importer = (globals or {}).get("__name__", "") if level == 0 else ""
        if importer and _is_project(importer):
            top = name.partition(".")[0]
            if top in POSIX_MODULES:
                raise _refuse(top, "import", ModuleNotFoundError, f"No module named {top!r} (not on Windows)")
            if top in views and (not fromlist or name == top):
                real_import(name, globals, locals, fromlist, level)
                return views[top]
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = layered_import
    for module in list(sys.modules.values()):  # what was imported before the layer
        if module is not None and _is_project(getattr(module, "__name__", "")):
            _rebind(module, views)
    native = RecordingWin32()
    platform.use(WindowsPlatform(native))
    _state.update(installed=True, native=native)
    return native


def _rebind(module: Any, views: dict[str, ApiView]) -> None:
    for attr, value in list(vars(module).items()):
        name = getattr(value, "__name__", None)
        if isinstance(value, type(os)) and name in views and value is sys.modules.get(name):
            setattr(module, attr, views[name])
        elif isinstance(value, type(os)) and name in POSIX_MODULES:
            raise RuntimeError(f"{module.__name__} holds the POSIX-only module {name} ({attr})")


def native() -> Any:
    return _state["native"]


def take_refusals() -> list[tuple]:
    with _refused_lock:
        out, _state["refused"] = _state["refused"], []
    return [r for r in out if (r[0], r[1]) not in ALLOWED_PROBES]


# -- pytest ---------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--windows-api", action="store_true", default=False,
                     help="run the project's code with the API set of Windows (tests/support/winapi.py)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--windows-api"):
        install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    layer = config.getoption("--windows-api")
    windows = layer or sys.platform == "win32"
    skip_posix = pytest.mark.skip(reason="POSIX only (posix_only): skipped on Windows and under --windows-api")
    skip_layer = pytest.mark.skip(reason="runs under the Windows-API layer only (pytest --windows-api)")
    for item in items:
        if windows and item.get_closest_marker("posix_only"):
            item.add_marker(skip_posix)
        if not layer and item.get_closest_marker("windows_api"):
            item.add_marker(skip_layer)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    yield
    if _state["installed"]:
        refused = take_refusals()
        if refused:
            lines = [f"{m}.{n} from {where}\n{stack}" for m, n, where, stack in refused[:5]]
            pytest.fail("the project reached a call a Windows Python refuses (Unix-only, or not allowed there) "
                        "under the Windows-API layer:\n" + "\n".join(lines), pytrace=False)


# -- the command line under the layer ---------------------------------------------------------

def main(argv: list[str]) -> int:
    """``regpatch ARGS`` under the layer; with ``REGPATCH_WINAPI_RECORD=FILE`` the recorded Win32
    calls and the refused Unix-only calls are written to FILE (JSON) at the end."""
    native = install()
    from regpatch.cli import main as regpatch_main  # (after the layer: it sees the Windows API set)

    code = 1
    try:
        code = regpatch_main(argv)
    finally:
        record = os.environ.get("REGPATCH_WINAPI_RECORD")
        if record:
            with open(record, "w") as f:
                json.dump({"calls": [[c.name, repr(c.args), repr(c.kwargs)] for c in native.calls],
                           "refused": [list(r[:3]) for r in take_refusals()], "exit": code}, f)
    return code


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the kit
    sys.exit(main(sys.argv[1:]))
