"""The rollout flow: ``regpatch.rollout.run_rollout`` with each registry as a task run.

A registry with a ``work_pool`` is patched by the ``patch-registry`` deployment on
that pool (a Prefect worker on the host that owns the disk); one without is patched
as a subflow here. Waves, parallelism and the state file are the core's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from regpatch.engine import open_bundle
from regpatch.inventory import load_inventory
from regpatch.params import S3Params
from regpatch.reference import Repository, Tag
from regpatch.rollout import MAX_PARALLEL, RolloutFailed, RolloutState, render_table, run_rollout
from tasks.observer import s3_options_for
from tasks.rollout_tasks import find_patch_deployments, patcher, publish_rollout


@flow(name="rollout", persist_result=False)
def rollout(
    bundle: str,
    inventory: str,
    repository: str,
    tag: str,
    only: Optional[list[str]] = None,
    max_parallel: int = 4,
    dry_run: bool = False,
    state_dir: Optional[str] = None,
    image: Optional[str] = None,
    verify_command: Optional[str] = None,
    patch_timeout: Optional[float] = 6 * 3600,
    s3: S3Params = S3Params(),
) -> list:
    """Roll BUNDLE out to REPOSITORY:TAG on every registry of INVENTORY (or those in ONLY).

    Args:
        bundle: The patch bundle, readable here and on every worker (the same path
            everywhere), or s3://bucket/prefix.
        inventory: The inventory YAML file, a path on the host that runs the rollout.
        repository: Repository to patch, e.g. servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        only: Patch only these registries (names of the inventory); all when empty.
        max_parallel: Registries patched at once within a wave (1 to 32).
        dry_run: Plan and verify the bundle for every registry, write nothing.
        state_dir: Folder of the rollout state file (default .regpatch-rollouts beside the inventory).
        image: For an OCI layout holding several images, the one whose ref.name annotation is this.
        verify_command: External puller run after each patch, {ref} replaced; an entry's own wins.
        patch_timeout: Seconds to wait for one registry's deployment run; empty for no limit.
        s3: For s3:// bundles: endpoint, credentials block, retries.
    """
    Repository.parse(repository), Tag.parse(tag)
    if not 1 <= max_parallel <= MAX_PARALLEL:
        raise ValueError(f"max_parallel must be between 1 and {MAX_PARALLEL}")
    entries = load_inventory(inventory).select(only)
    pools = sorted({e.work_pool for e in entries if e.work_pool})
    deployments = find_patch_deployments(pools) if pools else {}
    digest = str(open_bundle(bundle, image=image, s3=s3_options_for(bundle, s3)).top.digest)
    state = RolloutState(Path(state_dir) if state_dir else RolloutState.default_dir(Path(inventory)),
                         repository, tag, digest)
    get_run_logger().info("rollout of %s:%s = %s to %d registries; state in %s", repository, tag, digest,
                          len(entries), state.path)
    patch_one = patcher(bundle=bundle, repository=repository, tag=tag, image=image, verify_command=verify_command,
                        dry_run=dry_run, s3=s3, deployments=deployments, timeout=patch_timeout)
    outcomes = run_rollout(entries, patch_one, state=state, max_parallel=max_parallel, dry_run=dry_run)
    publish_rollout(outcomes, f"Rollout{' (dry run)' if dry_run else ''} of {repository}:{tag} = {digest}",
                    repository, tag)
    get_run_logger().info("\n%s", render_table(outcomes))
    if any(o.failed or o.status == "not-run" for o in outcomes):
        raise RolloutFailed(outcomes)
    return outcomes
