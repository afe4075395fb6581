"""The Windows-API layer itself (``pytest --windows-api``): what the project's modules see."""

from __future__ import annotations

import pytest
from support import winapi

from regpatch import hashing, platform
from regpatch.platform import _posix, children

pytestmark = pytest.mark.windows_api


def _project(code: str) -> dict:
    scope = {"__name__": "regpatch._layer_probe"}
    exec(code, scope)  # run as if it were a line of a project module
    return scope


def test_the_project_sees_the_api_set_of_windows():
    assert platform.is_windows() and not platform.has_kernel_copy()
    assert repr(hashing.os) == "<module 'os' as on Windows>"
    for name in ("pread", "preadv", "copy_file_range", "killpg", "fchmod", "getuid", "O_NOFOLLOW", "kill"):
        with pytest.raises(AttributeError, match="not on Windows"):
            getattr(hashing.os, name)
    with pytest.raises(AttributeError):
        _posix.signal.SIGKILL
    assert hashing.os.replace is not None and hashing.os.path.join("a", "b") == "a/b"  # the rest is there
    refused = winapi.take_refusals()
    assert {(m, n) for m, n, *_ in refused} >= {("os", "pread"), ("os", "kill"), ("signal", "SIGKILL")}


def test_posix_only_modules_cannot_be_imported_by_the_project():
    for module in ("fcntl", "termios", "resource", "pwd", "grp"):
        with pytest.raises(ModuleNotFoundError, match=module):
            _project(f"import {module}")
    with pytest.raises(ModuleNotFoundError):
        _project("from fcntl import flock")
    _project("import json, os.path, signal")  # everything else imports
    assert len(winapi.take_refusals()) == 6


def test_a_text_mode_descriptor_or_a_posix_process_argument_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="without O_BINARY"):
        _project(f"import os\nos.open({str(tmp_path / 'f')!r}, os.O_RDWR | os.O_CREAT)")
    scope = _project(f"import os\nfd = os.open({str(tmp_path / 'g')!r}, os.O_RDWR | os.O_CREAT | os.O_BINARY)\n"
                     "os.close(fd)")
    assert "fd" in scope and (tmp_path / "g").exists()
    with pytest.raises(TypeError, match="start_new_session"):
        _project("import subprocess\nsubprocess.Popen(['true'], start_new_session=True)")
    assert [(m, n) for m, n, *_ in winapi.take_refusals()] == [("os", "open"), ("subprocess", "start_new_session")]


def test_children_go_through_the_recorded_job_objects():
    before = len(winapi.native().calls)
    assert children.run(["true"]).returncode == 0
    names = [c.name for c in winapi.native().calls[before:]]
    assert names[:4] == ["create_job", "popen", "assign_to_job", "resume"] and "close_handle" in names
