"""The tasks of the patch-registry flow, in the order the flow calls them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from regpatch.apply import ApplyReport, BlobResult
from regpatch import apply as core_apply
from regpatch.digest import Digest
from regpatch.bundle.formats import PatchBundle, load_bundle
from regpatch.bundle.source import open_source
from regpatch.plan import PatchPlan, make_plan
from regpatch.progress import Progress
from regpatch.reference import Repository, Tag
from regpatch.registry_api import RegistryClient, VerifyReport, run_verify_command
from regpatch.service import http_probe, parse_restart_spec, wait_until_ready
from regpatch.store import RegistryStore
from regpatch.target import RegistryTarget

# Content-keyed caching and result persistence come with the journal; until
# then every task runs for real (NO_CACHE) and keeps its results in memory.
_opts = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="fetch-bundle", **_opts)
def fetch_bundle(bundle: str, image: Optional[str] = None) -> PatchBundle:
    """Open the bundle source, detect its format and read its manifest."""
    loaded = load_bundle(open_source(bundle), image=image)
    get_run_logger().info("bundle %s: %s format, top manifest %s (%s)", loaded.description,
                          loaded.format, loaded.top.digest, loaded.top.media_type)
    return loaded


@task(name="plan-patch", **_opts)
def plan_patch(bundle: PatchBundle, storage: str, repository: str, tag: str) -> PatchPlan:
    """Resolve every descriptor against bundle and registry; no write."""
    store = RegistryStore(storage)
    plan = make_plan(bundle, store, Repository.parse(repository), Tag.parse(tag))
    get_run_logger().info("plan:\n%s", plan.render(store.layout))
    return plan


@task(name="verify-digests", **_opts)
def verify_digests(plan: PatchPlan, storage: str, dry_run: bool = False) -> list[BlobResult]:
    """Hash every blob (bundle blobs staged while hashed, unless dry run)."""
    return core_apply.verify_blobs(plan, RegistryStore(storage), dry_run=dry_run, progress=Progress())


@task(name="copy-blobs", **_opts)
def copy_blobs(plan: PatchPlan, storage: str) -> ApplyReport:
    """Write order step 1: blob data and manifest blobs."""
    return core_apply.install_blobs(plan, RegistryStore(storage))


@task(name="write-links", **_opts)
def write_links(plan: PatchPlan, storage: str, report: ApplyReport) -> ApplyReport:
    """Write order steps 2-5: layer, revision, tag index and current links."""
    return core_apply.write_links(plan, RegistryStore(storage), report)


@task(name="restart-registry", **_opts)
def restart_registry(restart: str, target: RegistryTarget) -> float:
    """Restart the registry (if a strategy is given) and wait until /v2/ answers."""
    logger = get_run_logger()
    strategy = parse_restart_spec(restart, registry_config=Path(target.config) if target.config else None)
    if not strategy.needed:
        logger.info("no restart (additions are visible to the registry at once)")
        return 0.0
    t0 = time.monotonic()
    logger.info("restarting the registry: %s", strategy.describe())
    strategy.restart()
    if target.url:
        waited = wait_until_ready(lambda: http_probe(target.url, verify=target.tls_verify()))
        logger.info("registry at %s answers /v2/ after %.2fs", target.url, waited)
    return time.monotonic() - t0


@task(name="verify-pull", **_opts)
def verify_pull(target: RegistryTarget, repository: str, tag: str, expected: str,
                total_bytes: int = 0, verify_command: Optional[str] = None) -> Optional[VerifyReport]:
    """Pull the tag through the registry API, re-hashing every byte; then the external puller."""
    logger = get_run_logger()
    if not target.url:
        logger.warning("no --registry-url or --registry-config: the verification pull is skipped")
        return None
    with target.client() as client:
        bar = Progress()(f"pull {repository}:{tag}", total_bytes) if total_bytes else None
        report = client.verify_image(repository, tag, Digest.parse(expected), progress=bar)
    if verify_command:
        ref = f"{target.host}/{repository}:{tag}"
        run_verify_command(verify_command, ref)
        logger.info("external verification passed: %s", verify_command.replace("{ref}", ref))
    return report
