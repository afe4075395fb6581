"""``regpatch inspect``: what a bundle holds, without writing anything.

Reads names, sizes, manifests and configs only (under a second for a local
bundle, whatever its size; a compressed archive is read through once);
``verify=True`` also hashes every blob the bundle holds against its digest
(for a docker save archive: every layer against the config's diff ids, the
config against its image id).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from regpatch.bundle.dockersave import read_saved_images, select_image, strict_json
from regpatch.bundle.model import REF_NAME, BundleSource, PatchBundle
from regpatch.bundle.open import detect_format, load_bundle
from regpatch.digest import Digest
from regpatch.errors import BundleError, ManifestError, RegpatchError
from regpatch.manifest import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    MAX_MANIFEST_SIZE,
    ImageIndex,
    ImageManifest,
    Manifest,
    parse_manifest,
)
from regpatch.sanitize import shown

MANIFEST = "manifest"


@dataclass
class BlobInfo:
    digest: str
    size: int
    media_type: str
    kind: str                  # "config", "layer", "manifest"
    foreign: bool = False
    in_bundle: bool = True
    urls: list[str] = field(default_factory=list)
    verified: Optional[bool] = None
    diff_id: Optional[str] = None     # docker save: the uncompressed layer's digest


@dataclass
class PlatformInfo:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    manifest: Optional[str] = None    # child manifest digest (lists)


@dataclass
class ImageInfo:
    name: str                 # ref name, RepoTag, or "" for a bundle of one image
    manifest_digest: Optional[str]    # None for a docker save archive (new when converted)
    media_type: str
    platforms: list[PlatformInfo]
    image_id: Optional[str] = None    # docker save: the config digest (old-style image id)
    repo_tags: list[str] = field(default_factory=list)


@dataclass
class BundleInfo:
    bundle: str
    format: str
    compression: Optional[str]
    images: list[ImageInfo]
    blobs: list[BlobInfo]
    notes: list[str] = field(default_factory=list)
    verified: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.in_bundle)

    @property
    def foreign_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.foreign and not b.in_bundle)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        d["foreign_bytes_not_in_bundle"] = self.foreign_bytes
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render(self) -> str:
        """The human summary; every string that came from the bundle is escaped (``shown``)."""
        lines = [f"bundle   {shown(self.bundle, 300)}",
                 f"format   {self.format}" + (f" ({self.compression})" if self.compression else "")]
        for img in self.images:
            lines += _image_lines(img)
        lines.append(f"blobs    {len(self.blobs)}")
        lines += [_blob_line(b) for b in self.blobs]
        lines.append(f"total    {self.total_bytes:,} B in the bundle"
                     + (f"; foreign layers not in it: {self.foreign_bytes:,} B" if self.foreign_bytes else ""))
        for n in self.notes:
            lines.append(f"note     {shown(n, 1000)}")
        if self.verified:
            lines.append("verified every blob of the bundle: digests and sizes match")
        return "\n".join(lines)


def _image_lines(img: ImageInfo) -> list[str]:
    name = shown(img.name) if img.name else "(the bundle's image)"
    if img.manifest_digest:
        lines = [f"image    {name}: {img.manifest_digest} ({shown(img.media_type)})"]
    else:
        lines = [f"image    {name}: image id {shown(img.image_id or '')}; manifest digest: new, made when "
                 "it is converted (docker save archive)"]
    for p in img.platforms:
        plat = "/".join(shown(x, 64) for x in (p.os, p.architecture, p.variant) if x) or "(no platform)"
        osv = f" os.version {shown(p.os_version, 64)}" if p.os_version else ""
        child = f"  {p.manifest}" if p.manifest else ""
        lines.append(f"  platform {plat}{osv}{child}")
    return lines


def _blob_line(b: BlobInfo) -> str:
    flags = []
    if b.foreign:
        flags.append("foreign" + (f" {shown(b.urls[0], 120)}" if b.urls else ""))
    if not b.in_bundle:
        flags.append("not in bundle")
    if b.verified is not None:
        flags.append("verified" if b.verified else "NOT VERIFIED")
    if b.diff_id:
        flags.append("uncompressed: digest is the diff id")
    return f"  {b.kind:8} {b.digest} {b.size:>15,} B" + (f"  [{', '.join(flags)}]" if flags else "")


def _platform_of(m: ImageManifest, bundle: PatchBundle) -> PlatformInfo:
    """os/arch/os.version from the image config, when the bundle holds it (small: read, not hashed)."""
    f = bundle.files.get(m.config.digest)
    if f is None:
        return PlatformInfo("", "")

    try:
        doc = strict_json(bundle.source.read_bytes(f.name, 16 << 20), bundle.source.describe(f.name))
    except RegpatchError:
        return PlatformInfo("", "")
    if not isinstance(doc, dict):
        return PlatformInfo("", "")

    def text(k: str) -> str:
        value = doc.get(k)
        return value if isinstance(value, str) else ""

    return PlatformInfo(text("os"), text("architecture"), text("variant"), text("os.version"))


def inspect_bundle(source: BundleSource, *, image: Optional[str] = None, verify: bool = False,
                   progress: Optional[Callable[[str, int], Callable[[int], None]]] = None) -> BundleInfo:
    fmt = detect_format(source)
    compression = getattr(source, "compression", None)
    if fmt == "docker-archive":
        return _inspect_docker_save(source, image, verify, compression, progress)
    names: list[Optional[str]] = [image]
    if fmt == "oci-layout" and image is None:
        index = parse_manifest(source.read_bytes("index.json", MAX_MANIFEST_SIZE), what=source.describe("index.json"))
        if not isinstance(index, ImageIndex):  # (an AttributeError before: found by mypy)
            raise ManifestError(f"{source.describe('index.json')} is not an image index")
        refs = [d.annotation(REF_NAME) for d in index.manifests]
        if len(refs) > 1:
            if any(r is None for r in refs) or len(set(refs)) != len(refs):
                raise BundleError(f"{source.description}: index.json lists {len(refs)} images, not all "
                                  "with distinct ref names; inspect them one at a time is not possible")
            names = list(refs)
    images: list[ImageInfo] = []
    blobs: dict[str, BlobInfo] = {}
    notes: list[str] = []
    bundles = []
    for name in names:
        bundle = load_bundle(source, image=name)
        bundles.append(bundle)
        top = bundle.top
        manifests: list[ImageManifest] = []
        platforms: list[PlatformInfo] = []
        _add_manifest_blob(blobs, top, bundle)
        if isinstance(top, ImageIndex):
            for i, d in enumerate(top.manifests):
                p = d.platform
                child = bundle.read_manifest(d, f"{bundle.description} manifests[{i}]")
                platforms.append(PlatformInfo(p.os if p else "", p.architecture if p else "",
                                              p.variant if p else "", p.os_version if p else "", str(d.digest)))
                if child is None:
                    blobs.setdefault(str(d.digest), BlobInfo(str(d.digest), d.size, d.media_type, MANIFEST,
                                                              in_bundle=False))
                    continue
                _add_manifest_blob(blobs, child, bundle)
                if isinstance(child, ImageManifest):
                    manifests.append(child)
        else:
            manifests.append(top)
            platforms.append(_platform_of(top, bundle))
        for m in manifests:
            for kind, d in [("config", m.config)] + [("layer", l) for l in m.layers]:
                if str(d.digest) in blobs:
                    continue
                f = bundle.find(d) if d.digest in bundle.files else None
                blobs[str(d.digest)] = BlobInfo(str(d.digest), d.size, d.media_type, kind, d.is_foreign,
                                                f is not None, list(d.urls))
        images.append(ImageInfo(name or "", str(top.digest), top.media_type, platforms))
        notes += [n for n in bundle.notes if n not in notes]
    if verify:
        _verify(bundles[0], blobs, bundles, progress)
    return BundleInfo(source.description, "oci-archive" if fmt == "oci-layout" and compression else fmt,
                      compression, images, list(blobs.values()), notes, verify)


def _add_manifest_blob(blobs: dict[str, BlobInfo], m: Manifest, bundle: PatchBundle) -> None:
    blobs.setdefault(str(m.digest), BlobInfo(str(m.digest), len(m.raw), m.media_type, MANIFEST,
                                             in_bundle=True, verified=None))


def _verify(first: PatchBundle, blobs: dict[str, BlobInfo], bundles: list[PatchBundle], progress) -> None:
    source = first.source
    names = {}
    for b in blobs.values():
        if b.kind == MANIFEST or not b.in_bundle:
            if b.kind == MANIFEST:
                b.verified = True  # manifests were hashed when read
            continue
        d = Digest.parse(b.digest)
        for bundle in bundles:
            f = bundle.files.get(d)
            if f is not None:
                names[f.name] = b
                break
    source.want(list(names))
    for name, b in sorted(names.items()):
        bar = progress(f"verify {name}", b.size) if progress else None
        source.hash(name, expected=Digest.parse(b.digest), expected_size=b.size,
                    what=f"bundle file {source.describe(name)}", progress=bar)
        b.verified = True


def _inspect_docker_save(source: BundleSource, image: Optional[str], verify: bool, compression,
                         progress) -> BundleInfo:
    saved = read_saved_images(source)
    if image is not None:
        saved = [select_image(saved, image, source.description)]
    images: list[ImageInfo] = []
    blobs: dict[str, BlobInfo] = {}
    for img in saved:
        images.append(ImageInfo(img.name, None, "docker save archive (uncompressed layers)",
                                [PlatformInfo(img.os, img.architecture, img.variant, img.os_version)],
                                image_id=str(img.image_id), repo_tags=list(img.repo_tags)))
        blobs.setdefault(str(img.image_id), BlobInfo(str(img.image_id), len(img.config), DOCKER_CONFIG,
                                                     "config", verified=True if verify else None))
        for l in img.layers:
            key = f"{l.diff_id}"
            if key in blobs:
                continue
            urls = list(l.foreign.get("urls", [])) if l.foreign else []
            blobs[key] = BlobInfo(str(l.diff_id), l.size, "application/vnd.docker.image.rootfs.diff.tar",
                                  "layer", foreign=l.foreign is not None and
                                  l.foreign["mediaType"] == DOCKER_FOREIGN_LAYER, urls=urls,
                                  diff_id=str(l.diff_id))
    if verify:
        todo: dict[str, tuple[str, BlobInfo]] = {}
        for img in saved:
            for l in img.layers:
                todo.setdefault(source.canonical(l.name), (l.name, blobs[str(l.diff_id)]))
        source.want([n for n, _ in todo.values()])
        for name, b in sorted(todo.values()):
            bar = progress(f"verify {name}", b.size) if progress else None
            source.hash(name, expected=Digest.parse(b.digest), expected_size=b.size,
                        what=f"layer {source.describe(name)} (uncompressed, against its diff id)", progress=bar)
            b.verified = True
    notes = ["docker save archive: its layers are uncompressed; a patch converts it as docker push would "
             "(gzip layers, a new Docker schema 2 manifest): the image id stays, the manifest digest is new"]
    return BundleInfo(source.description, "docker-archive", compression, images, list(blobs.values()),
                      notes, verify)
