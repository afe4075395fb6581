"""Rollback: re-point a tag at an image the repository still holds completely.

A patch never removes anything, so the previous image stays complete; this
module checks that before the flip (a rollback must not create the broken
image it is meant to cure) and flips the tag in the crash-safe order: tag
index link, then current/link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import StorageError, TagMoved, TagRaced, UsageError
from regpatch.hooks import hook_point
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, Manifest, parse_manifest
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.storage.history import HistoryEntry, last_patch, pruned_when, read_history, record_history
from regpatch.storage.journal import Journal
from regpatch.storage.lock import check_lock_held
from regpatch.storage.store import RegistryStore
from regpatch.storage.tagswap import TagSwap

log = logging.getLogger("regpatch.rollback")


class ImageIncomplete(StorageError):
    pass


def _load_manifest(store: RegistryStore, repo: Repository, digest: Digest) -> Manifest:
    layout = store.layout
    if store.read_link(layout.revision_link(repo, digest)) != digest:
        pruned = pruned_when(layout, repo, digest)
        if pruned is not None:
            raise ImageIncomplete(f"{repo}@{digest} was pruned on {pruned.time} by {pruned.actor} "
                                  f"({pruned.source}): its revision link is gone and the registry's "
                                  "garbage collection may have freed its blobs; patch it back with its "
                                  "bundle instead of rolling back")
        raise ImageIncomplete(f"{repo}@{digest} is not a manifest of repository {repo} "
                              "(no revision link)")
    if store.blob_size(digest) is None:
        raise ImageIncomplete(f"manifest blob {digest} of {repo} is missing from the storage")
    raw = store.read_blob(digest, MAX_MANIFEST_SIZE)
    if Digest.of_bytes(raw) != digest:
        raise ImageIncomplete(f"manifest blob {digest} of {repo} is corrupt (its bytes hash to "
                              f"{Digest.of_bytes(raw)})")
    return parse_manifest(raw, what=f"registry manifest {digest}")


def check_complete_image(store: RegistryStore, repo: Repository, digest: Digest) -> Manifest:
    """Raise ImageIncomplete unless every manifest, link and blob of the image is in place."""
    top = _load_manifest(store, repo, digest)
    images = [top]
    if isinstance(top, ImageIndex):
        images = [_load_manifest(store, repo, d.digest) for d in top.manifests]
    layout = store.layout
    for img in images:
        if isinstance(img, ImageIndex):
            raise ImageIncomplete(f"{repo}@{img.digest}: nested image indexes are not supported")
        for desc in img.blobs():
            size = store.blob_size(desc.digest)
            linked = store.read_link(layout.layer_link(repo, desc.digest)) == desc.digest
            if desc.is_foreign and size is None:
                continue
            if size is None or not linked:
                raise ImageIncomplete(f"{repo}@{digest} is incomplete: blob {desc.digest} is "
                                      f"{'missing' if size is None else 'not linked in the repository'}")
            if size != desc.size:
                raise ImageIncomplete(f"{repo}@{digest} is incomplete: blob {desc.digest} has "
                                      f"{size} bytes, the manifest says {desc.size}")
    return top


@dataclass(frozen=True)
class RollbackChoice:
    """What a rollback does, decided from the storage and the history (a journal only tells
    whether a rollback that already moved the tag was killed before its history line)."""
    current: Optional[Digest]      # what the tag holds now
    dest: Digest                   # the image the tag must hold
    old: Optional[Digest]          # the history line's "old": what the rollback moves the tag from
    done: Optional[str] = None     # set: nothing to do, and why (the tag already holds dest)
    finish: bool = False           # the tag holds dest already: record a killed rollback's history line
    recorded: bool = False         # (done) the history's last line of the tag is this rollback


def _killed_rollback(journal: Optional[Journal], dest: Digest) -> Optional[Digest]:
    """The digest a rollback to ``dest`` moved the tag from, when its journal says it was under
    way and never finished (it moved the tag and was killed before its history line)."""
    if journal is None or journal.target != str(dest) or journal.status == "complete" or not journal.old:
        return None
    return Digest.parse(journal.old)


def choose_rollback(store: RegistryStore, repo: Repository, tag: Tag, to: Optional[Digest],
                    journal: Optional[Journal] = None) -> RollbackChoice:
    """The rollback to do: ``to``, else the undo of the last patch the history records.

    A plain rollback undoes the last patch (old -> new): from new to old. When the tag holds
    old already and the history's last line of the tag is the undo of that patch, there is
    nothing to do (going further back needs ``--to``); when it holds old and ``journal`` says
    a rollback to old was under way, that killed rollback is finished (its history line).
    """
    current = store.current_tag(repo, tag)
    entries = read_history(store.layout, repo.name, tag.name)
    last = entries[-1] if entries else None
    if to is not None:
        if current != to:
            return RollbackChoice(current, to, current)
        if last is not None and last.action == "rollback" and last.new == str(to):
            return RollbackChoice(current, to, current, recorded=True,
                                  done=f"{repo}:{tag} already holds {to}: rolled back to it on {last.time}; "
                                       "nothing to do")
        killed = _killed_rollback(journal, to)
        if killed is not None:
            return RollbackChoice(current, to, killed, finish=True)
        return RollbackChoice(current, to, current, done=f"{repo}:{tag} already holds {to}; nothing to do")
    if current is None and store.layout.tag_current_link(repo, tag).exists():
        raise UsageError(f"the current link of {repo}:{tag} is malformed (the warning above shows it), so the "
                         "history cannot say which image came before it; name the image to go back to with "
                         f"{opt.to} sha256:...")
    if last is not None and last.action == "raced":
        raise UsageError(f"the last change of {repo}:{tag} was a race with another writer ({last.time}: regpatch "
                         f"moved it to {last.new}, the other writer wrote {last.other or 'something else'}): "
                         f"regpatch does not choose between them; name the image with {opt.to} sha256:...")
    return _undo_last_patch(store, repo, tag, current, entries, journal)


def _undo_last_patch(store: RegistryStore, repo: Repository, tag: Tag, current: Optional[Digest],
                     entries: list[HistoryEntry], journal: Optional[Journal]) -> RollbackChoice:
    patch = last_patch(entries)
    if patch is None:
        raise UsageError(f"no patch of {repo}:{tag} is recorded in the history ({store.layout.history}); name "
                         f"the image to go back to with {opt.to} sha256:...")
    if patch.old is None:
        raise UsageError(f"the last patch of {repo}:{tag} ({patch.time}) created the tag: there is no earlier "
                         f"image to go back to; name one with {opt.to} sha256:...")
    old, new = Digest.parse(patch.old), Digest.parse(patch.new)
    if current == new:
        return RollbackChoice(current, old, current)
    if current != old:
        raise UsageError(f"{repo}:{tag} holds {current or '(nothing)'}, which the last patch the history records "
                         f"({patch.old} -> {patch.new} on {patch.time}) did not set: another writer moved it; "
                         f"name the image to go back to with {opt.to} sha256:...")
    last = entries[-1]
    if last is not patch and last.action in ("rollback", "restore") and last.old == patch.new \
            and last.new == patch.old:
        return RollbackChoice(current, old, current, recorded=True,
                              done=f"{repo}:{tag} already holds {old}: the patch to {new} was undone ({last.action} "
                                   f"on {last.time}); nothing to do (going further back needs {opt.to})")
    if _killed_rollback(journal, old) == new:
        return RollbackChoice(current, old, new, finish=True)
    return RollbackChoice(current, old, current,
                          done=f"{repo}:{tag} already holds {old}, the image before the last patch, but no "
                               "rollback of that patch is recorded (another writer moved it back?); nothing to do")


@dataclass(frozen=True)
class FlipResult:
    moved: bool                                        # current/link now names the new digest
    links_written: list[Path] = field(default_factory=list)  # the tag's index link and current/link, if written


def flip_tag(store: RegistryStore, repo: Repository, tag: Tag, to: Digest, expected: Optional[Digest], *,
             doing: str = "patch", source: str = "") -> FlipResult:
    """Point the tag at ``to`` if it still holds ``expected`` (None: no tag yet): the tag's
    index link, then current/link, the commit point, through the compare-and-swap of
    ``storage.tagswap``. ``doing`` (patch, rollback, restore) and ``source`` name the move in
    messages and in the history.

    A tag that already holds ``to`` is left alone (``moved`` False). A tag that holds anything
    else was moved by another writer since the caller read it: ``TagMoved``, nothing written
    over it. A write of another writer that lands while the tag moves is detected: the
    history gets a ``raced`` line, ``TagRaced`` names both digests, and the tag is not moved
    again (the operator decides).
    """
    layout = store.layout
    links: list[Path] = []
    check_lock_held(layout, repo)  # a lock whose file vanished is not held: never past the commit point
    with TagSwap(store, repo, tag) as swap:
        current = swap.read(ignore=(to, expected))
        if current == to:
            log.info("tag %s:%s already points at %s", repo, tag, to)
            return FlipResult(False)
        if current != expected:
            raise TagMoved(repo, tag, expected, current, doing=doing, to=to)
        hook_point("tag-flip:read")
        if store.write_link(layout.tag_index_link(repo, tag, to), to):
            links.append(layout.tag_index_link(repo, tag, to))
        outcome = swap.swap(to)
    if not outcome.moved:
        raise TagMoved(repo, tag, expected, outcome.found, doing=doing, to=to)
    links.append(layout.tag_current_link(repo, tag))
    if outcome.interference is not None:
        i = outcome.interference
        log.warning("tag %s:%s: %s", repo, tag, i.seen)
        record_history(store, repo, tag, expected, to, action="raced", source=source,
                       other=i.others[0] if i.others else None)
        raise TagRaced(repo, tag, expected, to, i.others, i.holds, doing=doing)
    log.info("tag %s:%s now points at %s (was %s)", repo, tag, to, expected or "nothing")
    return FlipResult(True, links)
