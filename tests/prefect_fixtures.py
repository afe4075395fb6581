"""Prefect for tests: the real engine on a temporary local API (prefect_test_harness)."""

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
