"""Create or update the per-registry deployments on the Prefect API (``regpatch deployments --apply``).

The specs come from ``regpatch.fleet.deployments`` (the inventory, as plain data); this
module only talks to the API: every registry's ``regpatch-registry`` block is created
or updated in place (``regpatch_tasks.registry_block``), missing work pools are created
as process pools, each deployment is created or updated in place (same flow and name:
its id, its runs and its schedules stay), one made under a registry's old bare name is
deleted once its successor exists (its runs stay), its registry the block (chosen in the
run form), with the flow's parameter schema so the run form shows every field with its
description and refuses what the schema refuses.
"""

from __future__ import annotations

from prefect.automations import AutomationCore
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker

from regpatch.errors import UsageError
from regpatch.fleet.blocks import with_block
from regpatch.fleet.deployments import HISTORY, MAINTAIN, PATCH, ROLLBACK, DeploymentSpec
from regpatch.fleet.inventory import RegistryEntry
from regpatch.fleet.notify import AUTOMATION_NAME, automation_spec, block_reference
from regpatch_flows.history import registry_history
from regpatch_flows.maintenance import registry_maintenance
from regpatch_flows.patch import patch_registry
from regpatch_flows.rollback import rollback_registry
from regpatch_tasks.registry_block import block_parameter_schema, save_blocks


def _flows() -> dict:
    return {PATCH.flow: patch_registry, ROLLBACK.flow: rollback_registry, HISTORY.flow: registry_history,
            MAINTAIN.flow: registry_maintenance}


def apply(specs: list[DeploymentSpec], entries: list[RegistryEntry], *, whole: bool = True) -> list[str]:
    """Create or update the registry block of every entry, create missing work pools and
    create or update every deployment (its registry: its block); returns one line per
    change, for the operator. ``whole``: the entries are the whole inventory (a block of a
    registry that left it is reported)."""
    flows = _flows()
    schemas = {name: block_parameter_schema(parameter_schema(fn).model_dump_for_openapi())
               for name, fn in flows.items()}
    blocks, done = save_blocks(entries, whole=whole)
    with get_client(sync_client=True) as client:
        for pool in sorted({s.work_pool for s in specs}):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
                done.append(f"work pool {pool} created (type process): start its worker on the registry's host")
        existing = {(d.flow_id, d.name): d for d in client.read_deployments()}
        for s in specs:
            flow_id = client.create_flow_from_name(s.kind.flow)
            parameters = with_block(s.parameters, blocks[s.registry])
            # the server checks a created deployment's parameters without knowing block references (an
            # update's check knows them): created without its registry (no run can start without one),
            # then given its block
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=s.name, work_pool_name=s.work_pool, entrypoint=s.kind.entrypoint,
                parameters={k: v for k, v in parameters.items() if k != "registry"}, tags=s.tags,
                description=s.description, parameter_openapi_schema=schemas[s.kind.flow],
                enforce_parameter_schema=True, pull_steps=[], path=None)
            client.update_deployment(deployment_id, DeploymentUpdate(parameters=parameters))
            verb = "updated" if (flow_id, s.name) in existing else "created"
            done.append(f"deployment {s.full_name} {verb} (work pool {s.work_pool})")
            old = existing.get((flow_id, s.old_name))
            if old is not None and f"registry:{s.registry}" in (old.tags or []):  # written by an older regpatch
                client.delete_deployment(old.id)  # its runs stay, with their logs and artifacts
                done.append(f"deployment {s.kind.flow}/{s.old_name} (the old name) deleted: replaced by {s.full_name}")
    return done


def apply_notification(block: str) -> str:
    """Create or update the failure-notification automation (``regpatch.fleet.notify``),
    sending through the notification block ``TYPE/NAME``; returns a line for the operator.
    Found again by its name: a re-run updates it (a new block, new wording), never a second."""
    slug, name = block_reference(block)
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, slug, include_secrets=False)
        except ObjectNotFound:
            raise UsageError(f"--notify {block}: no block {name!r} of type {slug!r} on the Prefect API; create it "
                             "first (UI: Blocks -> +, e.g. Custom Webhook), then run this again") from None
        if "notify" not in (document.block_schema.capabilities if document.block_schema else []):
            raise UsageError(f"--notify {block}: that block cannot send notifications (its type has no 'notify')")
        automation = AutomationCore.model_validate(automation_spec(str(document.id)))
        found = client.read_automations_by_name(AUTOMATION_NAME)
        if found:
            client.update_automation(found[0].id, automation)
            for extra in found[1:]:  # made by hand or by a race: one is enough
                client.delete_automation(extra.id)
            return f"automation {AUTOMATION_NAME!r} updated: failed or crashed runs notify {block}"
        client.create_automation(automation)
    return f"automation {AUTOMATION_NAME!r} created: failed or crashed runs notify {block}"
