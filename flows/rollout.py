"""The rollout flow: ``regpatch.fleet.rollout.run_rollout`` with each registry as a task run.

A registry with a ``work_pool`` is patched by its ``patch-registry`` deployment on
that pool (a Prefect worker on the host that owns the disk); one without is patched
here, the engine's steps nested in its task run. Waves, parallelism and the state
file are the core's; each registry's task run ends in its outcome (Failed, NotRun,
Skipped, Completed). More than 4 registries at once only on a server on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger

from regpatch import interrupt
from regpatch.engine.patch_run import open_bundle
from regpatch.errors import RegpatchError, UsageError
from regpatch.fleet.drop import choose_bundle, require_drop
from regpatch.fleet.inventory import refuse_stored_credentials
from regpatch.fleet.rollout import (
    RolloutFailed,
    RolloutState,
    check_change_for_workers,
    check_state_dir,
    render_table,
    run_rollout,
)
from regpatch.options import opt
from regpatch.params import ChangeParams, RepositoryName, RolloutParams, S3Params, TagName, VerifyParams, form_terms
from regpatch.reference import Repository, Tag
from regpatch.tables import short_digest
from regpatch_tasks import debug_logs, failure_said_once, route_core_logs
from regpatch_tasks.observer import label_run, run_name, s3_options_for
from regpatch_tasks.rollout_tasks import (
    RegistriesProgress,
    check_server,
    find_patch_deployments,
    patcher,
    publish_rollout,
    read_registries,
    show_unrun,
    wave_slots,
)


@flow(name="rollout", persist_result=False)
def rollout(
    bundle: Optional[str],
    repository: RepositoryName,
    tag: TagName,
    rollout: RolloutParams,
    change: ChangeParams,
    verify: VerifyParams = VerifyParams(),
    image: Optional[str] = None,
    dry_run: bool = False,
    s3: S3Params = S3Params(),
    debug: bool = False,
) -> list:
    """Roll BUNDLE out to REPOSITORY:TAG on every registry of the inventory (or those in
    rollout.only), in waves; each registry is a task run that ends in its outcome.

    Args:
        bundle: The patch bundle, readable here and on every worker (the same path
            everywhere), or s3://bucket/prefix. None with rollout.drop: the newest bundle there.
        repository: Repository to patch, e.g. servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        rollout: The inventory and which of its registries, how many at once.
        change: Who asked for the rollout and why (a change ticket): recorded in every registry's
            history and given to every registry's run.
        verify: An external puller run after each patch, {ref} replaced; an entry's own wins.
        image: For an OCI layout holding several images, the one whose ref.name annotation is this.
        dry_run: Plan and verify the bundle for every registry, write nothing.
        s3: Only for s3:// bundles: endpoint, credentials block, retries.
        debug: Debug logs, and a traceback for every error.
    """
    route_core_logs()
    with label_run(run_name("rollout", None, repository, tag, dry_run), [f"repository:{repository}"]), \
            debug_logs(debug), form_terms(("rollout", "verify", "s3", "change")), \
            failure_said_once(f"rollout of {repository}:{tag}"):
        try:  # the shipped deployment names /etc/regpatch/inventory.yml and /srv/shuttle/drop: checked first
            Repository.parse(repository), Tag.parse(tag)
            entries = read_registries(rollout)
            require_drop(rollout.drop)
            check_server(rollout.max_parallel)
            refuse_stored_credentials(entries)  # as the command line does: what a run stores, logs or shows has none
            check_change_for_workers(change, entries)
            bundle = bundle_to_roll_out(bundle, rollout, repository, tag, entries, s3)
            deployments = find_patch_deployments(entries) if any(e.work_pool for e in entries) else {}
            s3_options = s3_options_for(bundle, s3)
            digest = str(open_bundle(bundle, image=image, s3=s3_options).top.digest)
            state_dir = Path(rollout.state_dir or RolloutState.default_dir(Path(str(rollout.inventory))))
            check_state_dir(state_dir, entries)
            state = RolloutState(state_dir, repository, tag, digest)
        except RegpatchError as e:  # before any registry: still the rollout's summary, saying why
            publish_rollout([], f"Rollout of {repository}:{tag} failed before any registry", repository, tag, change,
                            error=str(e))
            raise
        get_run_logger().info("rollout of %s:%s = %s to %d registries; state in %s", repository, tag, digest,
                              len(entries), state.path)
        patch_one = patcher(bundle=bundle, repository=repository, tag=tag, image=image,
                            verify_command=verify.command, dry_run=dry_run, s3=s3, s3_options=s3_options,
                            deployments=deployments, timeout=rollout.patch_timeout, change=change)
        progress = RegistriesProgress(len(entries))  # "n of N registries done", on the run's Artifacts tab
        with interrupt.chained_handlers():  # a stop request reaches the engines in every registry's thread
            outcomes = run_rollout(entries, progress.wrap(patch_one), state=state, max_parallel=rollout.max_parallel,
                                   dry_run=dry_run, around_wave=wave_slots)
        progress.finish(outcomes)
        show_unrun(outcomes, repository, tag)
        publish_rollout(outcomes, f"Rollout{' (dry run)' if dry_run else ''} of {repository}:{tag} "
                        f"({short_digest(digest)})", repository, tag, change, image=digest)
        get_run_logger().info("\n%s", render_table(outcomes))
        if any(o.failed or o.status == "not-run" for o in outcomes):
            raise RolloutFailed(outcomes)
    return outcomes


def bundle_to_roll_out(bundle: Optional[str], params: RolloutParams, repository: str, tag: str, entries: list,
                       s3: S3Params) -> str:
    """The bundle given, or the newest of the drop location (``regpatch.fleet.drop``), said
    in the run's log; exactly one of them."""
    if bool(bundle) == bool(params.drop):
        raise UsageError(f"give either {opt.bundle} or {opt.drop} (the drop location, for the newest bundle there), "
                         "not both, not neither")
    if bundle:
        return bundle
    assert params.drop is not None
    choice = choose_bundle(params.drop, repository=repository, tag=tag, entries=entries,
                           max_age_days=params.max_bundle_age_days, s3=s3_options_for(params.drop, s3))
    get_run_logger().info("drop location %s: %s", params.drop, choice.summary())
    return choice.bundle.location
