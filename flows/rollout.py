"""The rollout flow: one bundle to every registry of an inventory, in waves.

Groups run as waves in the order they first appear in the inventory; a wave
with a failed registry stops the later waves. Within a wave up to
``max_parallel`` registries are patched at once; one failing never stops the
others. A registry with a ``work_pool`` is patched by the ``patch-registry``
deployment on that pool (a Prefect worker on the host that owns the disk);
one without is patched as a subflow here. Registries that finished this
bundle in an earlier run (the state file) are skipped, so running the same
rollout again retries only the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from regpatch.errors import UsageError
from regpatch.inventory import Inventory, RegistryEntry, load_inventory
from regpatch.reference import Repository, Tag
from regpatch.rollout import (FAILED, NOT_RUN, SKIPPED, RegistryOutcome, RolloutFailed, RolloutState,
                              render_markdown, render_table)
from tasks.patch_tasks import fetch_bundle
from tasks.rollout_tasks import find_patch_deployments, patch_one

MAX_THREADS = 32


@flow(name="rollout", persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))
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
    s3_endpoint_url: Optional[str] = None,
    s3_region: Optional[str] = None,
    aws_credentials_block: Optional[str] = None,
) -> list[RegistryOutcome]:
    """Roll BUNDLE out to REPOSITORY:TAG on every registry of INVENTORY (or those in ONLY).

    Args:
        bundle: The patch bundle: a staged folder or an OCI layout, readable here and on every
            worker (the same path everywhere), or s3://bucket/prefix.
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
        s3_endpoint_url: For s3:// bundles, the S3 endpoint (default $AWS_ENDPOINT_URL).
        s3_region: For s3:// bundles, the region.
        aws_credentials_block: For s3:// bundles, a prefect-aws AwsCredentials block name.
    """
    logger = get_run_logger()
    # Everything that can be checked before touching a registry is checked first.
    Repository.parse(repository)
    Tag.parse(tag)
    if not 1 <= max_parallel <= MAX_THREADS:
        raise UsageError(f"--max-parallel must be between 1 and {MAX_THREADS}, not {max_parallel}")
    inv = load_inventory(inventory)
    entries = inv.select(only)
    pools = sorted({e.work_pool for e in entries if e.work_pool})
    deployments = find_patch_deployments(pools) if pools else {}
    s3 = {k: v for k, v in dict(endpoint_url=s3_endpoint_url, region=s3_region,
                                aws_credentials_block=aws_credentials_block).items() if v}
    loaded = fetch_bundle(bundle, image, s3)
    digest = str(loaded.top.digest)
    state = RolloutState(Path(state_dir) if state_dir else RolloutState.default_dir(Path(inventory)),
                         repository, tag, digest)
    logger.info("rollout of %s:%s = %s to %d registries; state in %s", repository, tag, digest,
                len(entries), state.path)

    outcomes: dict[str, RegistryOutcome] = {}
    stopped_by: Optional[str] = None
    for group, members in Inventory.waves(entries):
        if stopped_by:
            for e in members:
                outcomes[e.name] = RegistryOutcome(e.name, e.wave, e.where, NOT_RUN,
                                                   note=f"wave {stopped_by!r} failed")
            continue
        todo: list[RegistryEntry] = []
        for e in members:
            earlier = state.finished(e.name)
            if earlier:
                outcomes[e.name] = RegistryOutcome(e.name, e.wave, e.where, SKIPPED, old=earlier.old,
                                                   new=earlier.new, note="done in an earlier run")
            else:
                todo.append(e)
        logger.info("wave %r: %d to patch, %d done earlier", group, len(todo), len(members) - len(todo))
        for outcome in _run_wave(todo, max_parallel, bundle=bundle, repository=repository, tag=tag,
                                 image=image, verify_command=verify_command, dry_run=dry_run,
                                 s3={f"s3_{k}" if k != "aws_credentials_block" else k: v
                                     for k, v in s3.items()},
                                 deployments=deployments, timeout=patch_timeout):
            outcomes[outcome.name] = outcome
            if not dry_run:
                state.record(outcome)
        if any(outcomes[e.name].failed for e in members):
            stopped_by = group
            logger.error("wave %r failed: later waves are not run", group)

    ordered = [outcomes[e.name] for e in entries]
    title = f"Rollout{' (dry run)' if dry_run else ''} of {repository}:{tag} = {digest}"
    key = "rollout-" + "".join(c if c.isalnum() else "-" for c in f"{repository}-{tag}".lower())
    create_table_artifact(key=key[:100], table=[o.row() for o in ordered], description=title)
    create_markdown_artifact(markdown=render_markdown(ordered, title), description=title)
    logger.info("%s\n%s", title, render_table(ordered))
    if any(o.failed for o in ordered):
        raise RolloutFailed(ordered)
    return ordered


def _run_wave(todo: list[RegistryEntry], max_parallel: int, *, deployments: dict[str, str],
              timeout: Optional[float], **params):
    """Patch the registries of one wave, at most ``max_parallel`` at once; yield outcomes."""
    pending = list(todo)
    running: dict = {}
    while pending or running:
        while pending and len(running) < max_parallel:
            e = pending.pop(0)
            fut = patch_one.submit(e, deployment=deployments.get(e.work_pool) if e.work_pool else None,
                                   timeout=timeout, **params)
            running[fut] = e
        done = next(as_completed(list(running)))
        e = running.pop(done)
        try:
            yield done.result()
        except Exception as exc:  # noqa: BLE001 - patch_one does not raise; be safe anyway
            yield RegistryOutcome(e.name, e.wave, e.where, FAILED, error=f"{type(exc).__name__}: {exc}")
