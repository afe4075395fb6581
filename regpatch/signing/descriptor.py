"""``regpatch-bundle.json``: what a bundle holds and assumes, parsed strictly (hostile input until its
signature is verified, and checked even then)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import BundleMismatch, InvalidReference, ManifestError
from regpatch.manifest import ALL_MANIFEST_TYPES, load_json
from regpatch.reference import Repository, Tag

MAX_BLOBS = 200_000

MAX_TEXT = 1024

_CONTENTS_NAME = re.compile(r"[A-Za-z0-9._+@=-]{1,255}")

_PLATFORM_KEYS = ("os", "architecture", "os.version", "variant")


DESCRIPTOR = "regpatch-bundle.json"


SIGNATURE = DESCRIPTOR + ".sig"


LAYOUT_FILES = ("oci-layout", "index.json")


FORMAT = "regpatch-bundle/1"


MAX_DESCRIPTOR = 32 << 20


MAX_SIGNATURE = 1024


@dataclass(frozen=True)
class BlobEntry:
    digest: Digest
    size: int
    media_type: str = ""

    def to_doc(self) -> dict:
        doc: dict = {"digest": str(self.digest), "size": self.size}
        if self.media_type:
            doc["mediaType"] = self.media_type
        return doc


@dataclass(frozen=True)
class ManifestEntry:
    digest: Digest
    size: int
    media_type: str
    platform: tuple[tuple[str, str], ...] = ()   # sorted (key, value), keys of _PLATFORM_KEYS

    def to_doc(self) -> dict:
        doc: dict = {"digest": str(self.digest), "size": self.size, "mediaType": self.media_type}
        if self.platform:
            doc["platform"] = dict(self.platform)
        return doc

    @property
    def platform_text(self) -> str:
        p = dict(self.platform)
        s = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
        return s + (f" {p['os.version']}" if p.get("os.version") else "")


@dataclass(frozen=True)
class ContentsRef:
    name: str
    sha256: Digest

    def to_doc(self) -> dict:
        return {"name": self.name, "sha256": str(self.sha256)}

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256})"


@dataclass(frozen=True)
class BundleDescriptor:
    """The content of ``regpatch-bundle.json``."""

    image: ManifestEntry                         # the top manifest (image or index)
    manifests: tuple[ManifestEntry, ...]         # the image manifests (children of an index, or the top)
    name: str                                    # ref.name of the image in index.json
    repository: Optional[str]                    # intended repository on the site
    tag: Optional[str]                           # intended tag
    files: tuple[tuple[str, BlobEntry], ...]     # index.json, oci-layout: digest and size
    blobs: tuple[BlobEntry, ...]                 # every file under blobs/sha256 (manifests too)
    assumed: tuple[BlobEntry, ...]               # blobs the site is assumed to hold
    contents: tuple[ContentsRef, ...]            # the contents files that said so
    foreign: tuple[BlobEntry, ...] = ()          # foreign layers neither carried nor assumed
    tool: str = ""
    created: str = ""
    source: str = ""

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "tool": self.tool,
            "created": self.created,
            "source": self.source,
            "image": {**self.image.to_doc(), "name": self.name, "repository": self.repository,
                      "tag": self.tag, "manifests": [m.to_doc() for m in self.manifests]},
            "files": {n: e.to_doc() for n, e in self.files},
            "blobs": [b.to_doc() for b in sorted(self.blobs, key=lambda b: str(b.digest))],
            "assumed_present": {
                "contents": [c.to_doc() for c in self.contents],
                "blobs": [b.to_doc() for b in sorted(self.assumed, key=lambda b: str(b.digest))],
            },
            "foreign": [b.to_doc() for b in sorted(self.foreign, key=lambda b: str(b.digest))],
        }
        return (json.dumps(doc, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=True)
                + "\n").encode("ascii")

    @property
    def bytes_carried(self) -> int:
        return sum(b.size for b in self.blobs)

    def summary(self) -> str:
        target = f" for {self.repository or '?'}:{self.tag or '?'}" if self.repository or self.tag else ""
        return (f"image {self.image.digest}{target}: {len(self.blobs)} blobs carried "
                f"({self.bytes_carried:,} B), {len(self.assumed)} assumed present"
                + (f" per {', '.join(c.name for c in self.contents)}" if self.contents else ""))


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _mismatch(where: str, what: str) -> BundleMismatch:
    return BundleMismatch(f"{where} is not a valid regpatch bundle descriptor: {what}; make the "
                          "bundle again with 'regpatch bundle'")


def _text(doc: dict, key: str, where: str, *, optional: bool = False) -> Optional[str]:
    v = doc.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > MAX_TEXT or not v.isprintable():
        raise _mismatch(where, f"'{key}' is not a short printable string")
    return v


def _int(v, where: str, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 53:
        raise _mismatch(where, f"{what} is not a size in bytes")
    return v


def _dig(v, where: str, what: str) -> Digest:
    try:
        return Digest.parse(v)
    except InvalidReference:
        raise _mismatch(where, f"{what} is not 'sha256:<64 hex>'") from None


def _keys(doc, allowed: set, required: set, where: str, what: str) -> dict:
    if not isinstance(doc, dict):
        raise _mismatch(where, f"{what} is not an object")
    extra, missing = set(doc) - allowed, required - set(doc)
    if extra or missing:
        raise _mismatch(where, f"{what} has unknown keys {sorted(map(str, extra))[:5]} or lacks "
                               f"{sorted(missing)}")
    return doc


def _blob(doc, where: str, what: str) -> BlobEntry:
    doc = _keys(doc, {"digest", "size", "mediaType"}, {"digest", "size"}, where, what)
    mt = doc.get("mediaType", "")
    if not isinstance(mt, str) or len(mt) > 255 or not mt.isprintable():
        raise _mismatch(where, f"{what}: 'mediaType' is not a short string")
    return BlobEntry(_dig(doc["digest"], where, f"{what} digest"), _int(doc["size"], where, f"{what} size"), mt)


def _blob_list(v, where: str, what: str) -> tuple[BlobEntry, ...]:
    if not isinstance(v, list) or len(v) > MAX_BLOBS:
        raise _mismatch(where, f"'{what}' is not a list of at most {MAX_BLOBS} blobs")
    out = tuple(_blob(b, where, f"{what}[{i}]") for i, b in enumerate(v))
    if len({b.digest for b in out}) != len(out):
        raise _mismatch(where, f"'{what}' lists a digest twice")
    return out


def _manifest(doc, where: str, what: str) -> ManifestEntry:
    doc = _keys(doc, {"digest", "size", "mediaType", "platform"}, {"digest", "size", "mediaType"},
                where, what)
    mt = doc["mediaType"]
    if mt not in ALL_MANIFEST_TYPES:
        raise _mismatch(where, f"{what}: unsupported mediaType")
    plat: tuple[tuple[str, str], ...] = ()
    if "platform" in doc:
        p = _keys(doc["platform"], set(_PLATFORM_KEYS), set(), where, f"{what} platform")
        if not all(isinstance(x, str) and len(x) <= 128 and x.isprintable() for x in p.values()):
            raise _mismatch(where, f"{what}: platform values must be short strings")
        plat = tuple(sorted(p.items()))
    return ManifestEntry(_dig(doc["digest"], where, f"{what} digest"),
                         _int(doc["size"], where, f"{what} size"), mt, plat)


def parse_descriptor(raw: bytes, where: str) -> BundleDescriptor:
    try:
        doc = load_json(raw, what="the document")  # depth, duplicate and case-folded keys, as Go reads it
    except ManifestError as e:
        raise _mismatch(where, f"not JSON, or JSON Go would read differently ({e})") from None
    doc = _keys(doc, {"format", "tool", "created", "source", "image", "files", "blobs",
                      "assumed_present", "foreign"},
                {"format", "image", "files", "blobs", "assumed_present"}, where, "the document")
    if doc["format"] != FORMAT:
        raise _mismatch(where, f"'format' is not {FORMAT!r}")
    img = _keys(doc["image"], {"digest", "size", "mediaType", "platform", "name", "repository", "tag",
                               "manifests"},
                {"digest", "size", "mediaType", "name", "manifests"}, where, "'image'")
    image = _manifest({k: img[k] for k in ("digest", "size", "mediaType", "platform") if k in img},
                      where, "'image'")
    name = _text(img, "name", where)
    repository = _text(img, "repository", where, optional=True)
    tag = _text(img, "tag", where, optional=True)
    try:
        if repository is not None:
            Repository.parse(repository)
        if tag is not None:
            Tag.parse(tag)
    except InvalidReference as e:
        raise _mismatch(where, f"intended {e.kind} {e.value[:80]!r} is invalid") from None
    ms = img["manifests"]
    if not isinstance(ms, list) or not ms or len(ms) > 1024:
        raise _mismatch(where, "'image.manifests' is not a list of 1 to 1024 manifests")
    manifests = tuple(_manifest(m, where, f"image.manifests[{i}]") for i, m in enumerate(ms))
    files_doc = _keys(doc["files"], set(LAYOUT_FILES), set(LAYOUT_FILES), where, "'files'")
    files = tuple((n, _blob(files_doc[n], where, f"files[{n!r}]")) for n in LAYOUT_FILES)
    ap = _keys(doc["assumed_present"], {"contents", "blobs"}, {"contents", "blobs"}, where,
               "'assumed_present'")
    if not isinstance(ap["contents"], list) or len(ap["contents"]) > 64:
        raise _mismatch(where, "'assumed_present.contents' is not a list of at most 64 files")
    contents = []
    for i, c in enumerate(ap["contents"]):
        c = _keys(c, {"name", "sha256"}, {"name", "sha256"}, where, f"assumed_present.contents[{i}]")
        if not isinstance(c["name"], str) or not _CONTENTS_NAME.fullmatch(c["name"]):
            raise _mismatch(where, f"assumed_present.contents[{i}] name is not a plain file name")
        contents.append(ContentsRef(c["name"], _dig(c["sha256"], where, "a contents sha256")))
    return BundleDescriptor(
        image=image, manifests=manifests, name=name or "", repository=repository, tag=tag,
        files=files, blobs=_blob_list(doc["blobs"], where, "blobs"),
        assumed=_blob_list(ap["blobs"], where, "assumed_present.blobs"), contents=tuple(contents),
        foreign=_blob_list(doc.get("foreign", []), where, "foreign"),
        tool=_text(doc, "tool", where, optional=True) or "",
        created=_text(doc, "created", where, optional=True) or "",
        source=_text(doc, "source", where, optional=True) or "")

