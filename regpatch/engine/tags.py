"""Rollback: re-point a tag at an image the repository still holds completely.

A patch never removes anything, so the previous image stays complete; this
module checks that before the flip (a rollback must not create the broken
image it is meant to cure) and flips the tag in the crash-safe order: tag
index link, then current/link.
"""

from __future__ import annotations

import logging
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import StorageError, TagMoved, UsageError
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, Manifest, parse_manifest
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.storage.history import previous_digest
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.rollback")


class ImageIncomplete(StorageError):
    pass


def _load_manifest(store: RegistryStore, repo: Repository, digest: Digest) -> Manifest:
    layout = store.layout
    if store.read_link(layout.revision_link(repo, digest)) != digest:
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


def rollback_target(store: RegistryStore, repo: Repository, tag: Tag,
                    to: Optional[Digest]) -> tuple[Optional[Digest], Digest]:
    """(current digest, digest to roll back to): --to, else the previous one from history."""
    current = store.current_tag(repo, tag)
    if to is not None:
        return current, to
    if current is None and store.layout.tag_current_link(repo, tag).exists():
        raise UsageError(f"the current link of {repo}:{tag} is malformed (the warning above shows it), so the "
                         "history cannot say which image came before it; name the image to go back to with "
                         f"{opt.to} sha256:...")
    prev = previous_digest(store.layout, repo, tag, current)
    if prev is None:
        raise UsageError(f"no earlier digest of {repo}:{tag} is recorded in the history "
                         f"({store.layout.history}); name one with {opt.to} sha256:...")
    return current, prev


def flip_tag(store: RegistryStore, repo: Repository, tag: Tag, to: Digest,
             expected: Optional[Digest]) -> bool:
    """Point the tag at ``to`` if it still holds ``expected`` (None: no tag yet):
    tag index link, then current/link, the commit point.

    A tag that holds anything else was moved by another writer (a push) since
    the caller read it: ``TagMoved``, and the tag is left as that writer set it.
    A tag that already holds ``to`` is left alone (False).
    """
    layout = store.layout
    current = store.current_tag(repo, tag)
    if current == to:
        log.info("tag %s:%s already points at %s", repo, tag, to)
        return False
    if current != expected:
        raise TagMoved(repo, tag, expected, current)
    store.write_link(layout.tag_index_link(repo, tag, to), to)
    store.write_link(layout.tag_current_link(repo, tag), to)
    log.info("tag %s:%s now points at %s (was %s)", repo, tag, to, expected or "nothing")
    return True
