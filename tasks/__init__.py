"""Prefect's side of regpatch: the engine's steps as task runs, artifacts, deployments.

``observer.PrefectObserver`` turns each step of ``regpatch.engine`` (fetch-bundle,
plan-patch, verify-digests, copy-blobs, write-links, restart-registry, verify-pull,
publish-tag) into a task run; ``rollout_tasks`` patches one registry of a rollout
(here or through its host's deployment). Retries live in the core (tenacity around
single I/O calls), not here: no Prefect task retries are stacked on top.
"""

import logging


def _route_core_logs() -> None:
    """Send the core's ``regpatch.*`` log records to the Prefect run, like
    PREFECT_LOGGING_EXTRA_LOGGERS=regpatch would, whatever the environment."""
    core = logging.getLogger("regpatch")
    if core.level == logging.NOTSET or core.level > logging.INFO:
        core.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in core.handlers:
            core.addHandler(handler)


import prefect  # noqa: E402,F401  (importing Prefect configures its logging first)

_route_core_logs()
