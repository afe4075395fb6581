"""Shared fixtures. Tests run against real things: a docker-registry process
on loopback and skopeo. Missing tools make tests fail loudly, never skip."""

from __future__ import annotations

import pytest

from regpatch.localregistry import LocalRegistry


@pytest.fixture
def registry(tmp_path):
    """A started LocalRegistry in ``tmp_path/"registry"``, stopped at teardown."""
    reg = LocalRegistry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


# regpatch's core loggers are routed to the Prefect API inside flow runs; the
# registry client is also exercised outside any flow run in these tests.
import os  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
