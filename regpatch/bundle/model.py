"""The bundle side's nouns: where bundle bytes come from and what a bundle is.

``BundleSource``: a flat namespace of relative, '/'-separated file names with sizes,
opened as binary streams (a local folder, an archive, S3); the planner and the tasks
only see this. ``PatchBundle``: the top manifest (exact bytes) and the bundle file that
holds any digest, as every format reader (``regpatch.bundle.open``) produces it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Optional, Protocol, runtime_checkable

from regpatch.digest import Digest
from regpatch.errors import DigestMismatch, SizeMismatch, SourceError, UnsafePath
from regpatch.hashing import copy_and_hash, io_retry
from regpatch.manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse_manifest


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


CONSUMED_NOTE = "regpatch-consumed.jsonl"


class BundleSource(ABC):
    #: how the source is named in logs and errors (never holds a credential)
    description: str

    @property
    def parallel_reads(self) -> bool:
        """Several files can be read at once at full speed (a local disk): a stager may
        stage two blobs at a time. Network and compressed sources say False."""
        return False

    @abstractmethod
    def list(self) -> dict[str, int]:
        """Every file: relative name -> size in bytes."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A binary stream of the file, positioned at 0."""

    def read_bytes(self, name: str, limit: int) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SourceError(f"{self.describe(name)} is larger than {limit} bytes; "
                              "it cannot be a manifest or config")
        return data

    def local_path(self, name: str) -> Optional[Path]:
        """A path on this machine's filesystem, when the source has one."""
        return None

    @io_retry
    def hash(self, name: str, *, expected: Optional[Digest] = None, expected_size: Optional[int] = None,
             what: Optional[str] = None, progress: Optional[Callable[[int], None]] = None) -> Digest:
        """Hash a file of the source, streamed; transient I/O errors restart it."""
        with self.open(name) as f:
            digest, _ = copy_and_hash(f, None, what=what or self.describe(name), expected=expected,
                                      expected_size=expected_size, progress=progress)
        return digest

    def describe(self, name: str) -> str:
        return f"{self.description}/{name}"

    def want(self, names: Iterable[str]) -> None:  # noqa: B027  (a hint: a no-op for most sources)
        """Hint: the files a patch may read. Sources read in passes (compressed archives) use it."""

    def canonical(self, name: str) -> str:
        """The file a name reads (archives resolve their links); two names, one content."""
        return name

    def scan(self, names: Iterable[str], fn: Callable[[str, BinaryIO], None]) -> None:
        """``fn(name, stream)`` for each name; compressed archives do it in one pass, in their order."""
        for name in names:
            with self.open(name) as f:
                fn(name, f)


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\\" in name:
        raise UnsafePath(f"bundle file name {name!r} is not a plain relative path")
    return str(p)


@runtime_checkable
class StagesBlobs(Protocol):
    """A source that copies a blob into the store's staging folder itself (S3: resumable
    ranged GETs; a compressed archive: one pass staging every wanted blob in archive
    order; an archive in S3: the member's byte range). Such sources set ``resumable``."""

    def stage_blob(self, store, digest: Digest, size: int, name: str, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path: ...


ACCEPTED_FORMATS = (
    "accepted bundles: an OCI image layout folder or OCI archive (skopeo copy ... oci:DIR / "
    "oci-archive:FILE.tar, podman save --format oci-archive), a dir: folder (skopeo copy ... dir:DIR, "
    "podman save --format docker-dir), a docker save archive or its unpacked folder (converted), or "
    "the staged folder (*.manifest.json, *.config.json, layers, optional .digest sidecars); tar files "
    "plain or gzip/zstd/xz/bzip2 compressed; local or s3://bucket/prefix (s3://bucket/key.tar for an archive)"
)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.zstd", ".tar.xz", ".txz",
                    ".tar.bz2", ".tbz2", ".oci", ".ociarchive")


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
    conversion: Optional[object] = None  # a regpatch.bundle.dockersave.Conversion (the model knows no format)

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
