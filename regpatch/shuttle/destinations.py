"""Where a bundle is written: a folder (blobs written to a partial file, renamed once verified, resumed
after an interruption) or ``s3://bucket/prefix`` (multipart uploads completed only after the digest
matched)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path
from typing import Callable, Optional, Protocol

from regpatch import platform
from regpatch.bundle.s3 import S3Source
from regpatch.digest import Digest, new_hasher
from regpatch.errors import DigestMismatch, SizeMismatch, UsageError
from regpatch.hashing import copy_and_hash
from regpatch.signing.descriptor import DESCRIPTOR

log = logging.getLogger("regpatch.shuttle")

PARTIAL_DIR = ".regpatch-partial"

S3_MARKER = ".regpatch-incomplete"

META_DIGEST = "regpatch-sha256"


class Destination(Protocol):
    description: str

    def prepare(self) -> None: ...

    def has_blob(self, digest: Digest, size: int) -> bool: ...

    def put_blob(self, digest: Digest, size: int, feed: Callable, progress) -> int:
        """Write a blob through ``feed(dst, offset, hasher, progress)``; returns bytes resumed."""

    def put_file(self, name: str, data: bytes) -> None: ...

    def remove(self, name: str) -> None: ...

    def blob_names(self) -> set[str]: ...

    def finish(self) -> None: ...


def _verify(hasher, digest: Digest, size: int, written: int, what: str) -> None:
    if written != size:
        raise SizeMismatch(what, size, written)
    actual = Digest("sha256", hasher.hexdigest())
    if actual != digest:
        raise DigestMismatch(what, digest, actual, written)


class FolderDestination:
    def __init__(self, path: str):
        self.path = Path(path)
        self.description = str(self.path)
        self.blobs = self.path / "blobs" / "sha256"
        self.partial = self.path / PARTIAL_DIR

    def prepare(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise UsageError(f"--out {p} is a file; give a new or empty folder")
        if p.is_dir():
            entries = set(os.listdir(p))
            if entries and not ({DESCRIPTOR, PARTIAL_DIR} & entries):
                raise UsageError(f"--out {p} is a folder holding other files; give a new or empty "
                                 "folder (or the folder of an earlier bundle to update it)")
        for folder in (self.partial, self.path / "blobs", self.blobs):
            with contextlib.suppress(FileExistsError):  # (a link planted there, even a dangling one)
                folder.mkdir(parents=folder == self.partial)
            self._own_folder(folder)

    def _own_folder(self, folder: Path) -> None:
        """A folder of the bundle is a real folder inside it: a symbolic link (or junction) planted
        there would make a write, a resume or the clean-up reach outside the output folder."""
        st = os.lstat(folder)
        if platform.is_link(st) or not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{folder} is {'a symbolic link' if platform.is_link(st) else 'not a folder'}: "
                             "the folders of a bundle folder are never links (nothing was written through it); "
                             "remove it and run again")

    def _open(self, path: Path, flags: int) -> int:
        """A file of the bundle folder, never through a symbolic link planted at its name."""
        try:
            return platform.open_nofollow(path, flags, 0o644)
        except OSError as e:
            if os.path.islink(path) or e.errno == errno.ELOOP:
                raise UsageError(f"{path} is a symbolic link: a bundle folder's files are never links (nothing "
                                 "was read or written through it); remove it and run again") from None
            raise

    def _blob(self, digest: Digest) -> Path:
        return self.blobs / digest.hex

    def has_blob(self, digest: Digest, size: int) -> bool:
        path = self._blob(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if platform.is_link(st) or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            os.unlink(path)  # a link itself goes, never its target
            return False
        try:
            with os.fdopen(self._open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), "rb", buffering=0) as f:
                copy_and_hash(f, None, what=str(path), expected=digest, expected_size=size)
        except (DigestMismatch, SizeMismatch) as e:
            log.warning("%s; written again", e)
            os.unlink(path)
            return False
        return True

    def put_blob(self, digest: Digest, size: int, feed, progress) -> int:
        partial = self.partial / f"sha256-{digest.hex}"
        hasher, offset = new_hasher(), 0
        try:
            st = os.lstat(partial)
            have = -1 if platform.is_link(st) or not stat.S_ISREG(st.st_mode) else st.st_size
            if have < 0:
                os.unlink(partial)  # planted: the link itself goes
        except FileNotFoundError:
            have = -1
        if 0 < have <= size:
            with os.fdopen(self._open(partial, os.O_RDONLY | getattr(os, "O_BINARY", 0)), "rb", buffering=0) as f:
                _, offset = copy_and_hash(f, None, what=str(partial), hasher=hasher)
            log.info("resuming %s after %s B already written", digest, f"{offset:,}")
        elif have >= 0:
            os.unlink(partial)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        with os.fdopen(self._open(partial, flags), "ab", buffering=0) as dst:
            written = _Counter(dst, offset)
            try:
                feed(written, offset, hasher, progress)
                _verify(hasher, digest, size, written.n, f"blob {digest} written to {partial}")
            except (DigestMismatch, SizeMismatch):
                dst.close()
                os.unlink(partial)  # wrong bytes: never resumed
                raise
            os.fsync(dst.fileno())
        platform.replace(partial, self._blob(digest))
        platform.fsync_dir(self.blobs)
        return offset

    def put_file(self, name: str, data: bytes) -> None:
        final = self.path / name
        tmp = self.partial / f"file-{name}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover (or a planted link: the link itself goes)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(self._open(tmp, flags), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        platform.replace(tmp, final)
        platform.fsync_dir(self.path)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path / name)
        except FileNotFoundError:
            pass

    def blob_names(self) -> set[str]:
        """Regular files under blobs/sha256 (what the site would see listed)."""
        try:
            entries = list(os.scandir(self.blobs))
        except FileNotFoundError:
            return set()
        out = set()
        for e in entries:
            if e.is_file(follow_symlinks=False):
                out.add(f"blobs/sha256/{e.name}")
            else:
                log.warning("%s is not a regular file; remove it from the bundle folder", e.path)
        return out

    def finish(self) -> None:
        self._own_folder(self.partial)  # its files are removed: never those of a folder it points to
        for name in os.listdir(self.partial):
            os.unlink(self.partial / name)
        os.rmdir(self.partial)
        platform.fsync_dir(self.path)


class _Counter:
    """Counts the bytes written through it (``dst.write`` may write less than asked)."""

    def __init__(self, dst, start: int = 0):
        self.dst, self.n = dst, start

    def write(self, b) -> int:
        n = self.dst.write(b)
        n = len(b) if n is None else n
        self.n += n
        return n


class S3Destination:
    """``s3://bucket/prefix``: the same client, retries and credentials as S3 bundle sources."""

    def __init__(self, url: str, options):
        self._s3 = S3Source(url, options)
        self.description = self._s3.url
        self.part_size = options.part_size if options else 8 << 20

    def _key(self, name: str) -> str:
        return self._s3.key(name)

    def _call(self, what: str, fn):
        return self._s3._call(what, fn)

    @property
    def _client(self):
        return self._s3._client

    def _list(self, under: str = "") -> dict[str, int]:
        """Objects under the prefix (or under ``prefix/under/``): relative name -> size."""
        root = self._s3.prefix + "/" if self._s3.prefix else ""
        base = root + (under.strip("/") + "/" if under else "")
        out: dict[str, int] = {}
        token = None
        while True:
            kw = {"Bucket": self._s3.bucket, "Prefix": base}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(f"listing {self.description}/{under}",
                              lambda kw=kw: self._client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                out[obj["Key"][len(root):]] = int(obj["Size"])
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def prepare(self) -> None:
        names = set(self._list())
        if names and not ({DESCRIPTOR, S3_MARKER} & names):
            raise UsageError(f"--out {self.description} already holds other objects; give an empty "
                             "prefix (or the prefix of an earlier bundle to update it)")
        self.put_file(S3_MARKER, b"a regpatch bundle is being written here\n")

    def _head(self, name: str) -> Optional[dict]:
        from botocore.exceptions import ClientError  # boto3: only for an s3:// destination (start-up)

        def head():
            try:
                return self._client.head_object(Bucket=self._s3.bucket, Key=self._key(name))
            except ClientError as e:
                if (e.response.get("Error") or {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        return self._call(f"HEAD {self.description}/{name}", head)

    def has_blob(self, digest: Digest, size: int) -> bool:
        head = self._head(f"blobs/sha256/{digest.hex}")
        if not head:
            return False
        return int(head.get("ContentLength", -1)) == size \
            and (head.get("Metadata") or {}).get(META_DIGEST) == str(digest)

    def put_blob(self, digest: Digest, size: int, feed, progress) -> int:
        name = f"blobs/sha256/{digest.hex}"
        upload = _MultipartWriter(self, name, digest, self.part_size)
        hasher = new_hasher()
        try:
            feed(upload, 0, hasher, progress)
            _verify(hasher, digest, size, upload.n, f"blob {digest} for {self.description}/{name}")
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return 0

    def put_file(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._call(f"PUT {self.description}/{name}",
                   lambda: self._client.put_object(Bucket=self._s3.bucket, Key=key, Body=data))

    def remove(self, name: str) -> None:
        key = self._key(name)
        self._call(f"DELETE {self.description}/{name}",
                   lambda: self._client.delete_object(Bucket=self._s3.bucket, Key=key))

    def blob_names(self) -> set[str]:
        return {n for n in self._list("blobs/sha256")}

    def finish(self) -> None:
        self.remove(S3_MARKER)


class _MultipartWriter:
    """Buffers one part (``part_size``) at a time; the object exists only after ``complete``."""

    def __init__(self, dest: S3Destination, name: str, digest: Digest, part_size: int):
        self.dest, self.name, self.digest, self.part_size = dest, name, digest, part_size
        self.key = dest._key(name)
        self.buf = bytearray()
        self.n = 0
        self.upload_id: Optional[str] = None
        self.parts: list[dict] = []

    def write(self, b) -> int:
        self.buf += b
        self.n += len(b)
        while len(self.buf) >= self.part_size:
            part = bytes(self.buf[:self.part_size])
            del self.buf[:self.part_size]
            self._upload(part)
        return len(b)

    def _upload(self, part: bytes) -> None:
        d, s3 = self.dest, self.dest._s3
        if self.upload_id is None:
            resp = d._call(f"start upload of {d.description}/{self.name}", lambda: d._client.create_multipart_upload(
                Bucket=s3.bucket, Key=self.key, Metadata={META_DIGEST: str(self.digest)}))
            self.upload_id = resp["UploadId"]
        number = len(self.parts) + 1
        resp = d._call(f"PUT part {number} of {d.description}/{self.name}", lambda: d._client.upload_part(
            Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=part))
        self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def complete(self) -> None:
        d, s3 = self.dest, self.dest._s3
        if self.upload_id is None:  # small: one PUT
            body = bytes(self.buf)
            d._call(f"PUT {d.description}/{self.name}", lambda: d._client.put_object(
                Bucket=s3.bucket, Key=self.key, Body=body, Metadata={META_DIGEST: str(self.digest)}))
            return
        if self.buf:
            self._upload(bytes(self.buf))
            self.buf.clear()
        d._call(f"complete upload of {d.description}/{self.name}", lambda: d._client.complete_multipart_upload(
            Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}))
        self.upload_id = None

    def abort(self) -> None:
        if self.upload_id is None:
            return
        d, s3 = self.dest, self.dest._s3
        try:
            d._client.abort_multipart_upload(Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as e:  # best effort; the object was never completed
            log.warning("could not abort the upload of %s/%s: %s", d.description, self.name, type(e).__name__)
        self.upload_id = None


def open_destination(out: str, s3=None) -> Destination:
    if out.startswith("s3://"):
        return S3Destination(out, s3)
    return FolderDestination(out)

