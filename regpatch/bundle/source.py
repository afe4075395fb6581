"""Where bundle bytes come from: one interface for a local folder and S3.

The planner and the tasks only see ``BundleSource``: a flat namespace of
relative, '/'-separated file names with sizes, opened as binary streams.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Optional, Protocol, runtime_checkable

from ..digest import Digest, copy_and_hash, io_retry

from ..errors import SourceError, UnknownBundleFormat, UnsafePath, UsageError


class BundleSource(ABC):
    #: how the source is named in logs and errors (never holds a credential)
    description: str
    #: several files can be read at once at full speed (a local disk): a stager may
    #: stage two blobs at a time. Network and compressed sources say False.
    parallel_reads: bool = False

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

    def want(self, names: Iterable[str]) -> None:
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


class LocalFolderSource(BundleSource):
    """A bundle folder on a local disk or mounted share.

    Symlinks are followed only while they stay inside the folder: a symlink
    that points outside it is refused when the folder is listed.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.description = str(self.folder)
        if not self.folder.is_dir():
            raise UsageError(f"bundle folder {self.folder} does not exist or is not a folder")
        self._real = Path(os.path.realpath(self.folder))
        self._files: Optional[dict[str, int]] = None

    parallel_reads = True

    def _resolve(self, name: str) -> Path:
        name = _safe_name(name)
        path = self.folder / name
        real = Path(os.path.realpath(path))
        if real != self._real and self._real not in real.parents:
            raise UnsafePath(f"bundle file {path} is a symlink to {real}, outside the bundle "
                             f"{self.folder}; copy the file into the bundle instead")
        return path

    def list(self) -> dict[str, int]:
        if self._files is None:
            files: dict[str, int] = {}
            for dirpath, dirnames, filenames in os.walk(self.folder):
                for d in list(dirnames):  # refuse directory symlinks leaving the bundle
                    self._resolve(os.path.relpath(os.path.join(dirpath, d), self.folder).replace(os.sep, "/"))
                for fn in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, fn), self.folder).replace(os.sep, "/")
                    path = self._resolve(rel)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        raise UnsafePath(f"bundle file {path} is a dangling symlink") from None
                    if not os.path.isfile(path):
                        continue
                    files[rel] = st.st_size
            self._files = files
        return dict(self._files)

    def open(self, name: str) -> BinaryIO:
        path = self._resolve(name)
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise SourceError(f"bundle file {path} does not exist") from None

    def local_path(self, name: str) -> Optional[Path]:
        return self._resolve(name)


ACCEPTED_FORMATS = (
    "accepted bundles: an OCI image layout folder or OCI archive (skopeo copy ... oci:DIR / "
    "oci-archive:FILE.tar, podman save --format oci-archive), a dir: folder (skopeo copy ... dir:DIR, "
    "podman save --format docker-dir), a docker save archive or its unpacked folder (converted), or "
    "the staged folder (*.manifest.json, *.config.json, layers, optional .digest sidecars); tar files "
    "plain or gzip/zstd/xz/bzip2 compressed; local or s3://bucket/prefix (s3://bucket/key.tar for an archive)"
)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.zstd", ".tar.xz", ".txz",
                    ".tar.bz2", ".tbz2", ".oci", ".ociarchive")


def open_source(bundle: str, *, s3=None) -> BundleSource:
    """Map the BUNDLE argument to a source (``s3``: optional ``S3Options`` for s3:// URLs).

    A folder or S3 prefix is read as a folder; a file, or an S3 key naming an
    archive (``.tar``, ``.tar.gz``, ``.tar.zst``, ...), as an archive read in place.
    """
    from .archive import LocalArchiveFile, SourceArchiveFile, open_archive

    if bundle.startswith("s3://"):
        from .s3 import S3Source

        if bundle.rstrip("/").lower().endswith(ARCHIVE_SUFFIXES) and not bundle.endswith("/"):
            obj = S3Source.for_object(bundle.rstrip("/"), s3)
            name = next(iter(obj.list()))
            return open_archive(SourceArchiveFile(obj, name))
        return S3Source(bundle, s3)
    path = Path(bundle)
    if path.is_file():
        return open_archive(LocalArchiveFile(path))
    if not path.exists():
        raise UsageError(f"bundle {bundle} does not exist")
    if not path.is_dir():
        raise UnknownBundleFormat(f"bundle {bundle} is neither a file nor a folder; " + ACCEPTED_FORMATS)
    return LocalFolderSource(path)
