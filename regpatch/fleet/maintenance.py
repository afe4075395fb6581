"""One registry's maintenance window: ``prune`` then ``gc`` (regpatch/engine/prune.py, gc.py), as
plain data for the ``registry-maintenance`` and ``maintenance`` flows (no Prefect here).

Without ``apply`` both halves are dry runs: what would be unlinked, what the registry's own
garbage collection would then delete, nothing stopped and nothing written into ``docker/``.
With ``apply`` the prune unlinks under each repository's lock, then the gc stops the registry
through its restart strategy, collects, starts it again and pulls every kept image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from regpatch import platform
from regpatch.engine.gc import Collector, GcReport, check_gc, collector_for, run_gc
from regpatch.engine.prune import PrunePlan, apply_prune, plan_prune
from regpatch.engine.results import change_rows
from regpatch.params import ChangeParams, MaintenanceParams, RegistryParams, RetentionParams
from regpatch.progress import human
from regpatch.registry.restart import ProcessRestart, RestartStrategy, parse_restart_spec
from regpatch.registry.target import RegistryTarget
from regpatch.sanitize import redact, shown
from regpatch.storage.store import RegistryStore
from regpatch.tables import CompactTable, cell


@dataclass
class MaintenanceResult:
    registry: str
    applied: bool
    pruned: list[str] = field(default_factory=list)       # repository@digest unlinked (or that would be)
    freed_bytes: int = 0          # measured by gc (apply), else what the prune then the collection would free
    proven: list[str] = field(default_factory=list)       # references pulled after the collection
    downtime_seconds: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class GcSetup:
    """What ``regpatch gc`` and the maintenance flows collect with: the registry, its storage, its
    restart strategy (which stops and starts it) and the registry's own garbage-collect."""

    target: RegistryTarget
    store: RegistryStore
    strategy: RestartStrategy
    collector: Collector

    def collect(self, *, apply: bool, lock_timeout: float, change: Optional[ChangeParams] = None) -> GcReport:
        """The maintenance window with ``apply`` (who asked and why in its journal), else the dry
        run against the running registry."""
        if apply:
            return run_gc(self.store, self.target, self.strategy, self.collector, lock_timeout=lock_timeout,
                          change=change)
        return check_gc(self.store, self.collector)


def gc_setup(registry: RegistryParams, maintenance: MaintenanceParams) -> GcSetup:
    """The registry's gc parts; a missing binary is refused here, before any write."""
    target = registry.target()
    store = target.store()
    strategy = parse_restart_spec(registry.restart, registry_config=target.config_path)
    binary = maintenance.registry_binary or (strategy.binary if isinstance(strategy, ProcessRestart)
                                             else platform.default_registry_binary())
    return GcSetup(target, store, strategy, collector_for(store, target, binary))


def maintain_registry(registry: RegistryParams, retention: RetentionParams, maintenance: MaintenanceParams,
                      change: ChangeParams, *, apply: bool) -> tuple[MaintenanceResult, PrunePlan, Optional[GcReport]]:
    """Prune then collect one registry; raises the engine's errors (the flow records them). Who
    asked and why (``change``) go into each pruned image's history line and the gc's journal."""
    gc = gc_setup(registry, maintenance)
    result = MaintenanceResult(registry.label(gc.target), apply)
    plan = plan_prune(gc.store, retention)
    if apply and plan.images:
        plan = apply_prune(gc.store, plan, retention, lock_timeout=registry.lock_timeout, change=change)
    result.pruned = [f"{i.repository}@{i.digest}" for i in plan.images]
    report = gc.collect(apply=apply, lock_timeout=registry.lock_timeout, change=change)
    if apply:
        result.freed_bytes, result.proven = report.freed_bytes or 0, report.proven
        result.downtime_seconds = report.downtime_seconds
    else:  # against the storage as it is: the prune's blobs come on top
        result.freed_bytes = report.eligible_bytes + plan.freed_bytes
    return result, plan, report


def failed(name: str, error: BaseException) -> MaintenanceResult:
    return MaintenanceResult(name, False, error=redact(str(error) or type(error).__name__))


def render_markdown(results: list[MaintenanceResult], title: str, change: Optional[ChangeParams] = None) -> str:
    """The table, who asked and why (``change``), every error, what was unlinked."""
    lines = [f"# {title}", ""]
    if change is not None:
        lines += ["| | |", "|---|---|", *change_rows(change).splitlines(), ""]
    table = CompactTable(("registry", "outcome", "images unlinked", "bytes freed", "downtime", "references proven"))
    for r in results:
        outcome = "**failed**" if r.error else ("done" if r.applied else "dry run")
        freed = human(r.freed_bytes) + ("" if r.applied else " (would)")
        down = f"{r.downtime_seconds:.1f} s" if r.downtime_seconds is not None else "-"
        table.add(cell(r.registry), outcome, str(len(r.pruned)), freed, down, str(len(r.proven)))
    lines += table.lines()
    errors = [f"- {r.registry}: {shown(r.error, 400)}" for r in results if r.error]
    details = [f"- {r.registry}: unlinked {', '.join(r.pruned[:20])}" + (" ..." if len(r.pruned) > 20 else "")
               for r in results if r.pruned]
    return "\n".join(lines + ([""] + errors if errors else []) + ([""] + details if details else [])) + "\n"
