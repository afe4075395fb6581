"""The browser of the UI tests: Debian's Chromium, driven by Playwright (the fixtures
``browser`` and ``page`` in conftest.py), and ``shot``, which writes a screenshot to
the folder $REGPATCH_SCREENSHOTS names (``docs/screenshots`` to refresh the
documentation's), else to the test's tmp folder."""

from __future__ import annotations

import os
from pathlib import Path

from prefect_cluster import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screenshots_folder(tmp: Path) -> Path:
    """$REGPATCH_SCREENSHOTS (relative: to the repository), else ``tmp/screenshots``; made."""
    shots = Path(os.environ.get("REGPATCH_SCREENSHOTS") or tmp / "screenshots")
    if not shots.is_absolute():
        shots = ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def shot(page, site, name: str, settle: int = 1500) -> Path:
    """A screenshot of ``page`` as ``site["shots"] / name``."""
    path = site["shots"] / name
    page.wait_for_timeout(settle)  # let the graph and the markdown settle
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000, f"{path} looks empty"
    return path
