"""The tasks of the rollout flow: find where each registry is patched, patch one registry.

Each registry of a rollout is one task run named ``patch <registry> <repository>:<tag>``
(no tags: a tagged task run first asks the API for tag concurrency slots), whose
final state is the registry's outcome: Completed when it was patched (or was up to date), Failed when
its patch failed, Cancelled ("NotRun") when an earlier wave failed, Completed
("Skipped") when it was rolled back since an earlier run of the same rollout
patched it. The task returns the outcome inside its state, so ``run_rollout`` gets
every outcome while a failed registry shows red in the run graph; one registry never
stops or harms the others.

A registry patched on this host runs the engine inside its task run: the engine's
steps are task runs nested in it (the same names and times as a ``patch-registry``
run), its summary is one artifact of that task run, and its ``history-<registry>``
is refreshed when the tag changed. That costs the API no call but the artifact (and
the history's): task runs travel as events, and no concurrency slot is taken, since
the storage's own lock (an OS file lock per repository, waited for) already keeps
two patches of one storage on one host apart. A registry with a ``work_pool`` is
patched by its ``patch-registry`` deployment on that pool's worker (the host that
owns the disk); the rollout holds the Prefect global concurrency limits
``regpatch-registry-<name>`` (1 slot) of a wave's such registries for the whole
wave, taken and released in one request each, so two rollouts never hand the same
registry to workers at once.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypedDict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    ArtifactCreate,
    ArtifactUpdate,
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Completed, Failed, State

from regpatch.bundle.s3 import S3Options
from regpatch.errors import UsageError
from regpatch.fleet.blocks import select_groups
from regpatch.fleet.deployments import PATCH
from regpatch.fleet.inventory import Inventory, RegistryEntry, load_inventory, require_inventory
from regpatch.fleet.prefect_server import SQLITE_MAX_PARALLEL, check_parallel, server_database
from regpatch.fleet.rollout import (
    DRY_RUN,
    FAILED,
    NOT_RUN,
    PATCHED,
    SKIPPED,
    UP_TO_DATE,
    PatchOne,
    RegistryOutcome,
    patch_here,
    render_markdown,
    tag_state,
)
from regpatch.params import ChangeParams, RolloutParams, S3Params, VerifyParams
from regpatch_tasks.observer import (
    PrefectObserver,
    RunningSummary,
    artifact_key,
    publish_summary,
    recent_history,
    run_name,
    run_tags,
)
from regpatch_tasks.registry_block import read_blocks

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

PATCH_FLOW_NAME = PATCH.flow


class _TaskOptions(TypedDict):
    cache_policy: CachePolicy
    persist_result: bool


_opts = _TaskOptions(cache_policy=NO_CACHE, persist_result=False)


def registry_lock_name(name: str) -> str:
    """The global concurrency limit (1 slot) that guards one registry."""
    return "regpatch-registry-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())


@task(name="find-patch-deployments", **_opts)
def find_patch_deployments(entries: list[RegistryEntry]) -> dict[str, str]:
    """For every registry with a work pool, the ``patch-registry`` deployment that patches
    it: ``patch-<name>`` (``regpatch deployments``), else one named after the registry (as
    an older regpatch named them), else one named after its pool, else one named
    ``patch-registry``, else the only one on its pool. Raises UsageError (before anything
    is touched) naming what is missing."""
    found: dict[str, str] = {}
    problems = []
    pooled = [e for e in entries if e.work_pool]
    with get_client(sync_client=True) as client:
        deps = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[PATCH_FLOW_NAME])))
    by_pool: dict[str, list[str]] = {}
    for d in deps:
        by_pool.setdefault(d.work_pool_name or "", []).append(d.name)
    for e in pooled:
        assert e.work_pool is not None  # pooled: the entries with a work pool
        names = sorted(by_pool.get(e.work_pool, []))
        pick = next((n for n in (PATCH.deployment_name(e.name), e.name, e.work_pool, PATCH_FLOW_NAME)
                     if n in names), None)
        if pick is None and len(names) == 1:
            pick = names[0]
        if pick is None:
            problems.append(f"registry {e.name!r}: work pool {e.work_pool!r} has no {PATCH_FLOW_NAME} deployment"
                            if not names else
                            f"registry {e.name!r}: work pool {e.work_pool!r} has several {PATCH_FLOW_NAME} "
                            f"deployments ({', '.join(names)}) and none named "
                            f"{PATCH.deployment_name(e.name)!r}")
            continue
        found[e.name] = f"{PATCH_FLOW_NAME}/{pick}"
    if problems:
        raise UsageError("; ".join(problems) + "; create them with: regpatch deployments --inventory FILE --apply")
    if found:
        get_run_logger().info("patch deployments: %s", ", ".join(f"{n} -> {d}" for n, d in found.items()))
    return found


def read_registries(params: RolloutParams) -> list[RegistryEntry]:
    """The registries of a rollout (or a maintenance): the inventory's selected entries, or
    those of the regpatch-registry blocks of the groups given (``only`` among them)."""
    if params.registry_blocks:
        entries = select_groups(read_blocks().registries, params.registry_blocks)
        get_run_logger().info("registry blocks of %s: %s", ", ".join(params.registry_blocks),
                              ", ".join(e.name for e in entries))
        return Inventory(registries=entries).select(params.only)
    return read_inventory(params.inventory or "", params.only)


def read_inventory(path: str, only: Optional[list[str]]) -> list[RegistryEntry]:
    """The selected entries of the inventory; a missing file says what to set (the shipped
    deployments name /etc/regpatch/inventory.yml)."""
    require_inventory(path)
    return load_inventory(path).select(only)


def _parameters(entry: RegistryEntry, *, bundle: str, repository: str, tag: str, image: Optional[str],
                verify_command: Optional[str], dry_run: bool, s3: S3Params,
                change: ChangeParams) -> dict[str, Any]:
    """patch-registry's parameters for one registry (JSON, as a deployment run takes them)."""
    registry = entry.registry_params().model_dump(exclude_none=True)  # the form's schema has no nulls there
    registry["name"] = entry.name
    return dict(bundle=bundle, repository=repository, tag=tag, registry=registry,
                verify=VerifyParams(command=entry.verify_command or verify_command).model_dump(),
                s3=s3.model_dump(), image=image, dry_run=dry_run, trust=entry.trust_params().model_dump(),
                change=change.model_dump())


