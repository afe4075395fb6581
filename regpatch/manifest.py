"""Manifests, image indexes and descriptors as small immutable values.

The raw bytes of every manifest are kept: they are the blob, and their sha256 is
the manifest digest. JSON is parsed only to read it, never re-serialised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Union

from .digest import Digest
from .errors import InvalidReference, ManifestError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
ALL_MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

MAX_MANIFEST_SIZE = 4 << 20  # the registry refuses larger manifests too


@dataclass(frozen=True)
class Platform:
    os: str = ""
    architecture: str = ""
    os_version: str = ""
    variant: str = ""

    def __str__(self) -> str:
        s = "/".join(p for p in (self.os, self.architecture, self.variant) if p)
        return s + (f" {self.os_version}" if self.os_version else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    platform: Optional[Platform] = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def is_foreign(self) -> bool:
        """Non-distributable layer that clients may fetch from its urls."""
        return bool(self.urls) or "foreign" in self.media_type or "nondistributable" in self.media_type

    def annotation(self, key: str) -> Optional[str]:
        return dict(self.annotations).get(key)


@dataclass(frozen=True)
class ImageManifest:
    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def is_index(self) -> bool:
        return False

    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config,) + self.layers


@dataclass(frozen=True)
class ImageIndex:
    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str
    manifests: tuple[Descriptor, ...]

    @property
    def is_index(self) -> bool:
        return True


Manifest = Union[ImageManifest, ImageIndex]


def _descriptor(obj, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: a descriptor must be a JSON object")
    try:
        digest = Digest.parse(obj.get("digest"))
    except InvalidReference as e:
        raise ManifestError(f"{where}: {e}") from e
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: 'size' must be a non-negative integer, got {size!r}")
    media_type = obj.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}: 'mediaType' must be a string")
    urls = obj.get("urls") or ()
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}: 'urls' must be a list of strings")
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                            str(plat.get("os.version", "")), str(plat.get("variant", "")))
    ann = obj.get("annotations") or {}
    annotations = tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
    return Descriptor(media_type, digest, size, tuple(urls), platform, annotations)


def parse_manifest(raw: bytes, *, what: str, media_type_hint: str = "") -> Manifest:
    """Parse manifest bytes; ``what`` names the file or blob in every error."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"{what}: manifest is {len(raw)} bytes, larger than the 4 MiB a registry accepts")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{what}: manifest is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{what}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{what}: a manifest must be a JSON object")
    media_type = doc.get("mediaType") or media_type_hint or ""
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestError(f"{what}: Docker schema 1 manifests are not supported; "
                            "convert the image to schema 2 or OCI (e.g. skopeo copy --format v2s2)")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion must be 2, got {doc.get('schemaVersion')!r}")
    if not media_type:
        # OCI allows mediaType to be absent; infer it from the shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    digest = Digest.of_bytes(raw)
    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise ManifestError(f"{what}: an image index needs a 'manifests' list")
        descs = tuple(_descriptor(c, f"{what} manifests[{i}]") for i, c in enumerate(children))
        for i, d in enumerate(descs):
            if d.media_type not in ALL_MANIFEST_TYPES:
                raise ManifestError(f"{what} manifests[{i}]: unsupported child media type {d.media_type!r}")
        return ImageIndex(raw, digest, media_type, descs)
    if media_type in IMAGE_MANIFEST_TYPES:
        if "config" not in doc:
            raise ManifestError(f"{what}: an image manifest needs a 'config' descriptor")
        config = _descriptor(doc["config"], f"{what} config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError(f"{what}: an image manifest needs a 'layers' list")
        return ImageManifest(raw, digest, media_type, config,
                             tuple(_descriptor(l, f"{what} layers[{i}]") for i, l in enumerate(layers)))
    raise ManifestError(
        f"{what}: unsupported manifest media type {media_type!r}; accepted: "
        + ", ".join(ALL_MANIFEST_TYPES))
