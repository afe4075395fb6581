"""PatchPlan: everything a patch will do, computed and validated before any write.

``make_plan`` parses every manifest (the top one and, for an index, every
child), resolves every descriptor to a bundle file or to a blob the registry
already holds, and lists the links to write in the crash-safe order
(docs/architecture.md, "The write order"). It reads, it never writes.

Two rules of the registry's own API are applied, so that regpatch never
stores what a push would have been refused:

* only foreign / non-distributable layers (``FOREIGN_LAYER_TYPES``) may be
  absent from both the bundle and the registry; ``urls`` on any other layer do
  not make it optional (clients fetch ordinary layers from the registry);
* with a ``UrlPolicy`` (the registry config's ``validation.manifests.urls``),
  every URL the registry checks on a push is checked the same way, see
  ``url_refusals``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from regpatch.bundle.model import BundleFile, BundleSource, PatchBundle
from regpatch.digest import Digest
from regpatch.errors import BlobMissing, BundleError, CrossRepositoryBlob, DigestMismatch, ManifestError, SizeMismatch
from regpatch.manifest import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_MANIFEST,
    MAX_MANIFEST_SIZE,
    OCI_LAYER,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    OCI_ND_LAYER,
    OCI_ND_LAYER_TAR,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Manifest,
    parse_manifest,
)
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.registry.url_policy import UrlPolicy, go_url_problem
from regpatch.sanitize import SafeText, escape_controls
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.plan")

# Blob actions
COPY = "copy"          # from the bundle into the registry
PRESENT = "present"    # the registry already holds it (verified before the tag flips)
REPAIR = "repair"      # the registry holds a copy of the wrong size: replaced from the bundle
PROVE = "prove"        # the storage holds it for another repository: the bundle's copy is hashed
                       # (the bundle proves it has the bytes) before this repository links it
FOREIGN = "foreign"    # non-distributable layer in neither: clients fetch it from its urls


@dataclass(frozen=True)
class BlobStep:
    digest: Digest
    size: int
    media_type: str
    action: str
    source: Optional[BundleFile]
    referenced_by: str


@dataclass(frozen=True)
class ManifestStep:
    manifest: Manifest
    in_registry: bool  # manifest blob already stored


TAG_CURRENT = "tag-current"  # the commit point: written last, by rollback.flip_tag
TAG_INDEX = "tag-index"      # written with it: before, a new tag would be listed with no image


@dataclass(frozen=True)
class LinkStep:
    kind: str        # "layer", "revision", TAG_INDEX, TAG_CURRENT
    path: Path
    digest: Digest
    exists: bool     # already holds exactly this digest


@dataclass
class PatchPlan:
    repository: Repository
    tag: Tag
    top: Manifest
    old: Optional[Digest]
    source: BundleSource                   # where COPY/REPAIR blobs are read from
    manifests: list[ManifestStep]          # children first, top last
    blobs: list[BlobStep]                  # unique by digest
    links: list[LinkStep]                  # in write order; tag current last
    warnings: list[str] = field(default_factory=list)

    @property
    def new(self) -> Digest:
        return self.top.digest

    @property
    def to_copy(self) -> list[BlobStep]:
        return [b for b in self.blobs if b.action in (COPY, REPAIR)]

    @property
    def present(self) -> list[BlobStep]:
        return [b for b in self.blobs if b.action in (PRESENT, PROVE)]

    @property
    def bytes_to_copy(self) -> int:
        return sum(b.size for b in self.to_copy)

    @property
    def links_to_write(self) -> list[LinkStep]:
        return [l for l in self.links if not l.exists]

    @property
    def is_noop(self) -> bool:
        return (not self.to_copy and not self.links_to_write
                and all(m.in_registry for m in self.manifests))

    def render(self, layout) -> SafeText:
        """The plan as an operator reads it (dry run, logs); names from the bundle are escaped.
        Log it as ``log.info(SafeText("plan:\\n%s"), plan.render(layout))`` to keep its lines."""
        lines = [f"patch {self.repository}:{self.tag} from {escape_controls(self.source.description)}",
                 f"  tag: {self.old or '(new tag)'} -> {self.new}"
                 + ("  (already current)" if self.old == self.new else "")]
        for m in self.manifests:
            kind = "index" if m.manifest.is_index else "manifest"
            act = "skip (in registry)" if m.in_registry else "write"
            lines.append(f"  {kind:8} {act:20} {m.manifest.digest} {len(m.manifest.raw):>14,} B")
        for b in self.blobs:
            act = {COPY: "copy", PRESENT: "skip (in registry)", REPAIR: "repair (wrong size)",
                   PROVE: "link (bundle proves)",
                   FOREIGN: "foreign (not stored)"}[b.action]
            origin = (f"  from {escape_controls(b.source.name)}"
                      if b.source and b.action in (COPY, REPAIR) else "")
            lines.append(f"  blob     {act:20} {b.digest} {b.size:>14,} B{origin}")
        for l in self.links:
            lines.append(f"  link     {'unchanged' if l.exists else 'write':20} {layout.relative(l.path)}")
        lines.append(f"  total: {len(self.to_copy)} blobs to copy ({self.bytes_to_copy:,} B), "
                     f"{len(self.present)} already present, {len(self.links_to_write)} links to write")
        for w in self.warnings:
            lines.append(f"  warning: {escape_controls(w)}")
        return SafeText("\n".join(lines))  # every name in it escaped: its lines may stay


def make_plan(bundle: PatchBundle, store: RegistryStore, repository: Repository, tag: Tag, *,
              url_policy: Optional[UrlPolicy] = None, ignore_url_policy: bool = False,
              allow_cross_repository: bool = False, trusted_blobs: frozenset = frozenset()) -> PatchPlan:
    """The plan of patching ``repository:tag`` with ``bundle``; reads only.

    ``url_policy``: the registry's ``validation.manifests.urls`` rules (from
    ``regpatch.registry.url_policy.url_policy_from_config``); a manifest whose layer URLs
    the registry's API would refuse on push is refused here with a
    ``ManifestError`` naming the URL and the rule, before anything is read
    from the storage. ``ignore_url_policy`` turns that refusal into a warning
    (the operator's explicit override).
    """
    layout = store.layout
    warnings: list[str] = []
    top = bundle.top
    manifests, images = _manifest_steps(bundle, store)
    _check_urls(images, url_policy, ignore_url_policy, warnings)

    blobs: dict[Digest, BlobStep] = {}
    for img in images:
        for desc in img.blobs():
            if desc.digest in blobs:
                continue
            blobs[desc.digest] = _blob_step(bundle, store, desc, f"manifest {img.digest}", warnings, repository,
                                            lambda d: allow_cross_repository or d in trusted_blobs)

    links: list[LinkStep] = []

    def link(kind: str, path: Path, digest: Digest) -> None:
        links.append(LinkStep(kind, path, digest, store.link_ok(path, digest)))

    for b in blobs.values():
        if b.action != FOREIGN:
            link("layer", layout.layer_link(repository, b.digest), b.digest)
    for m in manifests:  # children first, top last
        link("revision", layout.revision_link(repository, m.manifest.digest), m.manifest.digest)
    link(TAG_INDEX, layout.tag_index_link(repository, tag, top.digest), top.digest)
    link(TAG_CURRENT, layout.tag_current_link(repository, tag), top.digest)

    store.check_paths([l.path for l in links] + [layout.blob_data(b.digest) for b in blobs.values()]
                      + [layout.blob_data(m.manifest.digest) for m in manifests])
    return PatchPlan(repository, tag, top, store.current_tag(repository, tag), bundle.source,
                     manifests, list(blobs.values()), links, warnings)


def _manifest_steps(bundle: PatchBundle, store: RegistryStore) -> tuple[list[ManifestStep], list[ImageManifest]]:
    """The manifests to store (children of an index first, the top last) and the images.
    A child the bundle does not carry must already be in the registry."""
    manifests: list[ManifestStep] = []
    images: list[ImageManifest] = []
    top = bundle.top
    if isinstance(top, ImageIndex):
        for i, child_desc in enumerate(top.manifests):
            where = f"index {top.digest} manifests[{i}]"
            child = bundle.read_manifest(child_desc, where)
            in_registry = store.blob_size(child_desc.digest) is not None
            if child is None:
                if not in_registry:
                    raise BlobMissing(child_desc.digest, where, "add the child manifest to the bundle")
                raw = store.read_blob(child_desc.digest, MAX_MANIFEST_SIZE)
                child = _registry_manifest(raw, child_desc, f"registry blob {child_desc.digest}")
            if isinstance(child, ImageIndex):
                raise BundleError(f"{where}: nested image indexes are not supported")
            manifests.append(ManifestStep(child, in_registry and _same_bytes(store, child)))
            images.append(child)
    else:
        images.append(top)
    manifests.append(ManifestStep(top, _same_bytes(store, top)))
    return manifests, images


def _check_urls(images: list[ImageManifest], url_policy: Optional[UrlPolicy], ignore_url_policy: bool,
                warnings: list[str]) -> None:
    """Foreign-layer URLs: one that no registry takes is refused; one the registry's own
    ``validation.manifests.urls`` refuses is refused unless overridden (then a warning)."""
    for img in images:  # refused by every registry, whatever its validation rules
        for i, d in enumerate(img.layers):
            for u in d.urls:
                problem = go_url_problem(u)
                if problem:
                    raise ManifestError(f"manifest {img.digest} layers[{i}] url {escape_controls(u)!r}: {problem}; "
                                        "a registry refuses such a manifest on push")
    if url_policy is None:
        urls = checked_urls(images)
        if urls:
            msg = (f"the registry's URL policy for foreign layers (validation.manifests.urls of its config.yml) "
                   f"was not checked: {len(urls)} layer URL(s) such as {escape_controls(urls[0])!r} go into the "
                   "registry unchecked, where a push would be refused if its config allows no such URL; give "
                   f"{opt.registry_config} to check them")
            warnings.append(msg)
            log.warning("%s", msg)
        return
    refusals = url_refusals(images, url_policy)
    if refusals and not ignore_url_policy:
        raise ManifestError(refusals[0] + "; the registry's API would refuse this manifest on "
                            "push: fix the bundle or the registry's config, or override with "
                            f"{opt.ignore_url_policy}")
    for r in refusals:
        msg = f"URL policy overridden: {r}"
        warnings.append(msg)
        log.warning("%s", msg)


def _same_bytes(store: RegistryStore, m: Manifest) -> bool:
    if store.blob_size(m.digest) != len(m.raw):
        return False
    return store.read_blob(m.digest, MAX_MANIFEST_SIZE) == m.raw


def _registry_manifest(raw: bytes, desc: Descriptor, what: str) -> Manifest:
    if len(raw) != desc.size or Digest.of_bytes(raw) != desc.digest:
        raise DigestMismatch(what, desc.digest, Digest.of_bytes(raw), len(raw))
    return parse_manifest(raw, what=what, media_type_hint=desc.media_type)


def _blob_step(bundle: PatchBundle, store: RegistryStore, desc: Descriptor, referenced_by: str,
               warnings: list[str], repository: Repository, may_reuse: Callable[[Digest], bool]) -> BlobStep:
    have = store.blob_size(desc.digest)
    linked_here = have is not None and store.link_ok(store.layout.layer_link(repository, desc.digest), desc.digest)
    # A blob this repository already holds (or may reuse) is never read from the bundle (an S3
    # bundle would download it): no hashing of sidecar-less files to find it.
    if have == desc.size and (linked_here and desc.digest not in bundle.files
                              or not linked_here and may_reuse(desc.digest)):
        return BlobStep(desc.digest, desc.size, desc.media_type, PRESENT, None, referenced_by)
    src = bundle.find(desc)
    if src is not None and src.size != desc.size:
        raise SizeMismatch(f"bundle file {bundle.source.describe(src.name)} ({desc.digest})",
                           desc.size, src.size)
    if have is not None:
        if have == desc.size:
            if linked_here:
                return BlobStep(desc.digest, desc.size, desc.media_type, PRESENT, src, referenced_by)
            if src is not None:  # linking it here is fine once the bundle proves it has the bytes
                return BlobStep(desc.digest, desc.size, desc.media_type, PROVE, src, referenced_by)
            raise CrossRepositoryBlob(
                f"blob {desc.digest} referenced by {referenced_by} is held by the storage for other "
                f"repositories but is not linked in {repository}, and the bundle does not carry it: "
                "linking it would let this repository serve another repository's layer; add the blob to "
                "the bundle (or sign the bundle, which lists it as assumed present), or pass "
                f"{opt.allow_cross_repository} if this repository may use it")
        if src is None:
            raise SizeMismatch(f"registry blob {store.layout.relative(store.layout.blob_data(desc.digest))}",
                               desc.size, have)
        warnings.append(f"registry blob {desc.digest} has {have} bytes instead of {desc.size}: "
                        f"replaced from {src.name}")
        return BlobStep(desc.digest, desc.size, desc.media_type, REPAIR, src, referenced_by)
    if src is not None:
        return BlobStep(desc.digest, desc.size, desc.media_type, COPY, src, referenced_by)
    if store.staged_path(desc.digest) is not None:  # verified by an earlier run (e.g. taken with --consume)
        return BlobStep(desc.digest, desc.size, desc.media_type, COPY, None, referenced_by)
    if desc.is_foreign:
        msg = (f"foreign layer {desc.digest} ({desc.size:,} B) is in neither the bundle nor the "
               f"registry; clients will fetch it from {desc.urls[0] if desc.urls else 'its urls'}")
        warnings.append(msg)
        log.warning("%s", msg)
        return BlobStep(desc.digest, desc.size, desc.media_type, FOREIGN, None, referenced_by)
    if desc.urls:
        raise BlobMissing(desc.digest, referenced_by,
                          f"it has urls, but its media type {desc.media_type!r} is not a foreign / "
                          "non-distributable layer: clients fetch it from the registry; add it to "
                          "the bundle")
    raise BlobMissing(desc.digest, referenced_by)


# Descriptors whose urls distribution checks on a manifest push (2.8: schema2 and OCI handlers).
_URL_CHECKED = {
    DOCKER_MANIFEST: frozenset({DOCKER_FOREIGN_LAYER}),
    OCI_MANIFEST: frozenset({OCI_LAYER_TAR, OCI_LAYER, OCI_ND_LAYER_TAR, OCI_ND_LAYER}),
}


def checked_urls(images: list[ImageManifest]) -> list[str]:
    """The URLs of these manifests that the registry's URL policy applies to (``url_refusals``)."""
    return [u for img in images for d in [img.config, *img.layers]
            if d.media_type in _URL_CHECKED.get(img.media_type, frozenset()) for u in d.urls]


def url_refusals(images: list[ImageManifest], policy: UrlPolicy) -> list[str]:
    """Every reason the registry's API would refuse one of these manifests for its URLs.

    As distribution's manifest handlers: in a Docker schema 2 manifest a
    foreign layer must carry at least one URL and each of its URLs must pass
    ``policy``; in an OCI manifest each URL of an ordinary or
    non-distributable tar / tar+gzip layer must pass ``policy``. URLs of other
    descriptors are not checked by the registry, nor here.
    """
    out = []
    for img in images:
        checked = _URL_CHECKED.get(img.media_type, frozenset())
        labelled = [("config", img.config)] + [(f"layers[{i}]", d) for i, d in enumerate(img.layers)]
        for label, d in labelled:
            if d.media_type not in checked:
                continue
            where = f"manifest {img.digest} {label} ({d.digest})"
            if d.media_type == DOCKER_FOREIGN_LAYER and not d.urls:
                out.append(f"{where} is a foreign layer without urls (the registry refuses it: "
                           "missing URL on layer)")
            for url in d.urls:
                why = policy.refusal(url)
                if why:
                    out.append(f"{where}: URL {url!r} is refused: {why}")
    return out
