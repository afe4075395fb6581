"""The rollback-registry flow: ``regpatch.engine.rollback`` with its steps as task runs."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from regpatch import engine, interrupt
from regpatch.params import RegistryParams, VerifyParams, refuse_inline_credentials, rollback_request
from tasks.observer import PrefectObserver, publish_summary


@flow(name="rollback-registry", log_prints=False, persist_result=False)
def rollback_registry(
    repository: str,
    tag: str,
    registry: RegistryParams,
    to: Optional[str] = None,
    verify: VerifyParams = VerifyParams(),
) -> engine.RollbackResult:
    """Point REPOSITORY:TAG back at the image it had before its last change (from the
    history), or at TO. The image must be complete in the storage and is pulled by digest
    before the tag moves; a tag someone else moved meanwhile is never overwritten.

    Args:
        repository: Repository, e.g. servercore.
        tag: Tag to roll back, e.g. ltsc2019.
        registry: The registry: its storage (or config.yml), API URL, restart strategy.
        to: The digest (sha256:...) to point the tag at; default: the one before the last change.
        verify: How the image is proven before the tag moves.
    """
    refuse_inline_credentials("verify.command", verify.command)
    refuse_inline_credentials("registry.restart", registry.restart)
    request = rollback_request(repository=repository, tag=tag, registry=registry, to=to, verify=verify)
    with interrupt.chained_handlers():
        result = engine.rollback(request, PrefectObserver())
    publish_summary(result, kind="rollback")
    return result
