"""Carry out a PatchPlan in the crash-safe order (docs/architecture.md, "The write order").

    verify_blobs   every byte checked: bundle blobs are hashed while they are
                   copied into the staging folder (one read pass), registry
                   blobs the new image reuses are hashed in place. No write
                   under docker/registry/v2 happens before this succeeds.
    install_blobs  1. blob data: staged files renamed into blobs/, manifests written
    write_links    2. _layers links  3. revision links (children first)
    (the engine then verifies the image by digest, and only then moves the tag:
     rollback.flip_tag writes 4. the tag index link and 5. tag current/link, the
     commit point)

Each step is idempotent: a re-run after a crash redoes only what is missing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from regpatch.bundle.model import CONSUMED_NOTE
from regpatch.digest import Digest
from regpatch.engine.plan import COPY, PRESENT, PROVE, REPAIR, TAG_CURRENT, TAG_INDEX, PatchPlan
from regpatch.errors import BlobMissing
from regpatch.hashing import io_retry
from regpatch.hooks import checkpoint
from regpatch.manifest import DOCKER_CONFIG, OCI_CONFIG
from regpatch.storage.state import actor, now_iso
from regpatch.storage.store import RegistryStore

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


def verify_blobs(plan: PatchPlan, store: RegistryStore, *, dry_run: bool = False, consume: bool = False,
                 progress: ProgressFactory = _no_progress) -> list[BlobResult]:
    """Check every blob of the plan. Bundle blobs are staged unless dry_run; with
    ``consume``, layer files of a local bundle are renamed into the staging folder and
    hashed there instead of copied (see ``consumable``).

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
            return _verify_one(step, plan, store, dry_run, lambda label, total: guarded(progress(label, total)),
                               consume, step.digest in earlier)
        except _Aborted:
            return None
        except BaseException:
            abort.set()
            raise

    steps = [s for s in plan.blobs if s.action in (PRESENT, PROVE, COPY, REPAIR)]
    # staged before this run began (an interrupted run); a source that stages several blobs
    # in one pass (a compressed archive) stages the others during this run
    earlier = set() if dry_run else {s.digest for s in steps if store.staged_path(s.digest) is not None}
    local = getattr(source, "parallel_reads", False) or all(  # local folders, local plain archives
        s.source is None or source.local_path(s.source.name) is not None for s in steps)
    workers = BLOB_WORKERS if local and len(steps) > 1 else 1
    if workers == 1:
        return [r for r in map(one, steps) if r is not None]
    order = sorted(range(len(steps)), key=lambda i: -steps[i].size)
    results: dict[int, Optional[BlobResult]] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blob") as pool:
        futures = {pool.submit(contextvars.copy_context().run, one, steps[i]): i for i in order}
        for fut in as_completed(futures):
            try:
                results[futures[fut]] = fut.result()
            except BaseException as e:  # the first failure is raised once all have stopped
                errors.append(e)
    if errors:
        raise errors[0]
    return [r for i in range(len(steps)) if (r := results.get(i)) is not None]


def consumable(plan: PatchPlan, step) -> bool:
    """--consume takes layer files of a local bundle; manifests and configs stay (a
    re-run reads them), and so does anything that is not a plain local file."""
    return (step.source is not None and step.action in (COPY, REPAIR) and not _is_config(step.media_type)
            and plan.source.local_path(step.source.name) is not None)


def _is_config(media_type: str) -> bool:
    return media_type in (DOCKER_CONFIG, OCI_CONFIG) or media_type.endswith(".config.v1+json")


