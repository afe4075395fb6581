"""Patch bundle readers: every on-disk image format operators carry across the gap.

All produce a ``PatchBundle``: the top manifest (exact bytes), and a way to
find the bundle file that holds any digest. Formats (``detect_format``):

- ``oci-layout``: an OCI image layout folder (``oci-layout``, ``index.json``,
  ``blobs/sha256``); as ``oci-archive`` when it is packed in a tar (plain or
  compressed), read in place (``archive.py``);
- ``dir``: skopeo's ``dir:`` folder (``version``, ``manifest.json``, blobs
  named by hex, children of a list as ``<hex>.manifest.json``), as skopeo,
  ``podman save --format docker-dir`` and ``skopeo sync`` write it;
- ``docker-archive``: a ``docker save`` archive (tar or unpacked folder): its
  layers are uncompressed, so it is converted the way ``docker push`` would
  (``dockersave.py``), and the manifest digest is new;
- ``staged``: the seed's staged folder.

Digests are kept byte for byte for all but ``docker-archive``. Nothing is
hashed here beyond manifests and configs, except staged files without a
``.digest`` sidecar (matched to descriptors by size first, then by hash) and
the layers of a ``docker save`` archive (compressed to learn their digest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..digest import Digest
from ..errors import (BundleError, DigestMismatch, InvalidReference, ManifestError, RegpatchError,
                      SizeMismatch, UnknownBundleFormat, UsageError)
from ..manifest import (ImageIndex, ImageManifest, Manifest, MAX_MANIFEST_SIZE, OCI_INDEX, Descriptor,
                        load_json, parse_manifest)
from .source import ACCEPTED_FORMATS, BundleSource

if TYPE_CHECKING:
    from .dockersave import Conversion

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
    format: str                      # FORMATS: "oci-layout", "oci-archive", "dir", "docker-archive", "staged"
    top: Manifest
    files: dict[Digest, BundleFile]  # digest -> bundle file claiming it
    _unmatched: dict[str, int] = field(default_factory=dict, repr=False)
    #: what the operator must be told in the plan and the summary (e.g. a converted, new digest)
    notes: list[str] = field(default_factory=list)
    #: for docker save archives: how it was converted (old image id -> new manifest digest)
    conversion: Optional["Conversion"] = None

    def close(self) -> None:
        """Remove what reading the bundle wrote (converted layers in the scratch folder)."""
        cleanup = getattr(self.source, "cleanup", None)
        if cleanup is not None:
            cleanup()

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


FORMATS = ("oci-layout", "oci-archive", "dir", "docker-archive", "staged")
FOREIGN_KEEP, FOREIGN_INCLUDE = "keep", "include"
DIR_VERSION_PREFIX = b"Directory Transport Version: 1."


def detect_format(source: BundleSource) -> str:
    """Which format a source holds ("oci-layout", "dir", "docker-archive", "staged"), from its
    file names and a few small files; UnknownBundleFormat naming what it found otherwise."""
    files = source.list()
    if "oci-layout" in files and "index.json" in files:
        return "oci-layout"  # docker 25+ 'docker save' archives are OCI layouts too: digests kept
    if "manifest.json" in files:
        head = source.read_bytes("manifest.json", MAX_MANIFEST_SIZE).lstrip()
        if head[:1] == b"[":
            return "docker-archive"
        if "version" in files:
            return "dir"
        if head[:1] == b"{" and any(_is_hex(n) for n in files):
            log.warning("%s has manifest.json and blobs named by hex but no 'version' file: read as a "
                        "dir: folder", source.description)
            return "dir"
    if any(_is_manifest_name(n) for n in files if "/" not in n):
        return "staged"
    raise UnknownBundleFormat(_unknown_folder(source, files))


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _unknown_folder(source: BundleSource, files: dict[str, int]) -> str:
    where = source.description
    archive = getattr(source, "compression", None) is not None
    kind = "archive" if archive else "folder"
    if "repositories" in files or any(n.endswith("/layer.tar") for n in files):
        return (f"{where} is an old 'docker save' {kind} without manifest.json (Docker before 1.10); "
                "load it (docker load / podman load) and save it again, or export it with "
                "'skopeo copy docker-daemon:IMAGE oci-archive:FILE.tar'")
    tops = sorted({n.split("/", 1)[0] for n in files})
    if len(tops) == 1 and any("/" in n for n in files):
        return (f"{where} holds only the folder {tops[0]!r}: pass that folder (unpack the archive, "
                "or re-create it from inside the folder: tar -C FOLDER -cf FILE.tar .)")
    if any(n in ("etc", "usr", "bin") or n.startswith(("etc/", "usr/", "bin/")) for n in files):
        return (f"{where} looks like a root filesystem (a single layer), not an image: build an image "
                "from it (podman import FILE; podman save --format oci-archive) first")
    if "index.json" in files and "oci-layout" not in files:
        return (f"{where} has index.json but no oci-layout file: it is not a complete OCI image "
                "layout; copy it again with skopeo copy ... oci:DIR")
    shown = ", ".join(sorted(files)[:6]) + (", ..." if len(files) > 6 else "")
    return (f"{where} is not a patch bundle ({kind} with {len(files)} files: {shown or 'none'}); "
            + ACCEPTED_FORMATS)


def load_bundle(source: BundleSource, *, image: Optional[str] = None, scratch: Optional[Path] = None,
                foreign_layers: str = FOREIGN_KEEP, gzip_level: Optional[int] = None) -> PatchBundle:
    """Read a bundle of any format (``detect_format``) and select its image.

    ``image``: of a bundle holding several (OCI layout/archive: ref name;
    docker save archive: one of its RepoTags). ``scratch``, ``foreign_layers``
    and ``gzip_level`` only matter for docker save archives (``dockersave``):
    converted layers are written into ``scratch`` (a folder on the registry's
    filesystem, e.g. beside its staging folder; without it they are compressed
    twice: once to learn the digest, once while staged).
    """
    if foreign_layers not in (FOREIGN_KEEP, FOREIGN_INCLUDE):
        raise UsageError(f"foreign layers: {foreign_layers!r} is neither 'keep' nor 'include'")
    fmt = detect_format(source)
    files = source.list()
    if fmt == "oci-layout":
        bundle = _load_oci_layout(source, files, image)
    elif fmt == "dir":
        bundle = _load_dir(source, files, image)
    elif fmt == "docker-archive":
        from .dockersave import load_docker_save

        bundle = load_docker_save(source, image=image, scratch=scratch, foreign_layers=foreign_layers,
                                  gzip_level=gzip_level)
    else:
        if image:
            raise UsageError("--image selects an image of an OCI layout or a docker save archive; "
                             f"{source.description} is a staged bundle with a single manifest")
        bundle = _load_staged(source, files)
    if fmt != "docker-archive":
        source.want(_reachable_names(bundle))
    return bundle


def _reachable_names(bundle: PatchBundle) -> list[str]:
    """Bundle files of every blob of the top image(s): what a patch may read."""
    top = bundle.top
    images = [top]
    if isinstance(top, ImageIndex):
        for i, d in enumerate(top.manifests):
            try:
                child = bundle.read_manifest(d, f"{bundle.description} manifests[{i}]")
            except RegpatchError:
                child = None
            if isinstance(child, ImageManifest):
                images.append(child)
    names = []
    for img in images:
        if isinstance(img, ImageManifest):
            for d in img.blobs():
                f = bundle.files.get(d.digest)
                if f is not None:
                    names.append(f.name)
    return names


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
    fmt = "oci-archive" if getattr(source, "compression", None) else "oci-layout"
    bundle = PatchBundle(source, fmt, None, bundle_files)  # type: ignore[arg-type]
    top = bundle.read_manifest(desc, f"{where}/index.json")
    if top is None:
        raise BundleError(f"OCI layout {where}: index.json names {desc.digest}, but "
                          f"blobs/sha256/{desc.digest.hex} is missing")
    bundle.top = top
    return bundle


# -- dir: (skopeo's directory transport) -------------------------------------------

def _load_dir(source: BundleSource, files: dict[str, int], image: Optional[str]) -> PatchBundle:
    where = source.description
    if "version" in files:
        version = source.read_bytes("version", 256)
        if not version.startswith(DIR_VERSION_PREFIX):
            raise UnknownBundleFormat(f"{source.describe('version')} holds {version[:60]!r}, not "
                                      "'Directory Transport Version: 1.x': not a dir: folder regpatch knows")
    if image:
        raise UsageError(f"--image selects an image of an OCI layout or a docker save archive; {where} is "
                         "a dir: folder holding one image (or one manifest list)")
    raw = source.read_bytes("manifest.json", MAX_MANIFEST_SIZE)
    top = parse_manifest(raw, what=source.describe("manifest.json"))
    bundle_files: dict[Digest, BundleFile] = {}
    for name, size in files.items():
        if "/" in name:
            continue
        hexpart = name[:-len(".manifest.json")] if name.endswith(".manifest.json") else name
        if _is_hex(hexpart):
            d = Digest("sha256", hexpart)
            if d in bundle_files:
                raise BundleError(f"{where} holds {d} twice ({bundle_files[d].name} and {name})")
            bundle_files[d] = BundleFile(name, size, d, False)
    # manifest.json is the top manifest's blob too (a child or a list may name it)
    bundle_files.setdefault(top.digest, BundleFile("manifest.json", len(raw), top.digest, True))
    return PatchBundle(source, "dir", top, bundle_files)
