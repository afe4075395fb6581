"""The engine's steps as Prefect task runs; run names, tags, artifacts and progress.

``PrefectObserver.run`` wraps each step of ``regpatch.engine`` in a task run named
after the step: nothing is cached, no result is persisted, and a task run has no
inputs (the step is a closure), so no parameter value, secret or not, ever becomes
a task input or a cache key. Retries stay in the core (tenacity around single I/O
calls); no Prefect retries are stacked on top.

``PrefectObserver.progress`` shows long copies (staging, S3 fetches, the
verification pull) as Prefect progress artifacts of the step's task run: percent
and throughput, from the copy's first second on, updated at most once a second, and
once more, synchronously, when the copy ends or at the latest when its step ends
(``regpatch.progress.StepCopies``): 100 %, or where it stopped and why. A copy done
within its first second gets none (its time is in the step's and in the summary).
While a patch-registry run is under way its summary artifact (``RunningSummary``)
links the progress of the step that is running; the run's summary replaces it.

Every run is named for what it does (``run_name``): ``patch site-a servercore:ltsc2019``,
``rollback site-a servercore:ltsc2019``, ``history site-a``, ``rollout servercore:ltsc2019``,
``make-bundle servercore:ltsc2019``, ``maintenance site-a``; a run of a registry is tagged
``registry:<name>`` and ``repository:<name>`` (``label_run``), whoever started it:
the UI, the command line, a rollout's deployment run or a schedule (a registry a
rollout patches itself is a task run of the rollout, named the same way, untagged).
Its summary is one markdown artifact keyed ``<registry>-<repository>-<tag>``, so the
Artifacts page holds one history per registry and tag; ``history-<registry>`` shows
the registry's tag changes (``regpatch history``), refreshed by every patch and rollback.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import PREFECT_UI_URL

from regpatch.bundle.s3 import S3Options
from regpatch.engine.results import render_failure_markdown, tag_position
from regpatch.errors import Interrupted
from regpatch.fleet.rollout import tag_state
from regpatch.progress import Bar, Progress, copy_words
from regpatch.sanitize import escape_controls
from regpatch.storage.history import read_history, render_history_markdown
from regpatch_tasks import say_failure
from regpatch_tasks.s3_support import load_aws_credentials_block

T = TypeVar("T")
log = logging.getLogger("regpatch.prefect")

PROGRESS_MIN_BYTES = 1 << 20     # smaller copies get no progress artifact
PROGRESS_EVERY_SECONDS = 1.0     # at most one update a second (and one at the end)
HISTORY_ENTRIES = 100            # the newest tag changes shown in history-<registry>


class PrefectObserver:
    """Each step a task run (``steps_as_task_runs``: a patch-registry run), or, inside the
    task run of one registry of a rollout, plain calls (the engine times every step; the
    registry's summary and its last log line show them): the progress of long copies
    goes to the step's task run, or to the registry's. ``summary``: the run's summary
    while it runs, linking each step's progress as it appears."""

    def __init__(self, steps_as_task_runs: bool = True, summary: Optional["RunningSummary"] = None) -> None:
        self._progress = Progress()  # log lines for long copies, as on the command line
        ctx = FlowRunContext.get()
        self.flow_run_id: Optional[UUID] = ctx.flow_run.id if ctx and ctx.flow_run else None
        self.steps_as_task_runs = steps_as_task_runs
        self.summary = summary
        task_ctx = None if steps_as_task_runs else TaskRunContext.get()
        self._task_run_id: Optional[UUID] = task_ctx.task_run.id if task_ctx else None
        self._step = ""

    def run(self, step: str, fn: Callable[[], T]) -> T:
        self._step = step
        if not self.steps_as_task_runs:
            return fn()

        def body() -> T:
            ctx = TaskRunContext.get()
            self._task_run_id = ctx.task_run.id if ctx else None
            try:
                return fn()
            except Exception as e:
                say_failure(e, step)  # once, by the step it happened in: not again by Prefect or the flow
                raise
            finally:
                self._task_run_id = None

        return task(name=step, cache_policy=NO_CACHE, persist_result=False, retries=0)(body)()

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        """May be called, and its callback too, from the engine's worker threads: the run
        ids are the ones captured here, not read from a thread's context."""
        line = self._progress(label, total)
        if total < PROGRESS_MIN_BYTES or self.flow_run_id is None:
            return line
        step, task_run_id, summary = self._step, self._task_run_id, self.summary
        shown = (lambda artifact_id: summary.show(step, label, artifact_id, task_run_id)) if summary else None
        return _Shown(line, ProgressArtifact(label, total, self.flow_run_id, task_run_id, on_created=shown))


class _Shown:
    """A copy's progress line (``regpatch.progress``) and its Prefect artifact."""

    def __init__(self, line: Bar, artifact: "ProgressArtifact") -> None:
        self.line, self.artifact = line, artifact

    def __call__(self, n: int) -> None:
        self.line(n)
        self.artifact.advance(n)

    def end(self, error: Optional[BaseException] = None) -> None:
        self.line.end(error)
        self.artifact.end(error)


class ProgressArtifact:
    """One copy as a Prefect progress artifact. ``advance`` is thread-safe and never
    blocks a copy on the API for long: one thread posts while the others count; a
    failing API is logged once and the copy goes on without it. ``end`` (the step is
    over) waits for a post under way and writes the last words: 100 %, or where the
    copy stopped and why. ``on_created``: called with the artifact's id once it exists."""

    def __init__(self, label: str, total: int, flow_run_id: UUID, task_run_id: Optional[UUID],
                 every: float = PROGRESS_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 on_created: Optional[Callable[[UUID], None]] = None):
        self.label, self.total = label, total
        self.flow_run_id, self.task_run_id = flow_run_id, task_run_id
        self.every, self.clock = every, clock
        self.on_created = on_created
        self.start = clock()
        self.sent_at = self.start  # the first update comes a second in (a shorter copy: none at all)
        self.updates = 0
        self.artifact_id: Optional[UUID] = None
        self._done = 0
        self._count = threading.Lock()
        self._send = threading.Lock()
        self._closed = False

    def advance(self, n: int) -> None:
        with self._count:
            self._done += n
            done = self._done
        final = done >= self.total
        if not final and self.clock() - self.sent_at < self.every:
            return
        if final and self.artifact_id is None and self.clock() - self.start < self.every:
            return  # done within its first second: nothing to show
        if not self._send.acquire(blocking=final):
            return  # another thread is posting: its update is at most a second old
        try:
            now = self.clock()
            if self._closed or (not final and now - self.sent_at < self.every):
                return
            self._post(*copy_words(self.label, self.total, done, now - self.start, final=final))
            self.sent_at = now
            self._closed = self._closed or final
        finally:
            self._send.release()

    def end(self, error: Optional[BaseException] = None) -> None:
        """The copy is over (its step ends): a shown artifact gets its last words now, after
        any post under way; one never shown stays unshown (a copy within its first second)."""
        with self._send:
            if self._closed:
                return
            self._closed = True
            if self.artifact_id is None:
                return
            with self._count:
                done = self._done
            self._post(*copy_words(self.label, self.total, done, self.clock() - self.start, final=True,
                                   error=error))

    def _post(self, pct: float, description: str) -> None:
        created = False
        try:
            with get_client(sync_client=True) as client:
                if self.artifact_id is None:
                    self.artifact_id = client.create_artifact(ArtifactCreate(
                        type="progress", data=pct, description=description, flow_run_id=self.flow_run_id,
                        task_run_id=self.task_run_id)).id
                    created = True
                else:
                    client.update_artifact(self.artifact_id, ArtifactUpdate(data=pct, description=description))
            self.updates += 1
        except Exception as e:  # noqa: BLE001 - progress never fails a patch
            log.warning("progress of %s not shown in Prefect: %s", self.label, type(e).__name__)
            self._closed = True
        if created and self.on_created is not None and self.artifact_id is not None:
            self.on_created(self.artifact_id)


def ui_link(kind: str, obj_id: UUID) -> str:
    """The UI's page of an artifact or a task run (``artifacts/artifact/ID``,
    ``runs/task-run/ID``), absolute when the UI's URL is known."""
    base = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{base}/{kind}/{obj_id}"


class RunningSummary:
    """A run's summary artifact while the run is under way: created when the first long copy
    shows its progress, updated when another does (never per step: a run with no copy of
    more than a second writes nothing more), linking the progress of the step that is
    running; the run's summary, at its end, is written into the same artifact
    (``publish_summary``, ``publish_failure``), so the key's history keeps one version a run."""

    def __init__(self, registry: str, kind: str, repository: str, tag: str) -> None:
        self.key = artifact_key(registry, repository, tag)
        self.title = f"{kind.capitalize()} of `{repository}:{tag}` on `{registry}`"
        self.description = f"{registry}: {kind} {repository}:{tag}"
        ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()  # a rollout's registry: its task run
        self.flow_run_id: Optional[UUID] = ctx.flow_run.id if ctx and ctx.flow_run else None
        self.task_run_id: Optional[UUID] = task_ctx.task_run.id if task_ctx else None
        self.artifact_id: Optional[UUID] = None
        self._lock = threading.Lock()

    def markdown(self, step: str, label: str, artifact_id: UUID, task_run_id: Optional[UUID]) -> str:
        where = f" ([its task run]({ui_link('runs/task-run', task_run_id)}))" if task_run_id else ""
        return "\n".join([
            f"# Running: {self.title}", "",
            f"Step **{step}**{where} is running: [progress of {escape_controls(label)}]"
            f"({ui_link('artifacts/artifact', artifact_id)}).", "",
            "This summary is replaced by the run's own when the run ends.", ""])

    def show(self, step: str, label: str, artifact_id: UUID, task_run_id: Optional[UUID]) -> None:
        """Never fails the copy whose progress it links."""
        markdown = self.markdown(step, label, artifact_id, task_run_id)
        with self._lock:
            try:
                with get_client(sync_client=True) as client:
                    if self.artifact_id is None:
                        self.artifact_id = client.create_artifact(ArtifactCreate(
                            key=self.key, type="markdown", data=markdown, description=f"{self.description} (running)",
                            flow_run_id=self.flow_run_id, task_run_id=self.task_run_id)).id
                    else:
                        client.update_artifact(self.artifact_id, ArtifactUpdate(data=markdown))
            except Exception as e:  # noqa: BLE001 - a link never fails a patch
                log.warning("the running summary of %s was not written: %s", self.key, type(e).__name__)

    def replace(self, markdown: str, description: str) -> bool:
        """The run's summary into this artifact; False when it was never created (or this
        write failed): the caller creates the summary."""
        with self._lock:
            if self.artifact_id is None:
                return False
            try:
                with get_client(sync_client=True) as client:
                    client.update_artifact(self.artifact_id, ArtifactUpdate(data=markdown, description=description))
                return True
            except Exception as e:  # noqa: BLE001 - then a new version of the key carries it
                log.warning("the running summary of %s was not replaced: %s", self.key, type(e).__name__)
                return False


def write_summary(key: str, markdown: str, description: str, running: Optional[RunningSummary] = None) -> None:
    """The run's summary artifact: into the running summary's artifact when there is one,
    else a new version of the key."""
    if running is not None and running.key == key and running.replace(markdown, description):
        return
    create_markdown_artifact(key=key, markdown=markdown, description=description)


# --------------------------------------------------------------------------- names, tags

def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return key[:100].rstrip("-")


def run_name(action: str, registry: Optional[str] = None, repository: Optional[str] = None,
             tag: Optional[str] = None, dry_run: bool = False) -> str:
    """What a run does, to which registry and tag: ``patch site-a servercore:ltsc2019``,
    ``rollback site-a ...``, ``rollout servercore:ltsc2019``, ``history site-a``,
    ``maintenance site-a (dry run)``; a '/' of a repository shown as '-' (like %, &, <, >)."""
    ref = f"{repository}:{tag}" if repository and tag else (repository or "")
    name = " ".join(p for p in (action, registry, ref, "(dry run)" if dry_run else "") if p)
    return re.sub(r"[/%&<>]+", "-", escape_controls(name))


def run_tags(registry: str, repository: str) -> list[str]:
    return [f"registry:{registry}", f"repository:{repository}"]


@contextlib.contextmanager
def label_run(name: Optional[str], tags: list[str]) -> Iterator[None]:
    """Name and tag the current flow run. Its task runs get no tags: in Prefect 3 a task
    run with tags first asks the API for their concurrency slots (a request that reads,
    then writes: one per task run, and on SQLite the one that meets 'database is
    locked'); a task run is found through its flow run, and by its name."""
    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run:
        fr = ctx.flow_run
        wanted = sorted(set(fr.tags or []) | set(tags))
        try:
            if fr.name != name or sorted(fr.tags or []) != wanted:  # a run created named and tagged: no call
                with get_client(sync_client=True) as client:
                    client.update_flow_run(fr.id, name=name, tags=wanted)
        except Exception as e:  # noqa: BLE001 - a label never fails a patch
            log.warning("could not name the flow run %s: %s", fr.id, type(e).__name__)
    yield


def label_registry_run(action: str, registry: str, repository: str, tag: str):
    """``<action> <registry> <repository>:<tag>``, tagged ``registry:<registry>``, ``repository:<repository>``."""
    return label_run(run_name(action, registry, repository, tag), run_tags(registry, repository))


# --------------------------------------------------------------------------- artifacts

def summary_markdown(result, registry: str) -> str:
    """The engine's summary (the same markdown the state folder keeps), its title naming
    the registry."""
    text = result.markdown()
    first, sep, rest = text.partition("\n")
    return f"{first} on `{registry}`{sep}{rest}"


def publish_summary(result, registry: str, kind: str = "patch", extra: str = "",
                    running: Optional[RunningSummary] = None) -> None:
    """The run's one summary artifact, keyed ``<registry>-<repository>-<tag>`` (``extra``: markdown
    appended, e.g. the tag's recent history in a rollout)."""
    if result is None:
        return
    write_summary(artifact_key(registry, result.repository, result.tag),
                  summary_markdown(result, registry) + (f"\n{extra}" if extra else ""),
                  f"{registry}: {kind} {result.repository}:{result.tag}", running)


def recent_history(registry: str, target, repository: str, tag: str, limit: int = 5) -> str:
    """The tag's newest changes, as a section of a rollout's summary artifact; never fails the run."""
    try:
        text = history_markdown(registry, target, repository, tag, limit=limit)
    except Exception as e:  # noqa: BLE001 - an unreadable history must not fail a finished patch
        log.warning("history of %s not shown: %s", registry, e)
        return ""
    return "#" + text  # one level below the summary's title


def history_markdown(registry: str, target, repository: Optional[str] = None, tag: Optional[str] = None,
                     limit: int = HISTORY_ENTRIES) -> str:
    """``regpatch history`` of one registry as markdown, newest first."""
    entries = read_history(target.store().layout, repository, tag)
    which = f" of `{repository}{':' + tag if tag else ''}`" if repository else ""
    return render_history_markdown(entries, f"History of `{registry}`{which}", f"Registry `{target.describe()}`",
                                   limit)


def publish_history(registry: str, target, repository: Optional[str] = None, tag: Optional[str] = None) -> None:
    """Refresh the ``history-<registry>`` artifact; never fails the run."""
    try:
        markdown = history_markdown(registry, target, repository, tag)
    except Exception as e:  # noqa: BLE001 - an unreadable history must not fail a finished patch
        log.warning("history of %s not published: %s", registry, e)
        return
    key = artifact_key("history", registry, *([repository] if repository else []), *([tag] if tag else []))
    create_markdown_artifact(key=key, markdown=markdown, description=f"{registry}: tag changes (regpatch history)")


def publish_failure(registry: str, kind: str, repository: str, tag: str, error: BaseException, target=None,
                    change=None, running: Optional[RunningSummary] = None) -> None:
    """The summary of a run that failed before the engine had a result, keyed like the
    others, saying where the tag stands (read in the storage); never fails the run."""
    try:
        markdown = render_failure_markdown(kind, repository, tag, str(error), tag_position(target, repository, tag),
                                           name=registry, registry=target.describe() if target is not None else "",
                                           change=change, interrupted=isinstance(error, Interrupted))
        write_summary(artifact_key(registry, repository, tag), markdown,
                      f"{registry}: {kind} {repository}:{tag} failed", running)
    except Exception as e:  # noqa: BLE001 - the run's own error is the one to report
        log.warning("the failure summary of %s was not published: %s", registry, type(e).__name__)


def publish_patch(registry: str, target, result, error: Optional[BaseException] = None, *,
                  repository: str = "", tag: str = "", change=None, running: Optional[RunningSummary] = None) -> None:
    """What a patch run leaves in Prefect: its summary (a failure's too, however early), its
    outcome as labels, and the registry's refreshed history (a dry run changes no history)."""
    if result is None and error is not None and repository:
        publish_failure(registry, "patch", repository, tag, error, target, change, running)
    publish_summary(result, registry, running=running)
    record_outcome(result, error)
    if result is not None and not result.dry_run:
        publish_history(registry, target)


OUTCOME_LABELS = ("status", "old", "new", "bytes_copied", "tag_moved", "error", "tag")


def record_outcome(result, error: Optional[BaseException] = None) -> None:
    """The run's outcome as labels of its flow run (``regpatch.status``, ``.old``, ``.new``,
    ``.bytes_copied``, ``.tag_moved``, ``.error``, ``.tag``: where the tag stands, in words, for the
    failure notification): a rollout reads them back from a run
    on another host through the API, whatever result storage that host has. Only a run of
    a deployment gets them (a rollout's, or one from the UI, where they show): a run of
    the command line ends in the operator's terminal, and the write (a read, then a write,
    when the server is busiest: on SQLite the one that meets 'database is locked') is saved."""
    ctx = FlowRunContext.get()
    if not ctx or not ctx.flow_run or not ctx.flow_run.deployment_id or (result is None and error is None):
        return
    if error is not None:
        status = "interrupted" if getattr(result, "status", "") == "interrupted" else "failed"
    else:
        status = "dry-run" if result.dry_run else ("patched" if result.changed else "up-to-date")
    # no result: the patch failed before its plan, nothing was written
    values = dict(status=status, old=getattr(result, "old", None) or "", new=getattr(result, "new", None) or "",
                  bytes_copied=getattr(result, "bytes_copied", 0), tag_moved=bool(getattr(result, "tag_moved", False)),
                  error=str(error) if error is not None else "")
    values["tag"] = _where_the_tag_stands(status, values)
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(ctx.flow_run.id, {f"regpatch.{k}": v for k, v in values.items()})
    except Exception as e:  # noqa: BLE001 - the state still tells failed from completed
        log.warning("could not record the outcome on flow run %s: %s", ctx.flow_run.id, type(e).__name__)


def _where_the_tag_stands(status: str, values: dict) -> str:
    old, new = values["old"] or "(no tag)", values["new"]
    if status in ("failed", "interrupted"):
        return tag_state(values["tag_moved"], values["old"] or None, values["error"]) or values["error"]
    if status == "patched":
        return f"moved from {old} to {new}"
    return f"not moved: it points at {new}" if status == "up-to-date" else "not moved (a dry run)"


def s3_options_for(bundle: str, s3) -> Optional[S3Options]:
    """The core's S3Options for an s3:// bundle; a credentials block is read here, inside
    the run, so its secret never travels as a parameter."""
    if not bundle.startswith("s3://"):
        return None
    if s3.aws_credentials_block:
        credentials, region = load_aws_credentials_block(s3.aws_credentials_block)
        return s3.options(credentials=credentials, region=region)
    return s3.options()
