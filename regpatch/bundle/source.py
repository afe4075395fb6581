"""Where bundle bytes come from: one interface for a local folder and S3.

The planner and the tasks only see ``BundleSource``: a flat namespace of
relative, '/'-separated file names with sizes, opened as binary streams.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Optional

from ..digest import Digest, copy_and_hash, io_retry

from ..errors import SourceError, UnknownBundleFormat, UnsafePath, UsageError


class BundleSource(ABC):
    #: how the source is named in logs and errors (never holds a credential)
    description: str

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


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\\" in name:
        raise UnsafePath(f"bundle file name {name!r} is not a plain relative path")
    return str(p)


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
    "accepted bundle formats: a staged folder (one *.manifest.json, one *.config.json, the layer "
    "files, optional <file>.digest sidecars) or an OCI image layout folder (oci-layout, index.json, "
    "blobs/sha256/), from a local path or s3://bucket/prefix"
)


def open_source(bundle: str, *, s3=None) -> BundleSource:
    """Map the BUNDLE argument to a source (``s3``: optional ``S3Options`` for s3:// URLs)."""
    if bundle.startswith("s3://"):
        from .s3 import S3Source

        return S3Source(bundle, s3)
    path = Path(bundle)
    if path.is_file():
        raise UnknownBundleFormat(_describe_file(path) + "; " + ACCEPTED_FORMATS)
    if not path.exists():
        raise UsageError(f"bundle {bundle} does not exist")
    return LocalFolderSource(path)


def _describe_file(path: Path) -> str:
    import tarfile

    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                names = set(t.getnames()[:10000])
            if "manifest.json" in names and ("repositories" in names or any(n.endswith("/layer.tar") for n in names)):
                return (f"{path} is a 'docker save' archive: its layers are uncompressed and cannot "
                        "reproduce the registry's manifest digest; export the image with "
                        "'skopeo copy docker-daemon:IMAGE oci:FOLDER:NAME' instead")
            if "oci-layout" in names or "./oci-layout" in names:
                return f"{path} is an OCI layout packed in a tar; unpack it to a folder first"
            return f"{path} is a tar archive, not a bundle folder; unpack it first"
    except (OSError, tarfile.TarError):
        pass
    return f"{path} is a file, not a bundle folder"
