"""A bundle in a local folder: files read in place, staged blobs copied by the kernel where it can."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import BinaryIO, Optional

from regpatch.bundle.model import BundleSource, _safe_name
from regpatch.errors import SourceError, UnsafePath, UsageError

log = logging.getLogger("regpatch.bundle")


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

    def canonical(self, name: str) -> str:
        """The file a name reads, symlinks inside the folder followed: two names, one file."""
        real = Path(os.path.realpath(self._resolve(name)))
        return real.relative_to(self._real).as_posix()

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
                    except OSError as e:
                        if e.errno != errno.ELOOP:
                            raise
                        log.warning("bundle file %s is a symlink that loops (to itself or in a cycle): it is no "
                                    "file, skipped", path)
                        continue
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
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise SourceError(f"bundle file {path} is a symlink that loops (to itself or in a cycle); put the "
                              "file itself in the bundle") from None

    def local_path(self, name: str) -> Optional[Path]:
        return self._resolve(name)

