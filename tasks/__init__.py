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
repeated by every run it passes through. An error is said once (``say_failure``: by
the step's task run it happened in, else by the flow, ``failure_said_once``), as one
line; what Prefect's engines would repeat of an error said is dropped ("Task run failed
with exception", "Encountered exception during execution", "Engine execution exited
with unexpected exception") or shortened ("Finished in state Failed"). A run's
``debug`` parameter (or ``REGPATCH_DEBUG=1`` / ``regpatch --debug``) keeps them all.
"""

import collections
import contextlib
import contextvars
import logging
import os
import threading
import traceback
from typing import Iterator

from regpatch.errors import Interrupted, RegpatchError
from regpatch.sanitize import redact

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


class _Remembered:
    """A bounded set of exception objects (held, so an id is not reused while remembered)."""

    def __init__(self, size: int = 64) -> None:
        self._items: "collections.OrderedDict[int, BaseException]" = collections.OrderedDict()
        self._size = size

    def __contains__(self, exc: BaseException) -> bool:
        return self._items.get(id(exc)) is exc

    def add(self, exc: BaseException) -> None:
        self._items[id(exc)] = exc
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __iter__(self) -> Iterator[BaseException]:
        return iter(list(self._items.values()))


FINISHED = "Finished in state "


class OneTraceback(logging.Filter):
    """On Prefect's run loggers: strips the traceback of a record when it adds nothing (the
    error is a RegpatchError, whose message is the whole story, or the same exception
    object was already logged with its traceback by the run it came from), and drops what
    would repeat an error already said (``said``): a record carrying that exception, and the
    error's text in a "Finished in state Failed(...)" line (the state's name stays)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = _Remembered()
        self._said = _Remembered()
        self._lock = threading.Lock()

    def said(self, exc: BaseException) -> None:
        with self._lock:
            self._said.add(exc)

    def is_said(self, exc: BaseException) -> bool:
        with self._lock:
            return exc in self._said

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is None:  # logged "with" an exception outside of one
            record.exc_info = None  # no "NoneType: None" line
        if debugging():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        with self._lock:
            if exc is not None and exc in self._said:
                return False  # said once already, by the step or the flow it happened in
            if exc is None:
                self._shorten(record)
                return True
            keep = not isinstance(exc, RegpatchError) and exc not in self._seen
            if keep:
                self._seen.add(exc)
        if not keep:
            record.exc_info = None
            record.exc_text = None
        return True

    def _shorten(self, record: logging.LogRecord) -> None:
        """"Finished in state Failed('Task run encountered an exception X: <the error said>')"
        becomes "Finished in state Failed"."""
        if not isinstance(record.msg, str) or not record.msg.startswith(FINISHED) or record.args:
            return
        state, sep, _ = record.msg[len(FINISHED):].partition("(")
        if sep and any(repr(str(e))[1:-1][:80] in record.msg for e in self._said):
            record.msg = FINISHED + state


ONE_TRACEBACK = OneTraceback()
# the engines' run loggers, and "prefect.engine": a worker's flow-run process, its output
ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine",
                  "prefect.engine")
said_log = logging.getLogger("regpatch.prefect")


def say_failure(error: BaseException, what: str) -> None:
    """The one line of an error in the run's logs (``what``: "verify-digests", "patch of
    servercore:ltsc2019 on site-a"): "<what> failed: <the error>", a traceback only for an
    unexpected error (or with debug). Once: an error already said is not said again, and
    Prefect's engines do not repeat it (``OneTraceback``)."""
    if not isinstance(error, Exception) or ONE_TRACEBACK.is_said(error):
        return  # a cancellation or a crash (BaseException) is Prefect's to report
    verb = "stopped" if isinstance(error, Interrupted) else "failed"
    text = str(error) if isinstance(error, RegpatchError) else f"{type(error).__name__}: {redact(str(error))}"
    if isinstance(error, RegpatchError) and not debugging():
        said_log.error("%s %s: %s", what, verb, text)
    else:  # the traceback, through the one detector too: its last line repeats the message
        trace = redact("".join(traceback.format_exception(error)).rstrip())
        said_log.error("%s %s: %s\n%s", what, verb, text, trace)
    ONE_TRACEBACK.said(error)


@contextlib.contextmanager
def failure_said_once(what: str) -> Iterator[None]:
    """Around a flow's body: the error that ends it said once (``say_failure``), unless
    the step it came from said it already."""
    try:
        yield
    except Exception as e:
        say_failure(e, what)
        raise



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
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if ONE_TRACEBACK not in logger.filters:  # first: it must see a record's exception before any
            logger.filters.insert(0, ONE_TRACEBACK)  # other filter strips it (the command line's)
