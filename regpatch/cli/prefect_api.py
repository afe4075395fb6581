"""Where a run goes: the Prefect API this process would use, read without importing Prefect; the
environment Prefect is given; the one door to Prefect's side (``prefect_side``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Optional

from regpatch.errors import RegpatchError, UsageError


def _quiet_tracebacks(debug: bool) -> None:
    """Runs on a Prefect API: expected errors are one line in the run logs (Prefect logs
    a traceback per failed task and flow run otherwise); --debug keeps them."""
    if debug:
        return

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], RegpatchError):
                record.exc_info = None
                record.exc_text = None
            return True

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_Filter())


def _prepare_environment(debug: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "regpatch")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    if debug:
        os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"


def configured_prefect_api() -> Optional[str]:
    """The Prefect API this process would use, read without importing Prefect:
    ``PREFECT_API_URL``, else the active profile's (``PREFECT_PROFILE`` or the
    profiles file's ``active``). None: no API, the run goes straight to the engine."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url.strip() or None
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        import tomllib  # only when no PREFECT_API_URL is set (start-up)

        data = tomllib.loads(path.read_text())
    except (OSError, ValueError, ImportError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = (data.get("profiles") or {}).get(active) if active else None
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _check_prefect_api(url: str) -> None:
    """One request before Prefect is imported: an unreachable API fails at once."""
    import httpx  # only when a Prefect API is configured (start-up)

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5.0)
    except httpx.HTTPError as e:
        raise UsageError(f"the Prefect API at {url} does not answer ({type(e).__name__}); start the "
                         "server (prefect server start), or run without Prefect: unset PREFECT_API_URL "
                         "or pass --local") from None
    _skip_final_gc()  # this process is about to import Prefect and run a flow


def prefect_server_answers(url: str) -> Optional[tuple[dict, list]]:
    """The server's settings and a few block schemas, read without importing Prefect (what
    ``regpatch.fleet.prefect_server.server_database`` tells the database by); None when they
    cannot be read here (say an API behind other authentication): the rollout flow asks
    again, with Prefect's client."""
    import base64  # only before a rollout of more than 4 at once (start-up)

    import httpx  # (ditto)

    headers = {}
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=10.0) as client:
            settings = client.get("/admin/settings").raise_for_status().json()
            database = settings.get("server", {}).get("database", {}) if isinstance(settings, dict) else {}
            if isinstance(database, dict) and database.get("driver"):
                return settings, []
            return settings, client.post("/block_schemas/filter", json={"limit": 10}).raise_for_status().json()
    except (httpx.HTTPError, ValueError):
        return None


_FINAL_GC_SKIPPED = False


def _skip_final_gc() -> None:
    """At the very end of a process that imported Prefect and ran a flow, the interpreter's
    last garbage collection walks a heap of a few hundred thousand objects: about 0.5 s
    after everything is done (bench/startup.py). Freezing the heap in an exit handler
    skips that walk and nothing else: every exit handler still runs (Prefect's, which
    drain its log and event workers, are registered later and run before this one)."""
    global _FINAL_GC_SKIPPED
    if not _FINAL_GC_SKIPPED:
        import atexit  # once, by the process that runs a flow
        import gc  # (ditto)

        atexit.register(gc.freeze)
        _FINAL_GC_SKIPPED = True


def _use_prefect(args: argparse.Namespace) -> Optional[str]:
    if getattr(args, "local", False):
        return None
    return configured_prefect_api()


# The one door to Prefect's side (flows/entry.py, installed as regpatch_flows.entry): found
# by name, so that nothing of the core imports flows or tasks, and Prefect is imported only
# once every argument, the storage and the plan have been checked.
PREFECT_SIDE = "regpatch_flows.entry"


def prefect_side() -> ModuleType:
    """The flows and the few task helpers the command line runs on a Prefect API."""
    return importlib.import_module(PREFECT_SIDE)
