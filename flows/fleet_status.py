"""The fleet-status flow: ``regpatch status`` of an inventory as the table artifact fleet-status;
the run fails when a registry drifts or cannot be read (so an automation can tell someone)."""

from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger

from regpatch.fleet.status import drift, render_table, status_rows
from regpatch.params import RolloutParams, form_terms
from regpatch_tasks import failure_said_once, route_core_logs
from regpatch_tasks.maintenance_tasks import publish_status
from regpatch_tasks.observer import label_run


@flow(name="fleet-status", persist_result=False)
def fleet_status(
    rollout: RolloutParams,
    repository: Optional[str] = None,
    tag: Optional[str] = None,
) -> list[dict]:
    """Is every registry of the inventory on the latest rollout's image? One row per registry: the
    digest the tag has in the storage and the one the API serves, the latest rollout's, the last
    change, verified or not. Fails when one drifts or cannot be read.

    Args:
        rollout: The inventory and which of its registries; its state folder holds the rollouts.
        repository: Optional (with tag): this repository:tag; default: every one the rollouts wrote.
        tag: Optional (with repository).
    """
    route_core_logs()
    with label_run("fleet-status", []), form_terms(("rollout",)), failure_said_once("fleet-status"):
        rows = status_rows(rollout.inventory, rollout.only, rollout.state_dir, repository or None, tag or None)
        publish_status(rows)
        get_run_logger().info("\n%s", render_table(rows))
        error = drift(rows)
        if error is not None:
            raise error
        return [r.to_dict() for r in rows]
