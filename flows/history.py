"""The registry-history flow: ``regpatch history`` of one registry as an artifact."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from regpatch.params import RegistryParams, form_terms
from regpatch_tasks import failure_said_once, route_core_logs
from regpatch_tasks.observer import history_markdown, label_run, publish_history, run_name
from regpatch_tasks.registry_block import chosen


@flow(name="registry-history", log_prints=False, persist_result=False)
def registry_history(
    registry: RegistryParams,
    repository: Optional[str] = None,
    tag: Optional[str] = None,
) -> str:
    """Show every tag change regpatch recorded in one registry (patches and rollbacks: time,
    old and new digest, bundle, who) as the artifact history-REGISTRY, newest first.

    Args:
        registry: The registry: a per-registry deployment has its regpatch-registry block chosen.
        repository: Optional. Only this repository.
        tag: Optional. Only this tag (with a repository).
    """
    route_core_logs()
    name = registry.label()  # (a block is a registry too: its name, before it is checked)
    with label_run(run_name("history", name, repository, tag), [f"registry:{name}"]), form_terms(), \
            failure_said_once(f"history of {name}"):
        registry = chosen(registry)[0]
        target = registry.target()
        publish_history(name, target, repository or None, tag or None)
        return history_markdown(name, target, repository or None, tag or None)