def _verify_one(step, plan: PatchPlan, store: RegistryStore, dry_run: bool,
                progress: ProgressFactory, consume: bool = False, staged_earlier: bool = True) -> Optional[BlobResult]:
    source = plan.source
    t0 = time.monotonic()
    if step.action == PROVE:  # another repository's blob: the bundle must have the very bytes
        what = f"bundle file {source.describe(step.source.name)}"
        source.hash(step.source.name, expected=step.digest, expected_size=step.size, what=what,
                    progress=progress(f"prove {step.source.name}", step.size))
        log.info("%s proves blob %s, which the storage holds for another repository", what, step.digest)
    if step.action in (PRESENT, PROVE):
        store.verify_blob(step.digest, step.size, progress=progress(f"verify {step.digest.short}", step.size),
                          remember=not dry_run)
        log.info("registry already holds %s (%s B): verified", step.digest, f"{step.size:,}")
        return BlobResult(step.digest, step.size, "skipped", time.monotonic() - t0)
    if step.source is None:  # taken by an earlier run (--consume): only its staged copy is left
        if not store.recheck_staged(step.digest, step.size, progress(f"recheck {step.digest.short}", step.size)):
            raise BlobMissing(step.digest, step.referenced_by, "the bundle no longer holds it (consumed?) and "
                              "its staged copy is gone or damaged; use the original bundle")
        return BlobResult(step.digest, step.size, "resumed", 0.0)
    what = f"bundle file {source.describe(step.source.name)}"
    bar = progress(f"{'check' if dry_run else 'stage'} {step.source.name}", step.size)
    if dry_run:
        source.hash(step.source.name, expected=step.digest, expected_size=step.size, what=what, progress=bar)
    elif store.staged_path(step.digest) is not None and not staged_earlier:
        # the source staged it during this run, in the same pass as another blob
        log.info("%s (%s, %s B) staged and verified in the same pass through the bundle",
                 what, step.digest, f"{step.size:,}")
        return BlobResult(step.digest, step.size, "verified", 0.0, step.source.name)
    elif staged_earlier and store.recheck_staged(step.digest, step.size, bar):
        log.info("%s (%s, %s B) already staged by an earlier run: hashed again, not copied again",
                 what, step.digest, f"{step.size:,}")
        return BlobResult(step.digest, step.size, "resumed", 0.0, step.source.name)
    elif consume and consumable(plan, step):
        path = source.local_path(step.source.name)
        assert path is not None  # consumable() checked it
        staged = store.adopt_blob(step.digest, step.size, path, what=what, progress=_with_checkpoints(bar))
        _note_consumed(path, step, store.layout.relative(staged))
        log.info("consumed %s: renamed into the storage's staging folder", what)
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


def _note_consumed(path, step, where: str) -> None:
    """The bundle's root folder keeps a line per file taken from it (what, when, where to)."""
    root = Path(path).parents[len(Path(step.source.name).parts) - 1]  # the bundle folder itself
    line = json.dumps({"time": now_iso(), "file": step.source.name, "digest": str(step.digest),
                       "size": step.size, "moved_to": where, "by": actor()}) + "\n"
    try:
        with open(root / CONSUMED_NOTE, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as e:
        log.warning("could not note the consumed file in %s: %s", root, e)


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
        if step.action in (PRESENT, PROVE):
            report.blobs.append(BlobResult(step.digest, step.size, "skipped"))
            continue
        if step.action not in (COPY, REPAIR):
            continue
        staged = store.staged_path(step.digest)
        if staged is None and store.recheck_staged(step.digest, step.size):
            staged = store.layout.staged_blob(step.digest)  # staged, but no marker proves it: hashed again
        if staged is None:
            if store.blob_size(step.digest) == step.size and step.action != REPAIR:
                store.verify_blob(step.digest, step.size)  # installed by a killed (or concurrent) run
                report.blobs.append(BlobResult(step.digest, step.size, "skipped"))
                continue
            if step.source is None:
                raise BlobMissing(step.digest, step.referenced_by, "its staged copy disappeared and the bundle "
                                  "no longer holds it; use the original bundle")
            what = f"bundle file {plan.source.describe(step.source.name)}"
            _stage(store, plan.source, step, what, progress(f"stage {step.source.name}", step.size))
            staged = store.layout.staged_blob(step.digest)
        t0 = time.monotonic()
        if not store.install_staged(step.digest, staged, size=step.size, replace=step.action == REPAIR):
            report.blobs.append(BlobResult(step.digest, step.size, "skipped"))  # another run was first
            continue
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
    """Steps 2-3: layer links, revision links. Never the tag's index link nor its
    current/link (engine.tags.flip_tag writes both, at publish, after verification): the image becomes
    pullable by digest, the tag still serves the old one, and a new tag appears in the
    registry's tag list only once it points at a proven image."""
    report = report or ApplyReport()
    for link in plan.links:  # already in the crash-safe order
        if link.kind in (TAG_INDEX, TAG_CURRENT):  # written with the tag, after verification
            continue
        if store.write_link(link.path, link.digest):
            report.links_written.append(store.layout.relative(link.path))
            log.info("wrote %s link %s -> %s", link.kind, store.layout.relative(link.path), link.digest)
        else:
            report.links_unchanged += 1
    return report
