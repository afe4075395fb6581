"""Staging: every blob a patch installs is first copied (or renamed) into the state
folder's ``staging/`` while it is hashed, and only a verified staged file is renamed into
``blobs/``. An interrupted copy is resumed from its partial file; a bundle file taken with
``--consume`` is adopted by a rename and verified in place.

``Staging`` is the part of ``RegistryStore`` that does this (a mixin: it uses the store's
layout, temp files, markers and path checks).
"""


from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional

from regpatch import platform
from regpatch.digest import Digest, new_hasher
from regpatch.errors import DigestMismatch, RegpatchError, SizeMismatch, StorageError, UnsafePath
from regpatch.hashing import copy_and_hash, hash_fd, hash_file, kernel_copy_and_hash
from regpatch.hooks import checkpoint
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.storage.files import FILE_MODE, TMP_MARK, _io, _is_plain_file, _raise_write_error, fsync_dir
from regpatch.storage.layout import Layout

log = logging.getLogger("regpatch.store")

NOTE_LIMIT = 4096  # a staging note is a validator and a size


class Staging:
    """Staged blobs of a ``RegistryStore`` (see the module docstring)."""

    layout: Layout
    _owner: Optional[tuple[int, int]]

    if TYPE_CHECKING:  # what RegistryStore provides (this is a part of it, see the module docstring)
        def _check_inside(self, path: Path) -> None: ...
        def _mkdirs(self, path: Path) -> None: ...
        def _verified(self, digest: Digest, path: Path, st: os.stat_result) -> bool: ...
        def _remember_verified(self, digest: Digest, path: Path) -> None: ...
        def _temp_beside(self, final: Path, durable: bool = True) -> AbstractContextManager[BinaryIO]: ...
        @staticmethod
        def _discard(tmp: Path) -> None: ...
        def write_file(self, path: Path, data: bytes, durable: bool = True) -> None: ...
        def verify_blob(self, digest: Digest, size: int, progress: Optional[Callable[[int], None]] = None, *,
                        remember: bool = True) -> bool: ...

    def staged_path(self, digest: Digest) -> Optional[Path]:
        """A fully verified staged copy of digest, if one is waiting."""
        path = self.layout.staged_blob(digest)
        self._check_inside(path)
        with _io("reading", path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
        return path if self._verified(digest, path, st) else None

    def recheck_staged(self, digest: Digest, size: int,
                       progress: Optional[Callable[[int], None]] = None) -> bool:
        """True when a staged copy left by an earlier run still hashes to ``digest``. Its
        marker is not trusted for this (the state folder may be shared, the run that wrote it
        may have been killed): a copy that fails is removed, to be staged again."""
        path = self.layout.staged_blob(digest)
        if not os.path.lexists(path):
            return False
        try:
            hash_file(path, what=f"staged copy {path}", expected=digest, expected_size=size, progress=progress)
        except (DigestMismatch, SizeMismatch) as e:
            log.warning("%s; removed, the blob is staged again", e)
            self._discard(path)
            return False
        self._remember_verified(digest, path)
        return True

    def stage_blob(self, digest: Digest, size: int, open_source: Callable[[], BinaryIO], *,
                   what: str, progress: Optional[Callable[[int], None]] = None) -> Path:
        """Copy a blob into the staging folder while hashing it: one read pass.

        A source that is a regular file is cloned (a reflink) or copied by the kernel
        (``platform.kernel_copy``) while the copy itself is hashed; elsewhere (Windows)
        it is read, hashed and written in one pass.

        On a digest or size mismatch the partial file is removed and the error
        raised; the registry's v2/ tree is never touched here.
        """
        final = self.layout.staged_blob(digest)
        with self._temp_beside(final) as dst, _io(f"copying {what} into", final), open_source() as src:
            done = None
            region = getattr(src, "file_region", None)  # (fd, offset): a member of a local archive
            if region is not None:
                done = kernel_copy_and_hash(region[0], dst.fileno(), what=what, expected=digest,
                                            expected_size=size, progress=progress, src_offset=region[1])
            elif _is_plain_file(src):
                platform.advise_sequential(src.fileno())
                if platform.reflink(src.fileno(), dst.fileno()):  # XFS, btrfs: blocks shared, no copy
                    log.info("%s: cloned (reflink), hashing the clone", what)
                    done = hash_fd(dst.fileno(), what=what, expected=digest, expected_size=size,
                                   progress=progress)
                else:  # the kernel copies, this thread hashes the copy
                    done = kernel_copy_and_hash(src.fileno(), dst.fileno(), what=what, expected=digest,
                                                expected_size=size, progress=progress)
            if done is None:
                copy_and_hash(src, dst, what=what, expected=digest, expected_size=size,
                              progress=progress)
        self._remember_verified(digest, final)
        return final

    PARTIAL_SUFFIX = ".partial"

    def partial_path(self, digest: Digest) -> Path:
        """Where an interrupted download of digest waits to be resumed (staging folder)."""
        final = self.layout.staged_blob(digest)
        return final.with_name(final.name + self.PARTIAL_SUFFIX)

    def stage_blob_resumable(self, digest: Digest, size: int, open_at: Callable[[int], BinaryIO], *,
                             what: str, validator: str,
                             progress: Optional[Callable[[int], None]] = None) -> int:
        with _io(f"staging {what} in", self.partial_path(digest)):
            return self._stage_blob_resumable(digest, size, open_at, what=what, validator=validator,
                                              progress=progress)

    def _stage_blob_resumable(self, digest: Digest, size: int, open_at: Callable[[int], BinaryIO], *,
                              what: str, validator: str,
                              progress: Optional[Callable[[int], None]] = None) -> int:
        """Like ``stage_blob``, resuming the partial file an earlier attempt or run left.

        The partial (``partial_path``) and its ``.json`` note of ``validator``
        (e.g. the source object's URL, ETag and size) stay in the staging
        folder. A partial with the same validator is hashed first and the rest
        is read from ``open_at(offset)``; another validator restarts from 0.
        A digest or size mismatch removes the partial; any other error keeps
        it. Returns the number of bytes resumed from disk.
        """
        final = self.layout.staged_blob(digest)
        partial = self.partial_path(digest)
        note = partial.with_name(partial.name + ".json")
        self._mkdirs(partial.parent)
        want = {"validator": validator, "size": size}
        try:
            resumable = json.loads(read_own_file(note, NOTE_LIMIT, what="staging note") or b"null") == want
        except (RegpatchError, ValueError):
            resumable = False
        hasher, offset = new_hasher(), 0
        if resumable and partial.is_file() and os.path.getsize(partial) <= size:
            with open(partial, "rb", buffering=0) as f:
                _, offset = copy_and_hash(f, None, what=str(partial), hasher=hasher)
        else:
            self._discard(partial)
            self.write_file(note, json.dumps(want).encode())
            hasher = new_hasher()
        if offset and progress:
            progress(offset)
        try:
            fd = platform.open_file(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        except OSError as e:
            _raise_write_error(e, partial)
        try:
            with os.fdopen(fd, "ab", buffering=0) as dst:
                if offset < size or offset == 0:
                    with open_at(offset) as src:
                        copy_and_hash(src, dst, what=what, expected=digest, expected_size=size,
                                      progress=progress, hasher=hasher, already=offset)
                else:
                    actual = Digest("sha256", hasher.hexdigest())
                    if actual != digest:
                        raise DigestMismatch(what, digest, actual, offset)
                os.fsync(dst.fileno())
        except (DigestMismatch, SizeMismatch):
            self._discard(partial)
            self._discard(note)
            raise
        except OSError as e:
            _raise_write_error(e, partial)
        platform.replace(partial, final)
        fsync_dir(final.parent)
        self._discard(note)
        self._remember_verified(digest, final)
        return offset

    def install_staged(self, digest: Digest, staged: Path, *, size: int, replace: bool = False) -> bool:
        """Move a verified staged blob to blobs/.../data. False if already present.

        ``replace`` overwrites a registry copy of the wrong size (a repair). The
        staging folder is shared by every run on this storage: when another run
        (another repository's patch) installed the same blob first, the staged
        file is gone and the blob is in place; it is verified (hashed, unless its
        verified marker matches) and the call returns False.
        """
        final = self.layout.blob_data(digest)
        with _io("installing the blob", final):
            return self._install_staged(digest, staged, final, replace, size)

    def _install_staged(self, digest: Digest, staged: Path, final: Path, replace: bool, size: int) -> bool:
        self._check_inside(final)
        if os.path.lexists(final) and not replace:
            self.verify_blob(digest, size)
            self._discard(staged)  # our own copy, not needed: another run installed the blob
            return False
        self._mkdirs(final.parent)
        try:
            platform.replace(staged, final)  # same filesystem: the state folder is under root
        except FileNotFoundError:
            if not final.exists():
                raise StorageError(f"staged blob {staged} disappeared before it could be installed, and "
                                   f"{self.layout.relative(final)} is not there; run the patch again") from None
            self.verify_blob(digest, size)
            log.info("blob %s was installed by another run meanwhile: verified in place", digest)
            return False
        except OSError as e:
            if e.errno != errno.EXDEV:
                _raise_write_error(e, final)
            with self._temp_beside(final) as dst, open(staged, "rb") as src:
                copy_and_hash(src, dst, what=str(staged), expected=digest)
            os.unlink(staged)
        fsync_dir(final.parent)
        checkpoint(f"installed blob {digest.short}")
        self._remember_verified(digest, final)
        return True


    # -- --consume: take a bundle file instead of copying it ---------------------
    def same_filesystem(self, path: Path) -> bool:
        """True when ``path`` is on the filesystem of the staging folder (a rename works)."""
        probe = self.layout.staging
        with _io("checking the filesystem of", path):
            while not probe.exists():
                probe = probe.parent
            return os.stat(path).st_dev == os.stat(probe).st_dev

    def adopt_blob(self, digest: Digest, size: int, path: Path, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path:
        """Move a bundle file into the staging folder (a rename) and verify it there:
        ingest costs one hash. A file that fails verification is renamed back to where
        it was; the registry's v2/ tree is never touched here."""
        with _io(f"moving {what} into", self.layout.staged_blob(digest)):
            return self._adopt_blob(digest, size, path, what=what, progress=progress)

    def _adopt_blob(self, digest: Digest, size: int, path: Path, *, what: str,
                    progress: Optional[Callable[[int], None]] = None) -> Path:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a plain file with one link"
            raise UnsafePath(f"{what} is {kind}"
                             "; it cannot be consumed (renamed into the storage): copy it instead")
        final = self.layout.staged_blob(digest)
        self._mkdirs(final.parent)
        tmp = final.parent / f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            platform.replace(path, tmp)  # (tmp is a new name: a rename)
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise UnsafePath(f"{what} is on another filesystem than the storage: {opt.consume} cannot "
                                 f"rename it; drop {opt.consume} to copy it") from None
            _raise_write_error(e, final)
        try:
            with open(tmp, "rb", buffering=0) as f:
                hash_fd(f.fileno(), what=what, expected=digest, expected_size=size, progress=progress)
            os.chmod(tmp, FILE_MODE)  # (on Windows it also ends a read-only attribute the flush would refuse)
            platform.fsync_path(tmp)
            if self._owner is not None:
                platform.chown(tmp, self._owner)
        except BaseException:
            try:
                if not os.path.lexists(path):
                    platform.replace(tmp, path)  # give it back, as it was
                else:
                    self._discard(tmp)
            except OSError:
                pass
            raise
        platform.replace(tmp, final)
        fsync_dir(final.parent)
        fsync_dir(Path(path).parent)
        self._remember_verified(digest, final)
        return final
