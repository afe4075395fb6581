"""The tasks of the patch-registry flow, in the order the flow calls them."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy

from regpatch.apply import ApplyReport, BlobResult
from regpatch import apply as core_apply
from regpatch.digest import Digest
from regpatch.bundle.formats import PatchBundle, load_bundle
from regpatch.bundle.source import open_source
from regpatch.plan import PatchPlan, make_plan
from regpatch.progress import Progress
from regpatch.reference import Repository, Tag
from regpatch.registry_api import VerifyReport, run_verify_command
from regpatch.service import http_probe, parse_restart_spec, wait_until_ready
from regpatch.target import RegistryTarget

# Tasks that only read, or that must always look at the storage, run for real
# (NO_CACHE). The two long steps are cached by content, never by run id: the
# key is (step, manifest digest, storage, repository, tag, dry run, the blobs
# the plan still has to copy). A flow-run retry or a re-run after a kill finds
# a finished step by that key and skips it; once the storage changes, so does
# the key. The storage stays the source of truth: later steps check it again.
_opts = dict(cache_policy=NO_CACHE, persist_result=False)


def _content_key(step: str):
    def key(context, parameters) -> str:
        plan, target = parameters["plan"], parameters["target"]
        parts = [step, str(plan.new), os.path.abspath(target.storage), str(target.state_dir),
                 plan.repository.name, plan.tag.name, str(parameters.get("dry_run", False)),
                 *sorted(str(b.digest) for b in plan.to_copy)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    return CacheKeyFnPolicy(cache_key_fn=key)


@task(name="fetch-bundle", **_opts)
def fetch_bundle(bundle: str, image: Optional[str] = None, s3: Optional[dict] = None) -> PatchBundle:
    """Open the bundle source, detect its format and read its manifest.

    ``s3``: plain settings for s3:// bundles (``tasks.s3_support.s3_options`` keywords).
    """
    options = None
    if bundle.startswith("s3://"):
        from tasks.s3_support import s3_options

        options = s3_options(**(s3 or {}))
    loaded = load_bundle(open_source(bundle, s3=options), image=image)
    get_run_logger().info("bundle %s: %s format, top manifest %s (%s)", loaded.description,
                          loaded.format, loaded.top.digest, loaded.top.media_type)
    return loaded


@task(name="plan-patch", **_opts)
def plan_patch(bundle: PatchBundle, target: RegistryTarget, repository: str, tag: str) -> PatchPlan:
    """Resolve every descriptor against bundle and registry; no write."""
    store = target.store()
    plan = make_plan(bundle, store, Repository.parse(repository), Tag.parse(tag))
    get_run_logger().info("plan:\n%s", plan.render(store.layout))
    return plan


@task(name="verify-digests", cache_policy=_content_key("verify-digests"), persist_result=True,
      cache_expiration=timedelta(days=1))
def verify_digests(plan: PatchPlan, target: RegistryTarget, dry_run: bool = False) -> list[BlobResult]:
    """Hash every blob (bundle blobs staged while hashed, unless dry run)."""
    return core_apply.verify_blobs(plan, target.store(), dry_run=dry_run, progress=Progress())


@task(name="copy-blobs", cache_policy=_content_key("copy-blobs"), persist_result=True,
      cache_expiration=timedelta(days=1))
def copy_blobs(plan: PatchPlan, target: RegistryTarget) -> ApplyReport:
    """Write order step 1: blob data and manifest blobs."""
    return core_apply.install_blobs(plan, target.store(), progress=Progress())


@task(name="write-links", **_opts)
def write_links(plan: PatchPlan, target: RegistryTarget, report: ApplyReport) -> ApplyReport:
    """Write order steps 2-5: layer, revision, tag index and current links."""
    return core_apply.write_links(plan, target.store(), report)


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
