"""The maintenance flows' tasks: one registry's prune and gc here, or on its host through its
``registry-maintenance/<name>`` deployment; the fleet's status as a table artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from regpatch.errors import RegpatchError
from regpatch.fleet.inventory import RegistryEntry
from regpatch.fleet.maintenance import MaintenanceResult, failed, maintain_registry, render_markdown
from regpatch.fleet.status import RegistryStatus
from regpatch.params import MaintenanceParams, RegistryParams, RetentionParams
from regpatch_tasks.observer import artifact_key

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

MAINTENANCE_FLOW_NAME = "registry-maintenance"


@task(name="maintain-registry", cache_policy=NO_CACHE, persist_result=False)
def maintain_here(name: str, registry: RegistryParams, retention: RetentionParams, maintenance: MaintenanceParams,
                  apply: bool) -> MaintenanceResult:
    """Prune then collect one registry on this host; an engine error becomes the result's error
    (the flow decides what fails)."""
    try:
        result, _, _ = maintain_registry(registry, retention, maintenance, apply=apply)
    except RegpatchError as e:
        return failed(name, e)
    result.registry = name
    return result


def maintain_remote(entry: RegistryEntry, retention: RetentionParams, maintenance: MaintenanceParams, apply: bool,
                    timeout: Optional[float]) -> MaintenanceResult:
    """The registry's own ``registry-maintenance/<name>`` deployment on its work pool (the host that
    owns its disk); its artifact holds the details."""
    deployment = f"{MAINTENANCE_FLOW_NAME}/{entry.name}"
    try:
        # typed FlowRun | Coroutine by Prefect's async_dispatch: called from sync code, it returns the FlowRun
        fr: FlowRun = run_deployment(  # type: ignore[assignment]
            deployment, parameters={"retention": retention.model_dump(), "maintenance": maintenance.model_dump(),
                                    "apply": apply},
            timeout=timeout, poll_interval=1, flow_run_name=f"maintenance-{entry.name}")
    except Exception as e:  # noqa: BLE001 - a missing deployment is this registry's failure, not the fleet's
        return MaintenanceResult(entry.name, apply, error=f"{deployment}: {type(e).__name__}: {e} (run "
                                                          "'regpatch deployments --apply' for this inventory)")
    state = fr.state
    if state is not None and state.is_completed():
        return MaintenanceResult(entry.name, apply)
    why = (state.message if state is not None else None) or "it did not finish in time (is its worker polling?)"
    return MaintenanceResult(entry.name, apply, error=f"{deployment} run {fr.name}: {why}")


def publish_maintenance(results: list[MaintenanceResult], title: str, key: str) -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=render_markdown(results, title), description=title)


def publish_status(rows: list[RegistryStatus]) -> None:
    """The fleet's status as the table artifact ``fleet-status``."""
    table = [{"registry": r.name, "state": r.state, "repository:tag": f"{r.repository}:{r.tag}",
              "storage": r.storage_digest or "-", "API": r.served_digest or "-", "rollout": r.rollout_digest or "-",
              "verified": "-" if r.verified is None else ("yes" if r.verified else "no"),
              "last change": r.last_change or "-", "problems": "; ".join(r.problems) or "-"} for r in rows]
    create_table_artifact(key="fleet-status", table=table,
                          description=f"{sum(r.state == 'current' for r in rows)} of {len(rows)} current")
