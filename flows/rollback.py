"""The rollback-registry flow: ``regpatch.engine.rollback`` with its steps as task runs."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from regpatch import engine, interrupt
from regpatch.engine.requests import rollback_request
from regpatch.errors import RegpatchError
from regpatch.options import opt
from regpatch.params import (
    ChangeParams,
    RegistryParams,
    RepositoryName,
    TagName,
    VerifyParams,
    form_terms,
    refuse_inline_credentials,
)
from regpatch_tasks import debug_logs, failure_said_once, route_core_logs
from regpatch_tasks.observer import (
    PrefectObserver,
    RunningSummary,
    label_registry_run,
    publish_failure,
    publish_history,
    publish_summary,
)
from regpatch_tasks.registry_block import chosen


@flow(name="rollback-registry", log_prints=False, persist_result=False)
def rollback_registry(
    repository: RepositoryName,
    tag: TagName,
    registry: RegistryParams,
    change: ChangeParams,
    to: Optional[str] = None,
    verify: VerifyParams = VerifyParams(),
    debug: bool = False,
) -> engine.RollbackResult:
    """Point REPOSITORY:TAG back at the image it had before its last change (from the
    registry's history), or at TO. The image must be complete in the storage and is pulled
    by digest before the tag moves; a tag someone else moved meanwhile is never overwritten.

    Args:
        repository: Repository, e.g. servercore.
        tag: Tag to roll back, e.g. ltsc2019.
        registry: The registry: a per-registry deployment has its regpatch-registry block chosen;
            otherwise give its storage folder or its config.yml.
        change: Who asked for the rollback and why (a change ticket): recorded in the history.
        to: Optional. The digest (sha256:...) to point the tag at; default: the one before the
            last change (see the history-REGISTRY artifact).
        verify: Optional. An external puller run before the tag moves.
        debug: Debug logs, and a traceback for every error.
    """
    route_core_logs()
    name = registry.label()  # (a block is a registry too: its name, before it is checked)
    with label_registry_run("rollback", name, repository, tag), debug_logs(debug), form_terms(), \
            failure_said_once(f"rollback of {repository}:{tag} on {name}"):
        request = None
        running = RunningSummary(name, "rollback", repository, tag)
        try:
            registry, verify, _ = chosen(registry, verify)
            refuse_inline_credentials(opt.verify_command, verify.command)
            refuse_inline_credentials(opt.restart, registry.restart)
            request = rollback_request(repository=repository, tag=tag, registry=registry, to=to or None,
                                       verify=verify, change=change)
            with interrupt.chained_handlers():
                result = engine.rollback(request, PrefectObserver(summary=running))
        except RegpatchError as e:  # however early: a summary saying where the tag stands
            publish_failure(name, "rollback", repository, tag, e, request.target if request else None, change,
                            running)
            raise
        publish_summary(result, name, kind="rollback", running=running)
        publish_history(name, request.target)
    return result
