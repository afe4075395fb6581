"""End-to-end layer: real docker-registry processes, skopeo/podman, moto's server and one
real Prefect server for the whole session (started on first use)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_FLAGS
from support.prefect_fixtures import PrefectServer

# Nothing may start a temporary Prefect server behind the user's back, in this process
# or in a command it runs: without an API, Prefect fails instead of starting one.
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One ``prefect server start`` on 127.0.0.1 for the session, with its own PREFECT_HOME."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    try:
        yield server
    finally:
        # the last run logs still queued in this process go out while the server listens
        # (otherwise Prefect reports "Error logging to API" at exit)
        import sys
        if "prefect.logging.handlers" in sys.modules:
            sys.modules["prefect.logging.handlers"].APILogWorker.drain_all(timeout=10)
        server.stop()


@pytest.fixture(scope="session")
def prefect_api(prefect_server):
    """Flows called in this process talk to the session's server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.url, PREFECT_HOME: str(prefect_server.home)}):
        yield prefect_server


@pytest.fixture
def prefect_env(prefect_api, monkeypatch):
    """The command line sees a configured Prefect API (PREFECT_API_URL), so its runs go
    to the session's server as flow runs instead of straight to the engine."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api.url)
    monkeypatch.setenv("PREFECT_HOME", str(prefect_api.home))
    return prefect_api


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, for a module's UI tests (chromium.py)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/bootstrap.sh"
    with sync_playwright() as p:
        # Playwright gives the browser a fresh, temporary profile (user data dir)
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()