def outcome_from_labels(entry: RegistryEntry, labels: dict, state_name: Optional[str], state_message: Optional[str],
                        completed: bool, dry_run: bool, run: str) -> RegistryOutcome:
    """A registry's outcome from the labels its patch-registry run set (``record_outcome``)."""
    get = lambda key: labels.get(f"regpatch.{key}")  # noqa: E731
    outcome = RegistryOutcome(entry.name, entry.wave, entry.where, FAILED)
    if completed:
        status = get("status")
        outcome.status = status if status in (PATCHED, UP_TO_DATE, DRY_RUN) else (DRY_RUN if dry_run else PATCHED)
        outcome.old, outcome.new = get("old") or None, get("new") or None
        if isinstance(get("bytes_copied"), int):
            outcome.bytes_copied = get("bytes_copied")
        return outcome
    error = get("error") or f"{state_name}: {state_message or 'no message'}"
    where = tag_state(bool(get("tag_moved")), get("old") or None, error)
    if get("status") in ("failed", "interrupted") and not dry_run and where:
        error += "; " + where
    outcome.error = f"{error} (flow run {run})"
    return outcome


def _run_remote(entry: RegistryEntry, deployment: str, params: dict, timeout: Optional[float]) -> RegistryOutcome:
    outcome = RegistryOutcome(entry.name, entry.wave, entry.where, FAILED)
    # typed FlowRun | Coroutine by Prefect's async_dispatch: called from sync code, it returns the FlowRun
    fr: FlowRun = run_deployment(deployment, parameters=params, timeout=timeout,  # type: ignore[assignment]
                                 poll_interval=1,
                                 flow_run_name=run_name("patch", entry.name, params["repository"], params["tag"]),
                                 tags=run_tags(entry.name, params["repository"]))
    outcome.flow_run = str(fr.id)
    state = fr.state
    if state is None or not state.is_final():
        outcome.error = (f"the {deployment} run {fr.name} did not finish within {timeout:g} s "
                         f"(is a worker polling work pool {entry.work_pool!r}?); it was cancelled")
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(fr.id, Cancelled(message="rollout gave up waiting"), force=True)
        except Exception:  # noqa: BLE001 - best effort
            pass
        return outcome
    with get_client(sync_client=True) as client:
        labels = dict(client.read_flow_run(fr.id).labels or {})
    found = outcome_from_labels(entry, labels, state.name, state.message, state.is_completed(),
                                params["dry_run"], fr.name)
    found.flow_run = outcome.flow_run
    return found


