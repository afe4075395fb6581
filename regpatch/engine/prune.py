"""Retention: unlink the images regpatch put in a storage and no longer needs.

regpatch never deletes anything while it patches: the previous image stays linked so
that a rollback is one command. ``prune`` is the one place that lets go, by a policy:

- every image a tag points at is kept (a ``current/link`` is never touched);
- for each tag, the ``keep`` images it pointed at before its current one (the rollback
  depth, from the storage's history);
- images regpatch put there less than ``keep_days`` days ago;
- every child of a kept image index;
- images regpatch's history does not say it wrote stay, unless ``also_unrecorded``.

The rest loses its revision link and every tag index entry naming it, recorded in the
history as ``pruned`` (written before the links go, so that a killed run is finished by
the next one and recorded once). Blobs are not deleted: the registry's own garbage
collection frees those no kept manifest references (``regpatch gc``), and the plan says
how many bytes that is. Without ``apply`` nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional

from regpatch.digest import Digest
from regpatch.manifest import ImageIndex
from regpatch.params import ChangeParams, RetentionParams
from regpatch.progress import human
from regpatch.reference import Repository, Tag
from regpatch.signing.replay import parse_time
from regpatch.storage.history import HistoryEntry, read_history, record_history
from regpatch.storage.lock import repository_lock
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")

WRITTEN_BY_REGPATCH = ("patch", "restore")  # history actions whose ``new`` image regpatch wrote
MAX_REPOSITORIES = 100_000  # folders walked under repositories/


@dataclass
class PrunedImage:
    repository: str
    digest: str
    tag: Optional[str]          # the tag whose history named it (None: a child, or unrecorded)
    written_by_regpatch: bool
    children: tuple[str, ...] = ()


@dataclass
class PrunePlan:
    images: list[PrunedImage] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)   # repository -> kept digests
    skipped_unrecorded: int = 0
    freed_bytes: int = 0          # blobs no manifest references once pruned (what gc frees)
    freed_blobs: int = 0
    applied: bool = False

    def render(self) -> str:
        lines = []
        for repo, kept in sorted(self.kept.items()):
            lines.append(f"{repo}: keeps {len(kept)} image(s)")
        verb = "pruned" if self.applied else "would prune"
        for img in self.images:
            child = f" (+{len(img.children)} child manifests)" if img.children else ""
            where = f" of {img.repository}:{img.tag}" if img.tag else f" of {img.repository}"
            lines.append(f"  {verb} {img.digest}{where}{child}")
        if self.skipped_unrecorded:
            lines.append(f"  {self.skipped_unrecorded} image(s) regpatch did not write are kept "
                         "(--also-unrecorded to prune them too)")
        lines.append(f"{verb} {len(self.images)} image(s); the registry's garbage collection would then free "
                     f"{self.freed_blobs} blob(s), {human(self.freed_bytes)}"
                     + ("" if self.applied else "; nothing was written (--apply to prune)"))
        return "\n".join(lines)


def _timeline(entries: Iterable[HistoryEntry]) -> list[str]:
    """The digests a tag pointed at, oldest first (consecutive repeats folded)."""
    out: list[str] = []
    for e in entries:
        if e.action == "pruned":
            continue
        for d in ([e.old] if not out and e.old else []) + [e.new]:
            if d and (not out or out[-1] != d):
                out.append(d)
    return out


def _previous(timeline: list[str], current: Optional[str], keep: int) -> list[str]:
    out: list[str] = []
    for d in reversed(timeline):
        if len(out) >= keep:
            break
        if d != current and d not in out:
            out.append(d)
    return out


def _children(store: RegistryStore, digest: str) -> list[str]:
    m = store.stored_manifest(Digest.parse(digest))
    return [str(d.digest) for d in m.manifests] if isinstance(m, ImageIndex) else []


def _revisions(store: RegistryStore, repo: Repository) -> list[str]:
    return [str(d) for d in store.linked_revisions(repo)]


def _kept(store: RegistryStore, repo: Repository, history: list[HistoryEntry], keep: int,
          keep_days: Optional[float], now: datetime) -> set[str]:
    kept: set[str] = set()
    for tag in store.tags(repo):
        current = store.current_tag(repo, tag)
        if current is not None:
            kept.add(str(current))
        timeline = _timeline(e for e in history if e.tag == tag.name)
        kept.update(_previous(timeline, str(current) if current else None, keep))
    if keep_days is not None:
        horizon = now - timedelta(days=keep_days)
        for e in history:
            t = parse_time(e.time)
            if t is not None and t >= horizon:
                kept.add(e.new)
    for d in list(kept):
        kept.update(_children(store, d))
    return kept


def _tags_naming(store: RegistryStore, repo: Repository, digest: str) -> list[str]:
    """Tags whose index lists ``digest`` (the tags that once held it)."""
    d = Digest.parse(digest)
    return [t.name for t in store.tags(repo) if store.read_link(store.layout.tag_index_link(repo, t, d)) == d]


def plan_repository(store: RegistryStore, repo: Repository, policy: RetentionParams, now: datetime,
                    plan: PrunePlan) -> None:
    history = read_history(store.layout, repo.name)
    kept = _kept(store, repo, history, policy.keep, policy.keep_days, now)
    written = {e.new: e.tag for e in history if e.action in WRITTEN_BY_REGPATCH}
    revisions = _revisions(store, repo)
    children_of: dict[str, list[str]] = {d: _children(store, d) for d in revisions if d not in kept}
    child_digests = {c for cs in children_of.values() for c in cs}
    plan.kept[repo.name] = sorted(d for d in revisions if d in kept)
    for d in revisions:
        if d in kept or d in child_digests:
            continue  # a child goes with its index, or stays with it
        if d not in written and not policy.also_unrecorded:
            plan.skipped_unrecorded += 1
            continue
        tag = written.get(d) or next(iter(_tags_naming(store, repo, d)), None)
        children = tuple(c for c in children_of.get(d, []) if c not in kept and c in revisions)
        plan.images.append(PrunedImage(repo.name, d, tag, d in written, children))


def _referenced(store: RegistryStore, digest: str) -> set[str]:
    """The blobs a manifest keeps alive for garbage collection: itself, its config, its layers."""
    m = store.stored_manifest(Digest.parse(digest))
    if m is None:
        return {digest}
    if isinstance(m, ImageIndex):
        return {digest}  # its children are manifests with their own revision links
    return {digest} | {str(d.digest) for d in m.blobs()}


def _freed(store: RegistryStore, plan: PrunePlan, repositories: list[Repository]) -> None:
    pruned = {d for img in plan.images for d in (img.digest, *img.children)}
    alive: set[str] = set()
    for repo in repositories:
        for d in _revisions(store, repo):
            if d not in pruned:
                alive |= _referenced(store, d)
    gone: set[str] = set()
    for d in pruned:
        gone |= _referenced(store, d)
    for d in sorted(gone - alive):
        size = store.blob_size(Digest.parse(d))
        if size is not None:
            plan.freed_blobs += 1
            plan.freed_bytes += size


def plan_prune(store: RegistryStore, policy: RetentionParams, repositories: Optional[list[Repository]] = None,
               *, now: Optional[datetime] = None) -> PrunePlan:
    """What a prune would unlink, and what the garbage collection would then free. Reads only."""
    now = now or datetime.now(timezone.utc)
    every = list(store._repositories(MAX_REPOSITORIES))
    repos = repositories if repositories is not None else every
    plan = PrunePlan()
    for repo in repos:
        plan_repository(store, repo, policy, now, plan)
    _freed(store, plan, every)
    return plan


def _already_recorded(store: RegistryStore, img: PrunedImage) -> bool:
    """The tag's last history line about this image is its ``pruned`` line (a killed prune)."""
    for e in reversed(read_history(store.layout, img.repository, img.tag)):
        if img.digest in (e.old, e.new):
            return e.action == "pruned" and e.old == img.digest
    return False


