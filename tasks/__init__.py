"""Prefect tasks: thin, typed wrappers over the regpatch core.

Each task is a verb (fetch_bundle, verify_digests, copy_blobs, write_links,
restart_registry, verify_pull) that calls one core function and logs what it
did. Retries live in the core (tenacity around single I/O calls), not here:
no Prefect task retries are stacked on top.
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
