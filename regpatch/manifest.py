"""Manifests, image indexes and descriptors as small immutable values.

The raw bytes of every manifest are kept: they are the blob, and their sha256 is
the manifest digest. JSON is parsed only to read it, never re-serialised.

Every JSON document of a bundle (manifests, configs, ``index.json``,
``oci-layout``) is read with ``load_json``, so that regpatch sees what the
registry's and the clients' Go code (``encoding/json``) will see, or refuses:

* nesting deeper than ``MAX_JSON_DEPTH`` is refused before parsing (a cheap
  scan of bracket depth outside strings), never a ``RecursionError``;
* Go matches object keys to struct fields case-insensitively (with Unicode
  simple folding: ``ſ`` is ``s``, the Kelvin sign ``K`` is ``k``) and keeps the
  LAST duplicate, where Python reads the exact key: a duplicate key, or two
  keys equal under case folding, are refused at every object level, naming
  the key; in manifests a key that only folds to a known field
  (``"Layers"``, ``"ſchemaVersion"``) is refused too;
* ``NaN``/``Infinity``, lone UTF-16 surrogates in keys, and numbers beyond
  int64 for sizes are refused (Go refuses them as well).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import accumulate, count
from operator import sub
from typing import Any, Optional, Union

from regpatch.digest import Digest
from regpatch.errors import InvalidReference, ManifestError

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
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_ND_LAYER_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_ND_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_ND_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Layers a client fetches from their ``urls`` rather than from the registry: the
# only blobs that may be absent from both the bundle and the registry.
FOREIGN_LAYER_TYPES = frozenset({DOCKER_FOREIGN_LAYER, OCI_ND_LAYER_TAR, OCI_ND_LAYER, OCI_ND_LAYER_ZSTD})

MAX_MANIFEST_SIZE = 4 << 20  # the registry refuses larger manifests too
MAX_JSON_DEPTH = 64          # real manifests and configs nest < 10 levels; Go allows 10000
MAX_INT64 = (1 << 63) - 1

# Fields of manifests, indexes and descriptors that regpatch reads or the registry
# decodes: a key that folds to one of them without being it is read differently by Go.
MANIFEST_KEYS = frozenset({
    "schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size", "urls",
    "platform", "annotations", "architecture", "os", "os.version", "os.features", "variant",
    "features", "subject", "artifactType", "data",
})


# -- the one strict JSON reader -------------------------------------------------------

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP_TABLE = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(raw: bytes, limit: Optional[int] = None) -> int:
    """The deepest bracket nesting of a JSON text, counting outside strings only.

    For valid JSON this is exact; for invalid JSON it is exact up to the first
    point where a parser stops, which is all a parser can recurse into. With
    ``limit``, the scan stops at the first depth beyond it (and returns it).
    """
    # escaped backslashes, then escaped quotes, leave only the quotes that open and close
    # strings: every other piece between quotes is outside a string
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[0::2]).translate(None, _NOT_BRACKETS)
    opening = brackets.count(b"[") + brackets.count(b"{")
    if opening <= 1:
        return opening
    # opening -> 2, closing -> 0: the depth after k brackets is (sum of the first k) - k,
    # computed by C-level iterators (accumulate, map, count), in chunks for an early stop
    steps = brackets.translate(_STEP_TABLE)
    depth = best = 0
    chunk = 1 << 16
    for i in range(0, len(steps), chunk):
        part = steps[i:i + chunk]
        best = max(best, depth + max(map(sub, accumulate(part), count(1))))
        depth += sum(part) - len(part)
        if limit is not None and best > limit:
            break
    return best


def _fold(key: str) -> str:
    # Go's encoding/json folds keys with Unicode simple case folding; casefold() is a
    # superset (it also folds 'ß' to 'ss'): it can only refuse more, never less.
    return key.casefold()


def load_json(raw: bytes, *, what: str, max_depth: int = MAX_JSON_DEPTH,
              strict_keys: bool = True) -> Any:
    """Parse a JSON document of a bundle (or a registry) strictly; ``ManifestError`` on refusal.

    ``what`` names the document in every message. ``strict_keys=False`` keeps
    only the depth, UTF-8 and constant checks (documents regpatch reads for
    one value, e.g. a token server's answer).
    """
    depth = json_depth(raw, limit=max_depth)
    if depth > max_depth:
        raise ManifestError(f"{what}: JSON nested more than {max_depth} levels deep; regpatch "
                            "refuses it (image manifests and configs nest a few levels)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from e

    def refuse_constant(name: str):
        raise ManifestError(f"{what}: {name} is not JSON (Go's encoding/json refuses it)")

    def pairs(items: list[tuple[str, Any]]) -> dict:
        seen: dict[str, str] = {}
        for key, _ in items:
            if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
                raise ManifestError(f"{what}: object key {key!r} holds a lone UTF-16 surrogate")
            f = _fold(key)
            if f in seen:
                if seen[f] == key:
                    raise ManifestError(f"{what}: duplicate key {key!r} appears twice in one object; "
                                        "JSON readers disagree on which one counts: refusing an "
                                        "ambiguous document")
                raise ManifestError(f"{what}: keys {seen[f]!r} and {key!r} in one object differ only "
                                    "in letter case; Go's encoding/json reads both as the same field "
                                    "(the last wins): refusing an ambiguous document")
            seen[f] = key
        return dict(items)

    try:
        if strict_keys:
            return json.loads(text, object_pairs_hook=pairs, parse_constant=refuse_constant)
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{what}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError:  # the depth scan makes this unreachable; never let it escape
        raise ManifestError(f"{what}: JSON nested too deeply") from None


_FOLDED_FIELDS = {_fold(k): k for k in MANIFEST_KEYS}


def _exact_fields(obj: dict, where: str) -> None:
    """Refuse a key of a manifest, index, descriptor or platform object that Go would
    read as one of its fields but Python would not (``"Layers"``, ``"ſize"``)."""
    for key in obj:
        field_name = _FOLDED_FIELDS.get(_fold(key))
        if field_name is not None and field_name != key:
            raise ManifestError(f"{where}: key {key!r} is not {field_name!r}, but Go's encoding/json "
                                f"reads it as {field_name!r}: refusing an ambiguous document")


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
        """A foreign / non-distributable layer (by its media type): clients may fetch it
        from its urls. ``urls`` on any other layer do not make it optional."""
        return self.media_type in FOREIGN_LAYER_TYPES

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
    _exact_fields(obj, where)
    try:
        digest = Digest.parse(obj.get("digest"))
    except InvalidReference as e:
        raise ManifestError(f"{where}: {e}") from e
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: 'size' must be a non-negative integer, got {size!r}")
    if size > MAX_INT64:
        raise ManifestError(f"{where}: 'size' {size} does not fit a 64-bit integer (Go refuses it)")
    media_type = obj.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}: 'mediaType' must be a string")
    urls = obj.get("urls") or ()
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}: 'urls' must be a list of strings")
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict):
        _exact_fields(plat, f"{where} platform")
        platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                            str(plat.get("os.version", "")), str(plat.get("variant", "")))
    ann = obj.get("annotations") or {}
    annotations = tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
    return Descriptor(media_type, digest, size, tuple(urls), platform, annotations)


_IMAGE_FIELDS = ("config", "layers")
_INDEX_FIELDS = ("manifests",)


def manifest_kind(doc: dict, media_type_hint: str, what: str) -> str:
    """The media type of a manifest document, decided as the registry decides it, or a
    ``ManifestError`` where a reader could decide otherwise.

    The document's ``mediaType`` decides (distribution serves it by that field); without
    one it is an OCI index when it has ``manifests``, else an OCI image manifest. A
    document that carries the fields of both kinds (``config``/``layers`` and
    ``manifests``) is refused whatever it declares: the registry's ``PUT`` refuses it
    (400 MANIFEST_INVALID, the CVE-2021-41190 rules of distribution 2.8), containers/image
    rejects it as ambiguous, and without ``mediaType`` the registry would serve it as an
    index where the bundle's index.json may call it an image. A hint (how index.json or
    a parent index describes it) of the other kind is refused too.
    """
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError(f"{what}: 'mediaType' must be a string")
    has_image = [k for k in _IMAGE_FIELDS if k in doc]
    has_index = [k for k in _INDEX_FIELDS if k in doc]
    if has_image and has_index:
        raise ManifestError(f"{what}: the document holds both {' and '.join(has_image)} (an image manifest's) "
                            f"and {' and '.join(has_index)} (an index's): a registry refuses such an ambiguous "
                            "manifest on push (MANIFEST_INVALID) and clients reject it; refusing it")
    media_type = declared or (OCI_INDEX if has_index else OCI_MANIFEST)
    if media_type in INDEX_TYPES and has_image:
        raise ManifestError(f"{what}: an image index ({media_type}) must not hold {' or '.join(has_image)}")
    if media_type in IMAGE_MANIFEST_TYPES and has_index:
        raise ManifestError(f"{what}: an image manifest ({media_type}) must not hold 'manifests'")
    hint_kind = _kind_of(media_type_hint)
    if hint_kind and _kind_of(media_type) and hint_kind != _kind_of(media_type):
        raise ManifestError(f"{what}: described as {media_type_hint} ({hint_kind}) but the document is "
                            f"{media_type} ({_kind_of(media_type)}); refusing a manifest read two ways")
    return media_type


def _kind_of(media_type: str) -> str:
    if media_type in INDEX_TYPES:
        return "an image index"
    if media_type in IMAGE_MANIFEST_TYPES:
        return "an image manifest"
    return ""


def parse_manifest(raw: bytes, *, what: str, media_type_hint: str = "") -> Manifest:
    """Parse manifest bytes; ``what`` names the file or blob in every error."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"{what}: manifest is {len(raw)} bytes, larger than the 4 MiB a registry accepts")
    doc = load_json(raw, what=what)
    if not isinstance(doc, dict):
        raise ManifestError(f"{what}: a manifest must be a JSON object")
    _exact_fields(doc, what)
    if doc.get("mediaType") in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestError(f"{what}: Docker schema 1 manifests are not supported; "
                            "convert the image to schema 2 or OCI (e.g. skopeo copy --format v2s2)")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion must be 2, got {doc.get('schemaVersion')!r}")
    media_type = manifest_kind(doc, media_type_hint, what)
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
