"""The maintenance flows' tasks: one registry's prune and gc here, or on its host through its
``registry-maintenance/maintenance-<name>`` deployment; the fleet's status as a table artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from regpatch.errors import RegpatchError
from regpatch.fleet.deployments import MAINTAIN
from regpatch.fleet.inventory import RegistryEntry
from regpatch.fleet.maintenance import MaintenanceResult, failed, maintain_registry, render_markdown
from regpatch.fleet.status import RegistryStatus
from regpatch.fleet.status import render_markdown as render_status
from regpatch.params import ChangeParams, MaintenanceParams, RegistryParams, RetentionParams
from regpatch_tasks.observer import artifact_key, run_name

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


@task(name="maintain-registry", cache_policy=NO_CACHE, persist_result=False)
def maintain_here(name: str, registry: RegistryParams, retention: RetentionParams, maintenance: MaintenanceParams,
                  change: ChangeParams, apply: bool) -> MaintenanceResult:
    """Prune then collect one registry on this host; an engine error becomes the result's error
    (the flow decides what fails)."""
    try:
        result, _, _ = maintain_registry(registry, retention, maintenance, change, apply=apply)
    except RegpatchError as e:
        return failed(name, e)
    result.registry = name
    return result


def maintain_remote(entry: RegistryEntry, retention: RetentionParams, maintenance: MaintenanceParams,
                    change: ChangeParams, apply: bool, timeout: Optional[float]) -> MaintenanceResult:
    """The registry's own ``registry-maintenance/maintenance-<name>`` deployment on its work pool (the host that
    owns its disk); its artifact holds the details."""
    deployment = MAINTAIN.full_name(entry.name)
    try:
        # typed FlowRun | Coroutine by Prefect's async_dispatch: called from sync code, it returns the FlowRun
        fr: FlowRun = run_deployment(  # type: ignore[assignment]
            deployment, parameters={"retention": retention.model_dump(), "maintenance": maintenance.model_dump(),
                                    "change": change.model_dump(), "apply": apply},
            timeout=timeout, poll_interval=1, flow_run_name=run_name("maintenance", entry.name, dry_run=not apply))
    except Exception as e:  # noqa: BLE001 - a missing deployment is this registry's failure, not the fleet's
        return MaintenanceResult(entry.name, apply, error=f"{deployment}: {type(e).__name__}: {e} (run "
                                                          "'regpatch deployments --apply' for this inventory)")
    state = fr.state
    if state is not None and state.is_completed():
        return MaintenanceResult(entry.name, apply)
    why = (state.message if state is not None else None) or "it did not finish in time (is its worker polling?)"
    return MaintenanceResult(entry.name, apply, error=f"{deployment} run {fr.name}: {why}")


def publish_maintenance(results: list[MaintenanceResult], title: str, key: str,
                        change: Optional[ChangeParams] = None) -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=render_markdown(results, title, change),
                             description=title)


def publish_status(rows: list[RegistryStatus]) -> None:
    """The fleet's status as the artifact ``fleet-status`` (``regpatch.fleet.status.render_markdown``:
    compact digests in the table, the full ones under it)."""
    current = f"{sum(r.state == 'current' for r in rows)} of {len(rows)} current"
    create_markdown_artifact(key="fleet-status", markdown=render_status(rows, f"Fleet status: {current}"),
                             description=current)
