"""Tasks of the rollback-registry flow."""

from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from regpatch.digest import Digest
from regpatch.reference import Repository, Tag
from regpatch.rollback import check_complete_image, flip_tag, rollback_target
from regpatch.target import RegistryTarget

_opts = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="choose-rollback-target", **_opts)
def choose_target(target: RegistryTarget, repository: str, tag: str,
                  to: Optional[str]) -> tuple[Optional[Digest], Digest]:
    """The tag's current digest and the one to go back to (--to, else history)."""
    current, dest = rollback_target(target.store(), Repository.parse(repository), Tag.parse(tag),
                                    Digest.parse(to) if to else None)
    get_run_logger().info("%s:%s: %s -> %s", repository, tag, current or "(no tag)", dest)
    return current, dest


@task(name="check-image", **_opts)
def check_image(target: RegistryTarget, repository: str, digest: Digest) -> None:
    """Refuse to flip to an image whose manifests, links or blobs are not all in place."""
    top = check_complete_image(target.store(), Repository.parse(repository), digest)
    get_run_logger().info("%s@%s is complete (%s)", repository, digest, top.media_type)


@task(name="flip-tag", **_opts)
def flip(target: RegistryTarget, repository: str, tag: str, digest: Digest) -> bool:
    """Tag index link, then current/link."""
    return flip_tag(target.store(), Repository.parse(repository), Tag.parse(tag), digest)
