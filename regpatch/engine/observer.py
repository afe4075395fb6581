"""What a caller sees of a run: ``Observer`` (each step, progress of long copies); ``LogObserver`` for the
command line; the flows' observer makes each step a Prefect task run."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Protocol, TypeVar

from regpatch import interrupt
from regpatch.progress import Progress, StepCopies

log = logging.getLogger("regpatch.engine")


T = TypeVar("T")


ProgressFactory = Callable[[str, int], Callable[[int], None]]


class Observer(Protocol):
    """What a caller sees of a run. ``run`` must call ``fn`` exactly once and return
    its result (or raise what it raised); it may wrap it (a Prefect task run)."""

    def run(self, step: str, fn: Callable[[], T]) -> T: ...

    def progress(self, label: str, total: int) -> Callable[[int], None]: ...


class LogObserver:
    """Steps as log lines; progress as a bar on a terminal, else periodic log lines."""

    def __init__(self, progress: Optional[ProgressFactory] = None):
        self._progress = progress or Progress()

    def run(self, step: str, fn: Callable[[], T]) -> T:
        t0 = time.monotonic()
        result = fn()
        log.debug("step %s done in %.2fs", step, time.monotonic() - t0)
        return result

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        return self._progress(label, total)


class _Steps:
    """Runs the steps of one run through the observer, timing each, checking for a
    stop request between steps. ``progress`` is the steps' progress factory: every copy a
    step opened is ended inside the step (inside its task run, under Prefect), at 100 % or
    where it stopped and why, before the step is over."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self.seconds: dict[str, float] = {}
        self.progress = StepCopies(observer.progress)

    def __call__(self, step: str, fn: Callable[[], T]) -> T:
        interrupt.check()
        t0 = time.monotonic()

        def body() -> T:
            try:
                result = fn()
            except BaseException as e:
                self.progress.end(e)
                raise
            self.progress.end()
            return result

        try:
            return self.observer.run(step, body)
        finally:
            self.seconds[step] = round(time.monotonic() - t0, 3)

