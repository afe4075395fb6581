"""Shared fixtures. Tests run against real things: a docker-registry process
on loopback and skopeo. Missing tools make tests fail loudly, never skip."""

from __future__ import annotations

import pytest

# the Windows-API layer (pytest --windows-api) and the posix_only / windows_api markers
from support.winapi import (  # noqa: F401
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_call,
)

from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry


@pytest.fixture
def registry(tmp_path):
    """A started LocalRegistry in ``tmp_path/"registry"``, stopped at teardown."""
    reg = LocalRegistry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def scenario(tmp_path, registry):
    """The seed's story: old servercore:ltsc2019 pushed to ``registry``, and its patch
    (``scenario_servercore``'s keys: old, new, staged, old_layout, new_layout, ...)."""
    s = scenario_servercore(tmp_path / "sample", base_size=1 << 20, delta_size=256 << 10)
    push_with_skopeo(s["old_layout"], s["ref"], registry.host, s["repository"], s["tag"])
    return s


# regpatch's core loggers are routed to the Prefect API inside flow runs; the
# registry client is also exercised outside any flow run in these tests.
import os  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
