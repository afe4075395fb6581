"""The maintenance flows: ``registry-maintenance`` (one registry: prune, then the registry's own
garbage collection in a maintenance window, ``regpatch.fleet.maintenance``) and ``maintenance``
(every registry of an inventory, in waves like a rollout; a registry with a work pool through its
``registry-maintenance/maintenance-<name>`` deployment on that pool). Dry runs unless ``apply``."""

from __future__ import annotations

from prefect import flow, get_run_logger

from regpatch.errors import RegpatchError
from regpatch.fleet.inventory import Inventory, refuse_stored_credentials
from regpatch.fleet.rollout import check_change_for_workers
from regpatch.params import ChangeParams, MaintenanceParams, RegistryParams, RetentionParams, RolloutParams, form_terms
from regpatch_tasks import failure_said_once, route_core_logs
from regpatch_tasks.maintenance_tasks import maintain_here, maintain_remote, publish_maintenance
from regpatch_tasks.observer import label_run, run_name
from regpatch_tasks.registry_block import chosen
from regpatch_tasks.rollout_tasks import read_registries


class MaintenanceFailed(RegpatchError):
    """A registry's maintenance failed; later waves did not run."""


@flow(name="registry-maintenance", persist_result=False)
def registry_maintenance(
    registry: RegistryParams,
    change: ChangeParams,
    retention: RetentionParams = RetentionParams(),
    maintenance: MaintenanceParams = MaintenanceParams(),
    apply: bool = False,
) -> dict:
    """Prune one registry (retention), then run its own garbage collection in a maintenance window:
    stopped through its restart strategy, collected, started, every kept image pulled. A dry run
    unless apply. The artifact maintenance-REGISTRY says what was unlinked, freed and proven.

    Args:
        registry: The registry (a per-registry deployment has its block chosen); its restart must be
            process: or service: for apply.
        change: Who asked for the maintenance and why (a change ticket): recorded in each pruned
            image's history line, the gc's journal and the artifact.
        retention: What is kept: the K previous images of every tag, images younger than D days.
        maintenance: The registry's binary, for its garbage-collect.
        apply: Unlink, stop, collect, start, prove (default: dry runs of both, nothing written).
    """
    route_core_logs()
    name = registry.label()  # (a block is a registry too: its name, before it is checked)
    with label_run(run_name("maintenance", name, dry_run=not apply), [f"registry:{name}"]), \
            form_terms(("registry", "change", "retention", "maintenance")), failure_said_once(f"maintenance of {name}"):
        registry = chosen(registry)[0]
        result = maintain_here(name, registry, retention, maintenance, change, apply)
        publish_maintenance([result], f"Maintenance of {name}{'' if apply else ' (dry run)'}", f"maintenance-{name}",
                            change)
        if result.error:
            raise MaintenanceFailed(f"{name}: {result.error}")
        return {"registry": name, "pruned": len(result.pruned), "freed_bytes": result.freed_bytes,
                "proven": len(result.proven)}


@flow(name="maintenance", persist_result=False)
def maintenance(
    rollout: RolloutParams,
    change: ChangeParams,
    retention: RetentionParams = RetentionParams(),
    maintenance: MaintenanceParams = MaintenanceParams(),
    apply: bool = False,
) -> list[dict]:
    """Prune and garbage-collect every registry of the inventory (or those in rollout.only), one
    after the other, wave by wave: a failure stops the later waves. Dry runs unless apply.

    Args:
        rollout: The inventory and which of its registries (max_parallel is not used: one at a time).
        change: Who asked for the maintenance and why (a change ticket): recorded in every
            registry (pruned images' history lines, the gc's journal) and given to every registry's run.
        retention: What is kept in every registry.
        maintenance: The registries' binary, for their garbage-collect (an entry's host may differ).
        apply: Unlink, stop, collect, start, prove (default: dry runs, nothing written).
    """
    route_core_logs()
    with label_run(run_name("maintenance", dry_run=not apply), []), \
            form_terms(("rollout", "change", "retention", "maintenance")), failure_said_once("maintenance"):
        entries = read_registries(rollout)
        refuse_stored_credentials(entries)
        check_change_for_workers(change, entries, "maintained through their registry-maintenance deployments")
        results = []
        log = get_run_logger()
        for wave, members in Inventory.waves(entries):
            for entry in members:
                if entry.work_pool:
                    result = maintain_remote(entry, retention, maintenance, change, apply, rollout.patch_timeout)
                else:
                    result = maintain_here(entry.name, entry.registry_params(), retention, maintenance, change,
                                           apply)
                log.info("%s (wave %s): %s", entry.name, wave, result.error or "done")
                results.append(result)
            if any(r.error for r in results):
                break
        publish_maintenance(results, f"Maintenance of {len(results)} of {len(entries)} registries"
                            + ("" if apply else " (dry run)"), "maintenance", change)
        bad = [r for r in results if r.error]
        if bad:
            raise MaintenanceFailed(f"{len(bad)} registr{'y' if len(bad) == 1 else 'ies'} failed, later waves "
                                    "not run: " + "; ".join(f"{r.registry}: {r.error}" for r in bad))
        return [{"registry": r.registry, "pruned": len(r.pruned), "freed_bytes": r.freed_bytes,
                 "proven": len(r.proven)} for r in results]
