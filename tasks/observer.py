"""The engine's steps as Prefect task runs, and the run's summary as an artifact.

``PrefectObserver.run`` wraps each step of ``regpatch.engine`` in a task run named
after the step: nothing is cached, no result is persisted, and a task run has no
inputs (the step is a closure), so no parameter value, secret or not, ever becomes
a task input or a cache key. Retries stay in the core (tenacity around single I/O
calls); no Prefect retries are stacked on top.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, TypeVar

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from regpatch.progress import Progress

T = TypeVar("T")


class PrefectObserver:
    def __init__(self) -> None:
        self._progress = Progress()

    def run(self, step: str, fn: Callable[[], T]) -> T:
        return task(name=step, cache_policy=NO_CACHE, persist_result=False, retries=0)(fn)()

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        return self._progress(label, total)


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return key[:100]


def publish_summary(result, kind: str = "patch") -> None:
    """The run's summary (the same markdown the command line writes to the state folder)."""
    if result is None:
        return
    create_markdown_artifact(key=artifact_key(kind, result.repository, result.tag), markdown=result.markdown(),
                             description=f"regpatch {kind} {result.repository}:{result.tag}")
    if kind == "patch":  # machine-readable, read back by the rollout flow from a deployment run
        create_table_artifact(key=artifact_key(kind, result.repository, result.tag)[:93] + "-result",
                              description="patch result", table=[{
                                  "old": result.old, "new": result.new, "changed": result.changed,
                                  "dry_run": result.dry_run, "bytes_copied": result.bytes_copied,
                                  "error": result.error}])


def s3_options_for(bundle: str, s3) -> Optional[object]:
    """The core's S3Options for an s3:// bundle; a credentials block is read here, inside
    the run, so its secret never travels as a parameter."""
    if not bundle.startswith("s3://"):
        return None
    if s3.aws_credentials_block:
        from tasks.s3_support import load_aws_credentials_block

        credentials, region = load_aws_credentials_block(s3.aws_credentials_block)
        return s3.options(credentials=credentials, region=region)
    return s3.options()
