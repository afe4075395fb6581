"""Prefect's side of regpatch: the engine's steps as task runs, artifacts, deployments.

``observer.PrefectObserver`` turns each step of ``regpatch.engine`` (fetch-bundle,
plan-patch, verify-digests, copy-blobs, write-links, restart-registry, verify-pull,
publish-tag) into a task run; ``rollout_tasks`` patches one registry of a rollout
(here or through its host's deployment); ``deploy`` writes the per-registry
deployments. Retries live in the core (tenacity around single I/O calls), not
here: no Prefect task retries are stacked on top.

Logs: the core's ``regpatch.*`` records go to the run, and a failure shows at most
one traceback (``OneTraceback``): none for a ``RegpatchError``, whose one-line
message says what failed and what to do, and one for anything unexpected, not
repeated by every run it passes through. A run's ``debug`` parameter (or
``REGPATCH_DEBUG=1`` / ``regpatch --debug``) keeps them all.
"""

import collections
import contextlib
import contextvars
import logging
import os
import threading

from regpatch.errors import RegpatchError

DEBUG = contextvars.ContextVar("regpatch_debug", default=False)


def debugging() -> bool:
    return DEBUG.get() or os.environ.get("REGPATCH_DEBUG", "").lower() in ("1", "true", "yes") \
        or os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() == "DEBUG"


@contextlib.contextmanager
def debug_logs(debug: bool):
    """Within the block (a run with ``debug=True``): debug lines and every traceback."""
    if not debug:
        yield
        return
    token = DEBUG.set(True)
    core = logging.getLogger("regpatch")
    level = core.level
    core.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        core.setLevel(level)
        DEBUG.reset(token)


class OneTraceback(logging.Filter):
    """Strips the traceback of a record when it adds nothing: the error is a
    RegpatchError (its message is the whole story), or the same exception object was
    already logged with its traceback by the run it came from."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: "collections.OrderedDict[int, BaseException]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        exc = record.exc_info[1]
        if exc is None:  # logged "with" an exception outside of one: no "NoneType: None" line
            record.exc_info = None
            return True
        if debugging():
            return True

        with self._lock:
            keep = not isinstance(exc, RegpatchError) and id(exc) not in self._seen
            if keep:
                self._seen[id(exc)] = exc  # held, so its id is not reused while remembered
                while len(self._seen) > 64:
                    self._seen.popitem(last=False)
        if not keep:
            record.exc_info = None
            record.exc_text = None
        return True


ONE_TRACEBACK = OneTraceback()


def route_core_logs() -> None:
    """Send the core's ``regpatch.*`` log records to the Prefect run, like
    PREFECT_LOGGING_EXTRA_LOGGERS=regpatch would, whatever the environment; one
    traceback at most per failure in the engines' run logs. Called at the start of
    every flow (idempotent): importing this package changes nothing.

    ``import prefect`` is lazy: Prefect configures its logging (the handlers of
    "prefect.extra" that the core's logger borrows) when ``prefect.main`` is imported.
    Without importing it here the routing would depend on which module happened to
    import it first, and the core's lines would silently stay out of the run logs."""
    import prefect.main  # noqa: F401  (for its side effect: Prefect's logging configured)

    core = logging.getLogger("regpatch")
    if core.level == logging.NOTSET or core.level > logging.INFO:
        core.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in core.handlers:
            core.addHandler(handler)
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine"):
        logger = logging.getLogger(name)
        if ONE_TRACEBACK not in logger.filters:
            logger.addFilter(ONE_TRACEBACK)