def patcher(*, bundle: str, repository: str, tag: str, image: Optional[str], verify_command: Optional[str],
            dry_run: bool, s3: S3Params, s3_options: Optional[S3Options], deployments: dict[str, str],
            timeout: Optional[float], change: ChangeParams) -> PatchOne:
    """``patch_one`` for ``regpatch.fleet.rollout.run_rollout``: one task run per registry,
    ending in the registry's outcome. ``s3`` is what a worker's run is given, ``s3_options``
    what the engine here uses (``s3_options_for``, read once per rollout)."""

    @task(name="patch-registry", **_opts)
    def patch_one_task(entry: RegistryEntry) -> State:
        if entry.work_pool:
            deployment = deployments.get(entry.name)
            if not deployment:
                raise UsageError(f"no patch-registry deployment for registry {entry.name!r}")
            get_run_logger().info("%s: running %s on work pool %s", entry.name, deployment, entry.work_pool)
            params = _parameters(entry, bundle=bundle, repository=repository, tag=tag, image=image,
                                 verify_command=verify_command, dry_run=dry_run, s3=s3, change=change)
            return outcome_state(_run_remote(entry, deployment, params, timeout))
        # no write more per registry unless a copy lasts over a second: then its progress, linked by the summary
        running = RunningSummary(entry.name, "patch", repository, tag)
        done = patch_here(entry, bundle=bundle, repository=repository, tag=tag, image=image,
                          verify_command=verify_command, dry_run=dry_run, s3=s3_options,
                          observer=PrefectObserver(steps_as_task_runs=False, summary=running), change=change)
        if done.result is not None and done.result.seconds:
            get_run_logger().info("%s: steps %s", entry.name, ", ".join(
                f"{step} {secs:.2f} s" for step, secs in done.result.seconds.items()))
        # one artifact write per registry: the tag's recent history goes into the summary when the tag
        # changed (or a failure may have put it back); history-<registry> is the registry-history
        # flow's and the registry's own patch runs'
        changed = done.result is not None and done.target is not None and not done.result.dry_run \
            and done.outcome.status != UP_TO_DATE
        publish_summary(done.result, entry.name,
                        extra=recent_history(entry.name, done.target, repository, tag) if changed else "",
                        running=running)
        return outcome_state(done.outcome)

    def patch_one(entry: RegistryEntry) -> RegistryOutcome:
        state = patch_one_task.with_options(task_run_name=run_name("patch", entry.name, repository, tag))(
            entry, return_state=True)
        value = state.result(raise_on_failure=False)
        if isinstance(value, RegistryOutcome):
            return value
        raise value if isinstance(value, BaseException) else RuntimeError(state.message or state.name)

    return patch_one


@contextlib.contextmanager
def wave_slots(entries: list[RegistryEntry]) -> Iterator[None]:
    """For ``run_rollout``'s ``around_wave``: hold the global concurrency limit of every
    registry of the wave that a worker patches, in one request (created with 1 slot when
    missing), until the wave ends. Registries patched here need none (their storage's lock)."""
    names = [registry_lock_name(e.name) for e in entries if e.work_pool]
    if not names:
        yield
        return
    ensure_limits(names)
    with concurrency(names, occupy=1, strict=True):
        yield


def ensure_limits(names: list[str], page: int = 200) -> None:
    """Each named global concurrency limit exists with 1 slot: one read of the limits (a page
    per ``page`` limits), a write only for those missing or changed."""
    with get_client(sync_client=True) as client:
        found: dict[str, int] = {}
        offset = 0
        while True:
            limits = client.read_global_concurrency_limits(limit=page, offset=offset)
            found.update({lim.name: lim.limit for lim in limits})
            if len(limits) < page:
                break
            offset += page
        for name in dict.fromkeys(names):
            if name not in found:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            elif found[name] != 1:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1))


