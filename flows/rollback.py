"""The rollback-registry flow: point a tag back at an earlier, complete image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from regpatch.state import record_history, repository_lock
from regpatch.target import RegistryTarget
from tasks.patch_tasks import restart_registry, verify_pull
from tasks.rollback_tasks import check_image, choose_target, flip


@dataclass
class RollbackResult:
    repository: str
    tag: str
    old: Optional[str]
    new: str
    changed: bool
    verified: Optional[str] = None


@flow(name="rollback-registry", log_prints=False, persist_result=False)
def rollback_registry(
    repository: str,
    tag: str,
    storage: Optional[str] = None,
    to: Optional[str] = None,
    registry_url: Optional[str] = None,
    registry_config: Optional[str] = None,
    restart: str = "none",
    verify_command: Optional[str] = None,
    registry_auth_file: Optional[str] = None,
    registry_ca: Optional[str] = None,
    insecure: bool = False,
    state_dir: Optional[str] = None,
    lock_timeout: float = 300.0,
) -> RollbackResult:
    """Point REPOSITORY:TAG back at the digest it had before (from history) or at TO.

    The target must be a complete image of the repository: checked before the flip.
    The registry serves the old image at once; a restart is only needed to forget
    removed blobs (the in-memory blob descriptor cache), which a rollback does not do.
    """
    logger = get_run_logger()
    repo, tg, target = RegistryTarget.for_run(
        repository, tag, restart, storage=storage, url=registry_url, config=registry_config,
        auth_file=registry_auth_file, ca_file=registry_ca, insecure=insecure, state_dir=state_dir)
    store = target.store()
    with repository_lock(store.layout, repo, timeout=lock_timeout):
        current, dest = choose_target(target, repository, tag, to)
        check_image(target, repository, dest)
        changed = flip(target, repository, tag, dest)
        if changed:
            record_history(store, repo, tg, current, dest, action="rollback",
                           source=f"regpatch rollback{' --to ' + to if to else ''}")
        restart_registry(restart, target)
        verified = verify_pull(target, repository, tag, str(dest), 0, verify_command)
    result = RollbackResult(repository, tag, str(current) if current else None, str(dest), changed,
                            verified.summary() if verified else None)
    logger.info("%s:%s rolled back: %s -> %s", repository, tag, result.old, result.new)
    create_markdown_artifact(
        key=f"rollback-{''.join(c if c.isalnum() else '-' for c in (repository + '-' + tag).lower())}"[:100],
        markdown=(f"# Rollback `{repository}:{tag}`\n\n| | |\n|---|---|\n| from | `{result.old}` |\n"
                  f"| to | `{result.new}` |\n| changed | {changed} |\n| verification | {result.verified or 'not run'} |\n"),
        description=f"regpatch rollback {repository}:{tag}")
    return result
