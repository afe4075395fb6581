"""The rollout flow: ``regpatch.rollout.run_rollout`` with each registry as a task run.

A registry with a ``work_pool`` is patched by its ``patch-registry`` deployment on
that pool (a Prefect worker on the host that owns the disk); one without is patched
as a subflow here. Waves, parallelism and the state file are the core's; each
registry's task run ends in its outcome (Failed, NotRun, Skipped, Completed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from prefect import flow, get_run_logger
from pydantic import Field

from regpatch.engine.patch_run import open_bundle
from regpatch.fleet.rollout import MAX_PARALLEL, RolloutFailed, RolloutState, render_table, run_rollout
from regpatch.params import S3Params, form_terms
from regpatch.reference import Repository, Tag
from regpatch_flows.patch import patch_registry
from regpatch_tasks import debug_logs, route_core_logs
from regpatch_tasks.observer import label_run, run_name, s3_options_for
from regpatch_tasks.rollout_tasks import find_patch_deployments, patcher, publish_rollout, read_inventory, show_unrun

NonEmpty = Annotated[str, Field(min_length=1)]


@flow(name="rollout", persist_result=False)
def rollout(
    bundle: NonEmpty,
    inventory: NonEmpty,
    repository: NonEmpty,
    tag: NonEmpty,
    only: Optional[list[str]] = None,
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] = 4,
    dry_run: bool = False,
    state_dir: Optional[str] = None,
    image: Optional[str] = None,
    verify_command: Optional[str] = None,
    patch_timeout: Optional[float] = 6 * 3600,
    s3: S3Params = S3Params(),
    debug: bool = False,
) -> list:
    """Roll BUNDLE out to REPOSITORY:TAG on every registry of INVENTORY (or those in ONLY),
    in waves; each registry is a task run that ends in its outcome.

    Args:
        bundle: The patch bundle, readable here and on every worker (the same path
            everywhere), or s3://bucket/prefix.
        inventory: The inventory YAML file, a path on the host that runs the rollout
            (see deployments/inventory.example.yml).
        repository: Repository to patch, e.g. servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        only: Patch only these registries (names of the inventory); all when empty.
        max_parallel: Registries patched at once within a wave (1 to 32).
        dry_run: Plan and verify the bundle for every registry, write nothing.
        state_dir: Folder of the rollout state file (default .regpatch-rollouts beside the inventory).
        image: For an OCI layout holding several images, the one whose ref.name annotation is this.
        verify_command: External puller run after each patch, {ref} replaced; an entry's own wins.
        patch_timeout: Seconds to wait for one registry's deployment run; empty for no limit.
        s3: Only for s3:// bundles: endpoint, credentials block, retries.
        debug: Debug logs, and a traceback for every error.
    """
    route_core_logs()
    with label_run(run_name("rollout", repository, tag), [f"repository:{repository}"]), debug_logs(debug), \
            form_terms():
        Repository.parse(repository), Tag.parse(tag)
        entries = read_inventory(inventory, only)
        deployments = find_patch_deployments(entries) if any(e.work_pool for e in entries) else {}
        digest = str(open_bundle(bundle, image=image, s3=s3_options_for(bundle, s3)).top.digest)
        state = RolloutState(Path(state_dir) if state_dir else RolloutState.default_dir(Path(inventory)),
                             repository, tag, digest)
        get_run_logger().info("rollout of %s:%s = %s to %d registries; state in %s", repository, tag, digest,
                              len(entries), state.path)
        patch_one = patcher(bundle=bundle, repository=repository, tag=tag, image=image,
                            verify_command=verify_command, dry_run=dry_run, s3=s3, deployments=deployments,
                            timeout=patch_timeout, patch_flow=patch_registry)
        outcomes = run_rollout(entries, patch_one, state=state, max_parallel=max_parallel, dry_run=dry_run)
        show_unrun(outcomes, repository, tag)
        publish_rollout(outcomes, f"Rollout{' (dry run)' if dry_run else ''} of {repository}:{tag} = {digest}",
                        repository, tag)
        get_run_logger().info("\n%s", render_table(outcomes))
        if any(o.failed or o.status == "not-run" for o in outcomes):
            raise RolloutFailed(outcomes)
    return outcomes