def check_server(max_parallel: int) -> None:
    """More than ``SQLITE_MAX_PARALLEL`` registries at once only on a server on PostgreSQL
    (``regpatch.fleet.prefect_server``): refused before anything is read or touched."""
    if max_parallel <= SQLITE_MAX_PARALLEL:
        return
    with get_client(sync_client=True) as client:
        # the server's settings and block schemas, as it answers them (no client method returns the raw JSON)
        settings = client.request("GET", "/admin/settings").json()
        driver = settings.get("server", {}).get("database", {}).get("driver")
        schemas = [] if driver else client.request("POST", "/block_schemas/filter", json={"limit": 10}).json()
    check_parallel(max_parallel, server_database(settings, schemas))


def outcome_state(outcome: RegistryOutcome) -> State:
    """The task run's final state for a registry's outcome, carrying the outcome."""
    if outcome.failed:
        return Failed(message=outcome.error, data=outcome)
    if outcome.status == NOT_RUN:
        return Cancelled(name="NotRun", message=outcome.note, data=outcome)
    if outcome.status == SKIPPED:
        return Completed(name="Skipped", message=outcome.note, data=outcome)
    return Completed(message=f"{outcome.status}: {outcome.old or '(new tag)'} -> {outcome.new}", data=outcome)


def show_unrun(outcomes: list[RegistryOutcome], repository: str, tag: str) -> None:
    """A task run for each registry the rollout did not patch (skipped: rolled back since;
    not run: an earlier wave failed), so every registry has its node in the graph."""

    for o in outcomes:
        if o.status in (NOT_RUN, SKIPPED):
            # no inputs: the outcome is a closure, so the graph draws no dependency
            unrun = task(name="patch-registry", **_opts)(_not_patched(o))
            unrun.with_options(task_run_name=run_name("patch", o.name, repository, tag))(return_state=True)


def _not_patched(outcome: RegistryOutcome) -> Callable[[], State]:
    """A task body with no parameters (so no inputs, no drawn dependency) whose state,
    made when it runs, is the outcome's."""
    def not_patched() -> State:
        return outcome_state(outcome)
    return not_patched


def publish_rollout(outcomes: list[RegistryOutcome], title: str, repository: str, tag: str,
                    change: Optional[ChangeParams] = None, error: Optional[str] = None,
                    image: Optional[str] = None) -> None:
    """One markdown artifact keyed ``rollout-<repository>-<tag>``: who asked and why, the
    table, then every error in full with where the tag stands (``error``: the rollout's own,
    when it stopped before any registry)."""
    create_markdown_artifact(key=artifact_key("rollout", repository, tag),
                             markdown=render_markdown(outcomes, title, change, error, image), description=title)


class RegistriesProgress:
    """The rollout's own progress artifact: "n of N registries done" while it runs (at most one
    update a second), and at the end 100 % with the outcomes counted, failed or not. Never
    fails the rollout: an API error is logged once and the artifact is left as it was."""

    def __init__(self, total: int, every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.every, self.clock = total, every, clock
        self.done = 0
        self.sent_at = 0.0
        self.artifact_id: Optional[Any] = None
        self.failed = False
        self._lock = threading.Lock()
        self._post(0.0, f"0 of {total} registries done")

    def wrap(self, patch_one: PatchOne) -> PatchOne:
        def counted(entry: RegistryEntry) -> RegistryOutcome:
            try:
                return patch_one(entry)
            finally:
                self.advance()
        return counted

    def advance(self) -> None:
        with self._lock:
            self.done += 1
            if self.clock() - self.sent_at < self.every:
                return
            self._post(100.0 * self.done / max(self.total, 1), f"{self.done} of {self.total} registries done")

    def finish(self, outcomes: list[RegistryOutcome]) -> None:
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        told = ", ".join(f"{n} {status}" for status, n in counts.items())
        with self._lock:
            self._post(100.0, f"{len(outcomes)} of {self.total} registries done: {told}")

    def _post(self, pct: float, description: str) -> None:
        if self.failed:
            return
        try:
            with get_client(sync_client=True) as client:
                if self.artifact_id is None:
                    ctx = FlowRunContext.get()
                    self.artifact_id = client.create_artifact(ArtifactCreate(
                        type="progress", data=pct, description=description,
                        flow_run_id=ctx.flow_run.id if ctx and ctx.flow_run else None)).id
                else:
                    client.update_artifact(self.artifact_id, ArtifactUpdate(data=pct, description=description))
            self.sent_at = self.clock()
        except Exception as e:  # noqa: BLE001 - progress never fails a rollout
            get_run_logger().warning("the rollout's progress is not shown in Prefect: %s", type(e).__name__)
            self.failed = True
