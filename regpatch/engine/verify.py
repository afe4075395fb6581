"""Proving an image before and after the tag moves: complete in the storage, pulled by digest through
the registry's API, the operator's verify command; and the restart before it."""

from __future__ import annotations

import logging
import time
from typing import Optional

from regpatch.digest import Digest
from regpatch.engine.observer import ProgressFactory
from regpatch.engine.tags import check_complete_image
from regpatch.errors import VerificationError
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.registry.client import VerifyReport
from regpatch.registry.restart import http_probe, parse_restart_spec, wait_until_ready
from regpatch.registry.target import RegistryTarget
from regpatch.registry.verify_command import run_verify_command
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")


VERIFY_STAGES = ("storage check", "pull", "verify command")


def verify_new_image(store: RegistryStore, target: RegistryTarget, repo: Repository, digest: Digest,
                     total_bytes: int, verify_command: Optional[str],
                     progress: ProgressFactory, stages: Optional[list[str]] = None) -> Optional[VerifyReport]:
    """Prove the image before any tag points at it: complete in the storage, then pulled
    by digest through the registry API (every byte re-hashed), then the operator's
    command with ``{ref}`` = ``host/repository@digest``. ``stages`` gets the name of each
    stage as it starts (``VERIFY_STAGES``), so a failure can be said where it happened."""
    stages = stages if stages is not None else []
    stages.append(VERIFY_STAGES[0])
    check_complete_image(store, repo, digest)
    if not target.url:
        log.warning("no registry URL: the new image was checked in the storage only, not pulled "
                    f"(give {opt.registry_url} or {opt.registry_config} to pull it before the tag moves)")
        return None
    stages.append(VERIFY_STAGES[1])
    with target.client() as client:
        bar = progress(f"pull {repo}@{digest.short}", total_bytes) if total_bytes else None
        report = client.verify_image(repo, digest, digest, progress=bar)
    if verify_command:
        stages.append(VERIFY_STAGES[2])
        ref = f"{target.host}/{repo}@{digest}"
        run_verify_command(verify_command, ref)
        log.info("external verification of %s passed", ref)
    return report


def check_tag_served(target: RegistryTarget, repo: Repository, tag: Tag, digest: Digest) -> None:
    """After the tag moved: the registry must serve ``digest`` for it (when it has a URL)."""
    if not target.url:
        return
    with target.client() as client:
        served = client.tag_digest(repo, tag)
    if served != digest:
        raise VerificationError(f"after the tag moved, the registry at {target.url} serves {served} "
                                f"for {repo}:{tag}, not {digest}; is this registry's storage the one "
                                "that was patched?")


def restart_registry(spec: str, target: RegistryTarget) -> float:
    """Run the restart strategy (if any) and wait until the registry answers."""
    strategy = parse_restart_spec(spec, registry_config=target.config_path)
    if not strategy.needed:
        log.info("no restart (additions are visible to the registry at once)")
        return 0.0

    t0 = time.monotonic()
    log.info("restarting the registry: %s", strategy.describe())
    strategy.restart()
    url = target.url
    if url:
        waited = wait_until_ready(lambda: http_probe(url, verify=target.tls_verify()))
        log.info("registry at %s answers /v2/ after %.2fs", url, waited)
    return time.monotonic() - t0