def _unlink_image(store: RegistryStore, repo: Repository, digest: Digest) -> None:
    layout = store.layout
    for tag in store.tags(repo):
        store.remove_link(layout.tag_index_link(repo, tag, digest))
    store.remove_link(layout.revision_link(repo, digest))


def _relink_if_tagged(store: RegistryStore, repo: Repository, img: PrunedImage) -> bool:
    """A tag that names the image now (moved there by another writer, the registry's API,
    while it was being unlinked): its links are written back and the image counts as kept.
    A prune is never reported over a tag."""
    digests = [Digest.parse(d) for d in (img.digest, *img.children)]
    for tag in store.tags(repo):
        if store.current_tag(repo, tag) in digests:
            for d in digests:
                store.write_link(store.layout.revision_link(repo, d), d)
            top = digests[0]
            store.write_link(store.layout.tag_index_link(repo, tag, top), top)
            log.warning("kept %s@%s: tag %s was moved to it while it was being pruned (by another writer); "
                        "its links are back", repo, img.digest, tag.name)
            return True
    return False


def apply_prune(store: RegistryStore, plan: PrunePlan, policy: RetentionParams, *, lock_timeout: float = 300.0,
                now: Optional[datetime] = None, change: Optional[ChangeParams] = None) -> PrunePlan:
    """Unlink what ``plan`` names and the storage, read again under each repository's lock,
    still says may go; each image's ``pruned`` history line first (with who asked and why,
    ``change``), so that a killed run is finished, and recorded once, by the next. Returns
    what was done."""
    store.claim_state_dir()
    now = now or datetime.now(timezone.utc)
    done = PrunePlan(kept=plan.kept, skipped_unrecorded=plan.skipped_unrecorded, applied=True)
    planned: dict[str, set[str]] = {}
    for img in plan.images:
        planned.setdefault(img.repository, set()).add(img.digest)
    for name in sorted(planned):
        repo = Repository.parse(name)
        with repository_lock(store.layout, repo, timeout=lock_timeout):
            fresh = PrunePlan()
            plan_repository(store, repo, policy, now, fresh)  # the storage decides, not the plan
            for img in fresh.images:
                if img.digest not in planned[name]:
                    continue  # not in the plan shown (a dry run's promise is kept)
                _prune_image(store, repo, img, policy, change)
                if not _relink_if_tagged(store, repo, img):
                    done.images.append(img)
            for gone in planned[name] - {img.digest for img in fresh.images}:
                log.info("kept %s@%s: the storage changed since the plan (it is kept by the policy now)",
                         repo, gone)
    _freed(store, done, list(store._repositories(MAX_REPOSITORIES)))
    return done


def _prune_image(store: RegistryStore, repo: Repository, img: PrunedImage, policy: RetentionParams,
                 change: Optional[ChangeParams]) -> None:
    digest = Digest.parse(img.digest)
    if img.tag and not _already_recorded(store, img):
        tag = Tag.parse(img.tag)
        record_history(store, repo, tag, digest, store.current_tag(repo, tag) or digest, action="pruned",
                       source=f"regpatch prune ({policy.describe()})",
                       requested_by=change.requested_by if change else None, reason=change.reason if change else None)
    elif not img.tag:
        log.info("%s@%s was never tagged: its prune has no history line", repo, digest)
    for child in img.children:
        _unlink_image(store, repo, Digest.parse(child))
    _unlink_image(store, repo, digest)
    log.info("pruned %s@%s: revision link and tag index entries removed%s", repo, digest,
             f" (and {len(img.children)} child manifests)" if img.children else "")
