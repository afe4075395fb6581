"""Patch bundle readers: the seed's staged folder and the OCI image layout.

Both produce a ``PatchBundle``: the top manifest (exact bytes), and a way to
find the bundle file that holds any digest. Nothing is hashed here beyond
manifests and configs, except staged files without a ``.digest`` sidecar,
which are matched to descriptors by size first and then by hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from ..digest import Digest
from ..errors import (BundleError, DigestMismatch, InvalidReference, ManifestError, SizeMismatch,
                      UnknownBundleFormat, UsageError)
from ..manifest import (ImageManifest, Manifest, MAX_MANIFEST_SIZE, OCI_INDEX, Descriptor,
                        load_json, parse_manifest)
from .source import ACCEPTED_FORMATS, BundleSource

log = logging.getLogger("regpatch.bundle")

REF_NAME = "org.opencontainers.image.ref.name"
MAX_CONFIG_SIZE = 16 << 20


@dataclass
class BundleFile:
    name: str        # name inside the source
    size: int
    digest: Digest   # claimed (sidecar, OCI blob name) or computed
    verified: bool   # True when the digest was computed from the bytes


@dataclass
class PatchBundle:
    source: BundleSource
    format: str                      # "staged" or "oci-layout"
    top: Manifest
    files: dict[Digest, BundleFile]  # digest -> bundle file claiming it
    _unmatched: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def description(self) -> str:
        return self.source.description

    def find(self, desc: Descriptor) -> Optional[BundleFile]:
        """The bundle file for a descriptor; staged files without sidecars are matched by hash."""
        f = self.files.get(desc.digest)
        if f is not None:
            return f
        for name, size in sorted(self._unmatched.items()):
            if size != desc.size:
                continue
            digest = self.source.hash(name, expected_size=size)
            del self._unmatched[name]
            self.files.setdefault(digest, BundleFile(name, size, digest, True))
            if digest == desc.digest:
                return self.files[digest]
        return None

    def read_manifest(self, desc: Descriptor, referenced_by: str) -> Optional[Manifest]:
        """Read, check and parse a child manifest from the bundle (None if absent)."""
        f = self.find(desc)
        if f is None:
            return None
        raw = self.source.read_bytes(f.name, MAX_MANIFEST_SIZE)
        return check_manifest_bytes(raw, desc, self.source.describe(f.name))


def check_manifest_bytes(raw: bytes, desc: Descriptor, what: str) -> Manifest:
    actual = Digest.of_bytes(raw)
    if len(raw) != desc.size:
        raise SizeMismatch(what, desc.size, len(raw))
    if actual != desc.digest:
        raise DigestMismatch(what, desc.digest, actual, len(raw))
    return parse_manifest(raw, what=what, media_type_hint=desc.media_type)


def load_bundle(source: BundleSource, *, image: Optional[str] = None) -> PatchBundle:
    files = source.list()
    if "oci-layout" in files and "index.json" in files:
        return _load_oci_layout(source, files, image)
    if any(_is_manifest_name(n) for n in files if "/" not in n):
        if image:
            raise UsageError("--image selects an image of an OCI layout; "
                             f"{source.description} is a staged bundle with a single manifest")
        return _load_staged(source, files)
    if "manifest.json" in files and ("repositories" in files or any(n.endswith("/layer.tar") for n in files)):
        raise UnknownBundleFormat(
            f"{source.description} is an unpacked 'docker save' archive: its layers are uncompressed "
            "and cannot reproduce the registry's manifest digest; " + ACCEPTED_FORMATS)
    raise UnknownBundleFormat(f"{source.description} is not a patch bundle; " + ACCEPTED_FORMATS)


def _is_manifest_name(name: str) -> bool:
    return name.endswith(".manifest.json")


# -- staged folder (the seed's format) -----------------------------------------

def _read_sidecar(source: BundleSource, name: str) -> Digest:
    raw = source.read_bytes(name, 1024)
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if len(text) == 64 and ":" not in text:
        text = "sha256:" + text
    try:
        return Digest.parse(text.lower())
    except InvalidReference:
        raise BundleError(f"digest sidecar {source.describe(name)} holds {text[:80]!r}, "
                          "not 'sha256:<64 hex>'") from None


def _load_staged(source: BundleSource, files: dict[str, int]) -> PatchBundle:
    top_level = {n: s for n, s in files.items() if "/" not in n}
    manifests = sorted(n for n in top_level if _is_manifest_name(n))
    if len(manifests) != 1:
        raise BundleError(f"staged bundle {source.description} holds {len(manifests)} *.manifest.json "
                          f"files ({', '.join(manifests)}); it must hold exactly one")
    mname = manifests[0]
    raw = source.read_bytes(mname, MAX_MANIFEST_SIZE)
    top = parse_manifest(raw, what=source.describe(mname))

    bundle_files: dict[Digest, BundleFile] = {}
    unmatched: dict[str, int] = {}
    sidecars = {n for n in top_level if n.endswith(".digest")}
    for name, size in sorted(top_level.items()):
        if name in sidecars or name == mname:
            continue
        if name + ".digest" in sidecars:
            claimed = _read_sidecar(source, name + ".digest")
            if claimed in bundle_files:
                raise BundleError(f"{source.describe(name)}.digest and "
                                  f"{source.describe(bundle_files[claimed].name)}.digest both name {claimed}; "
                                  "one of the sidecars is wrong")
            bundle_files[claimed] = BundleFile(name, size, claimed, False)
        else:
            unmatched[name] = size
    for sc in sorted(sidecars):
        if sc[: -len(".digest")] not in top_level:
            log.warning("digest sidecar %s names no file of the bundle; ignored", source.describe(sc))

    bundle = PatchBundle(source, "staged", top, bundle_files, unmatched)

    configs = sorted(n for n in top_level if n.endswith(".config.json"))
    if isinstance(top, ImageManifest):
        if len(configs) != 1:
            raise BundleError(f"staged bundle {source.description} holds {len(configs)} *.config.json "
                              f"files ({', '.join(configs)}); it must hold exactly one")
        cname = configs[0]
        craw = source.read_bytes(cname, MAX_CONFIG_SIZE)
        what = source.describe(cname)
        if len(craw) != top.config.size:
            raise SizeMismatch(f"config {what}", top.config.size, len(craw))
        cdigest = Digest.of_bytes(craw)
        if cdigest != top.config.digest:
            raise DigestMismatch(f"config {what}", top.config.digest, cdigest, len(craw))
        if not isinstance(load_json(craw, what=f"config {what}"), dict):
            raise ManifestError(f"config {what} is not a JSON object")
        unmatched.pop(cname, None)
        bundle_files[cdigest] = BundleFile(cname, len(craw), cdigest, True)

    referenced = _referenced_digests(top)
    for d, f in bundle_files.items():
        if not f.verified and d not in referenced and isinstance(top, ImageManifest):
            raise BundleError(f"sidecar {source.describe(f.name)}.digest names {d}, which the manifest "
                              f"{source.describe(mname)} does not reference; the sidecar or the manifest "
                              "belongs to another patch")
    return bundle


def _referenced_digests(top: Manifest) -> set[Digest]:
    if isinstance(top, ImageManifest):
        return {d.digest for d in top.blobs()}
    return {d.digest for d in top.manifests}


# -- OCI image layout ------------------------------------------------------------

def _load_oci_layout(source: BundleSource, files: dict[str, int], image: Optional[str]) -> PatchBundle:
    where = source.description
    layout = load_json(source.read_bytes("oci-layout", 4096), what=f"{where}/oci-layout")
    if not isinstance(layout, dict):
        raise ManifestError(f"{where}/oci-layout is not a JSON object")
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise UnknownBundleFormat(f"{where}/oci-layout declares imageLayoutVersion {version!r}; 1.x is supported")
    index = parse_manifest(source.read_bytes("index.json", MAX_MANIFEST_SIZE),
                           what=f"{where}/index.json", media_type_hint=OCI_INDEX)
    if not index.is_index:
        raise ManifestError(f"{where}/index.json is not an image index")
    candidates = list(index.manifests)
    if not candidates:
        raise BundleError(f"OCI layout {where} holds no image (index.json lists no manifest)")
    names = [d.annotation(REF_NAME) or "(unnamed)" for d in candidates]
    if image is not None:
        chosen = [d for d in candidates if d.annotation(REF_NAME) == image]
        if not chosen:
            raise UsageError(f"OCI layout {where} has no image named {image!r}; it has: {', '.join(names)}")
        if len(chosen) > 1 and len({d.digest for d in chosen}) > 1:
            raise BundleError(f"OCI layout {where} names {len(chosen)} different images {image!r}")
        desc = chosen[0]
    elif len(candidates) == 1:
        desc = candidates[0]
    else:
        raise UsageError(f"OCI layout {where} holds {len(candidates)} images ({', '.join(names)}); "
                         "choose one with --image NAME")

    bundle_files: dict[Digest, BundleFile] = {}
    for name, size in files.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
            try:
                d = Digest.parse("sha256:" + parts[2])
            except InvalidReference:
                log.warning("ignoring %s: not named by a sha256 digest", source.describe(name))
                continue
            bundle_files[d] = BundleFile(name, size, d, False)
    bundle = PatchBundle(source, "oci-layout", None, bundle_files)  # type: ignore[arg-type]
    top = bundle.read_manifest(desc, f"{where}/index.json")
    if top is None:
        raise BundleError(f"OCI layout {where}: index.json names {desc.digest}, but "
                          f"blobs/sha256/{desc.digest.hex} is missing")
    bundle.top = top
    return bundle
