"""Carry out a PatchPlan in the crash-safe order of DESIGN.md.

    verify_blobs   every byte checked: bundle blobs are hashed while they are
                   copied into the staging folder (one read pass), registry
                   blobs the new image reuses are hashed in place. No write
                   under docker/registry/v2 happens before this succeeds.
    install_blobs  1. blob data: staged files renamed into blobs/, manifests written
    write_links    2. _layers links  3. revision links (children first)
                   4. tag index link 5. tag current/link: the commit point

Each step is idempotent: a re-run after a crash redoes only what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Optional

from .digest import Digest, io_retry
from .plan import COPY, PRESENT, REPAIR, PatchPlan
from .faults import checkpoint
from .store import RegistryStore

log = logging.getLogger("regpatch.apply")

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class BlobResult:
    digest: Digest
    size: int
    action: str      # "copied", "skipped", "repaired"
    seconds: float = 0.0
    source: str = ""


@dataclass
class ApplyReport:
    blobs: list[BlobResult] = field(default_factory=list)
    manifests_written: list[Digest] = field(default_factory=list)
    links_written: list[str] = field(default_factory=list)
    links_unchanged: int = 0

    @property
    def bytes_copied(self) -> int:
        return sum(b.size for b in self.blobs if b.action in ("copied", "repaired"))

    @property
    def changed(self) -> bool:
        return bool(self.manifests_written or self.links_written or self.bytes_copied)


BLOB_WORKERS = 2  # two blobs at once: hashing is the bottleneck and the machines have 2+ cores


class _Aborted(Exception):
    """Another blob failed: this one stops at its next chunk."""


def verify_blobs(plan: PatchPlan, store: RegistryStore, *, dry_run: bool = False,
                 progress: ProgressFactory = _no_progress) -> list[BlobResult]:
    """Check every blob of the plan. Bundle blobs are staged unless dry_run.

    Local bundles are staged two blobs at a time (largest first); a network
    source, which parallelises its own downloads, one at a time. Raises
    DigestMismatch / SizeMismatch naming the file at the first bad blob;
    nothing under docker/registry/v2 has been written at that point.
    """
    source = plan.source
    abort = threading.Event()

    def guarded(bar: Callable[[int], None]) -> Callable[[int], None]:
        def advance(n: int) -> None:
            if abort.is_set():
                raise _Aborted()
            bar(n)
        return advance

    def one(step) -> Optional[BlobResult]:
        try:
            return _verify_one(step, plan, store, dry_run, lambda label, total: guarded(progress(label, total)))
        except _Aborted:
            return None
        except BaseException:
            abort.set()
            raise

    steps = [s for s in plan.blobs if s.action in (PRESENT, COPY, REPAIR)]
    local = getattr(source, "parallel_reads", False) or all(  # local folders, local plain archives
        s.source is None or source.local_path(s.source.name) is not None for s in steps)
    workers = BLOB_WORKERS if local and len(steps) > 1 else 1
    if workers == 1:
        return [r for r in map(one, steps) if r is not None]
    order = sorted(range(len(steps)), key=lambda i: -steps[i].size)
    results: dict[int, Optional[BlobResult]] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blob") as pool:
        futures = {pool.submit(one, steps[i]): i for i in order}
        for fut in as_completed(futures):
            try:
                results[futures[fut]] = fut.result()
            except BaseException as e:  # the first failure is raised once all have stopped
                errors.append(e)
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(steps)) if results.get(i) is not None]


def _verify_one(step, plan: PatchPlan, store: RegistryStore, dry_run: bool,
                progress: ProgressFactory) -> Optional[BlobResult]:
    source = plan.source
    t0 = time.monotonic()
    if step.action == PRESENT:
        store.verify_blob(step.digest, step.size, progress=progress(f"verify {step.digest.short}", step.size),
                          remember=not dry_run)
        log.info("registry already holds %s (%s B): verified", step.digest, f"{step.size:,}")
        return BlobResult(step.digest, step.size, "skipped", time.monotonic() - t0)
    assert step.source is not None
    what = f"bundle file {source.describe(step.source.name)}"
    bar = progress(f"{'check' if dry_run else 'stage'} {step.source.name}", step.size)
    if dry_run:
        source.hash(step.source.name, expected=step.digest, expected_size=step.size, what=what, progress=bar)
    elif store.staged_path(step.digest) is not None:
        log.info("%s (%s, %s B) already staged and verified by an earlier run: not copied again",
                 what, step.digest, f"{step.size:,}")
        return BlobResult(step.digest, step.size, "resumed", 0.0, step.source.name)
    else:
        _stage(store, source, step, what, _with_checkpoints(bar))
    secs = time.monotonic() - t0
    log.info("%s %s: %s B verified as %s in %.2fs (%.0f MB/s)", "checked" if dry_run else "staged",
             what, f"{step.size:,}", step.digest, secs, step.size / 1e6 / max(secs, 1e-6))
    return BlobResult(step.digest, step.size, "verified", secs, step.source.name)


def _with_checkpoints(bar: Callable[[int], None], every: int = 8 << 20) -> Callable[[int], None]:
    """Progress callback that also passes a crash checkpoint every ``every`` bytes."""
    state = {"done": 0}

    def advance(n: int) -> None:
        bar(n)
        before = state["done"] // every
        state["done"] += n
        if state["done"] // every != before:
            checkpoint("staging")

    return advance


@io_retry
def _stage(store: RegistryStore, source, step, what, bar) -> None:
    if getattr(source, "resumable", False):  # network sources (S3): resumable, cached, own retries
        source.stage_blob(store, step.digest, step.size, step.source.name, what=what, progress=bar)
        return
    store.stage_blob(step.digest, step.size, lambda: source.open(step.source.name), what=what,
                     progress=bar)


def install_blobs(plan: PatchPlan, store: RegistryStore, *,
                  progress: ProgressFactory = _no_progress) -> ApplyReport:
    """Step 1 of the write order: blob data, then manifest blobs (children first).

    A blob that is neither staged nor installed (its staged copy was removed,
    or verify_blobs' result came from a cache) is staged again first: nothing
    unverified is ever installed.
    """
    report = ApplyReport()
    layout = store.layout
    for step in plan.blobs:
        if step.action == PRESENT:
            report.blobs.append(BlobResult(step.digest, step.size, "skipped"))
            continue
        if step.action not in (COPY, REPAIR):
            continue
        staged = store.staged_path(step.digest)
        if staged is None:
            if store.blob_size(step.digest) == step.size and step.action != REPAIR:
                report.blobs.append(BlobResult(step.digest, step.size, "skipped"))  # installed by a killed run
                continue
            assert step.source is not None
            what = f"bundle file {plan.source.describe(step.source.name)}"
            _stage(store, plan.source, step, what, progress(f"stage {step.source.name}", step.size))
            staged = store.layout.staged_blob(step.digest)
        t0 = time.monotonic()
        store.install_staged(step.digest, staged, replace=step.action == REPAIR)
        action = "repaired" if step.action == REPAIR else "copied"
        log.info("%s blob %s (%s B) -> %s", action, step.digest, f"{step.size:,}",
                 layout.relative(layout.blob_data(step.digest)))
        report.blobs.append(BlobResult(step.digest, step.size, action, time.monotonic() - t0,
                                       step.source.name if step.source else ""))
    for m in plan.manifests:
        if store.write_manifest_blob(m.manifest.digest, m.manifest.raw):
            report.manifests_written.append(m.manifest.digest)
            log.info("wrote manifest blob %s (%s B)", m.manifest.digest, f"{len(m.manifest.raw):,}")
    return report


def write_links(plan: PatchPlan, store: RegistryStore, report: Optional[ApplyReport] = None) -> ApplyReport:
    """Steps 2-5: layer links, revision links, tag index, and current/link last."""
    report = report or ApplyReport()
    for link in plan.links:  # already in the crash-safe order
        if store.write_link(link.path, link.digest):
            report.links_written.append(store.layout.relative(link.path))
            log.info("wrote %s link %s -> %s", link.kind, store.layout.relative(link.path), link.digest)
        else:
            report.links_unchanged += 1
    if plan.old != plan.new:
        log.info("tag %s:%s now points at %s (was %s)", plan.repository, plan.tag, plan.new,
                 plan.old or "nothing")
    return report
