"""Create or update the per-registry deployments on the Prefect API (``regpatch deployments --apply``).

The specs come from ``regpatch.fleet.deployments`` (the inventory, as plain data); this
module only talks to the API: missing work pools are created as process pools,
each deployment is created or updated in place (same flow and name: its id, its
runs and its schedules stay), with the flow's parameter schema so the run form
shows every field with its description and refuses what the schema refuses.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker

from regpatch.fleet.deployments import HISTORY, MAINTAIN, PATCH, ROLLBACK, DeploymentSpec
from regpatch_flows.history import registry_history
from regpatch_flows.maintenance import registry_maintenance
from regpatch_flows.patch import patch_registry
from regpatch_flows.rollback import rollback_registry


def _flows() -> dict:
    return {PATCH.flow: patch_registry, ROLLBACK.flow: rollback_registry, HISTORY.flow: registry_history,
            MAINTAIN.flow: registry_maintenance}


def apply(specs: list[DeploymentSpec]) -> list[str]:
    """Create missing work pools and create or update every deployment; returns one
    line per change, for the operator."""
    flows = _flows()
    schemas = {name: parameter_schema(fn).model_dump_for_openapi() for name, fn in flows.items()}
    done: list[str] = []
    with get_client(sync_client=True) as client:
        for pool in sorted({s.work_pool for s in specs}):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
                done.append(f"work pool {pool} created (type process): start its worker on the registry's host")
        existing = {(d.flow_id, d.name) for d in client.read_deployments()}
        for s in specs:
            flow_id = client.create_flow_from_name(s.kind.flow)
            client.create_deployment(
                flow_id=flow_id, name=s.name, work_pool_name=s.work_pool, entrypoint=s.kind.entrypoint,
                parameters=s.parameters, tags=s.tags, description=s.description,
                parameter_openapi_schema=schemas[s.kind.flow], enforce_parameter_schema=True, pull_steps=[],
                path=None)
            verb = "updated" if (flow_id, s.name) in existing else "created"
            done.append(f"deployment {s.full_name} {verb} (work pool {s.work_pool})")
    return done
