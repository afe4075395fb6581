"""Tar archives as bundle sources, read in place: never unpacked to a temp copy.

- ``PlainTarSource``: an uncompressed tar (local or S3). Its members are
  indexed from their headers once (a seek per member; over S3 one small
  ranged GET per header), then each member is read where it lies: a local
  member by ``pread`` on the archive, an S3 member by ranged GETs of its
  bytes only. Several members can be read at once.
- ``StreamTarSource``: a gzip, zstd, xz or bzip2 compressed tar. It can only
  be read front to back, so it is read in whole passes: one to list it (small
  members, i.e. index.json, manifests and configs, are kept in memory, up to
  ``SMALL_CACHE`` in all), and one more to stage, hash or convert every blob
  a patch needs, in archive order (``scan``). Nothing of it is written
  anywhere but into the registry's staging folder.

``open_archive`` sniffs the first bytes (never the file name) and returns the
right one.
"""

from __future__ import annotations

import bz2
import io
import logging
import lzma
import os
import threading
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional

from regpatch import platform
from regpatch.bundle.model import ACCEPTED_FORMATS, BundleSource
from regpatch.bundle.tarstream import (
    DIR,
    FILE,
    TarError,
    TarMember,
    TarReader,
    index_tar,
    looks_like_tar,
    resolve_links,
)
from regpatch.digest import CHUNK, Digest
from regpatch.errors import BundleError, DigestMismatch, SizeMismatch, SourceError, UnknownBundleFormat
from regpatch.hashing import _readinto, copy_and_hash

log = logging.getLogger("regpatch.bundle")

SMALL = 16 << 20            # members up to this size are kept from the listing pass (configs may be 16 MiB)
SMALL_CACHE = 64 << 20      # ... up to this much in all
READ_AHEAD = 64 << 10       # one read of an S3 header also brings the small members after it

GZIP, ZSTD, XZ, BZIP2, PLAIN = "gzip", "zstd", "xz", "bzip2", "tar"


def sniff_compression(head: bytes) -> Optional[str]:
    """The compression of a file from its first bytes; PLAIN for a tar; None for anything else."""
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ZSTD
    if head[:6] == b"\xfd7zXZ\x00":
        return XZ
    if head[:3] == b"BZh":
        return BZIP2
    if looks_like_tar(head):
        return PLAIN
    return None


# -- where the archive's bytes are --------------------------------------------------

class ArchiveFile(ABC):
    """One archive file, local or in an object store: random reads and streams."""

    description: str
    size: int

    @abstractmethod
    def read_at(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (fewer only at the end of the file)."""

    @abstractmethod
    def open_range(self, offset: int, length: int) -> BinaryIO:
        """A stream of bytes offset..offset+length-1."""

    @property
    def is_remote(self) -> bool:
        return False


class LocalArchiveFile(ArchiveFile):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = str(self.path)
        try:
            self.size = os.stat(self.path).st_size
        except OSError as e:
            raise SourceError(f"cannot read the archive {self.path}: {e.strerror}") from None

    def read_at(self, offset: int, n: int) -> bytes:
        fd = platform.open_file(self.path, os.O_RDONLY)  # its own descriptor: read by position
        try:
            out = bytearray(n)
            got = 0
            while got < n:
                k = platform.pread_into(fd, memoryview(out)[got:], offset + got)
                if not k:
                    break
                got += k
            return bytes(out[:got])
        finally:
            os.close(fd)

    def open_range(self, offset: int, length: int) -> BinaryIO:
        return _FileWindow(self.path, offset, length)  # type: ignore[return-value]


class _FileWindow(io.RawIOBase):
    """A byte range of a local file, read by position (``platform.pread_into``) on its own descriptor.

    It has no ``fileno()``: a kernel copy would copy from the descriptor's
    position and check the end of the whole file, not of the member.
    """

    def __init__(self, path: Path, offset: int, length: int):
        super().__init__()
        self._fd = platform.open_file(path, os.O_RDONLY)
        self._pos = offset
        self._end = offset + length
        self._path = path

    @property
    def file_region(self) -> tuple[int, int]:
        """(descriptor, offset) of the bytes still to read: a kernel copy of exactly the
        member's bytes (``kernel_copy_and_hash(src_offset=...)``) reads them in place."""
        return self._fd, self._pos

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        left = self._end - self._pos
        if left <= 0:
            return 0
        view = memoryview(b)[:left]
        n = platform.pread_into(self._fd, view, self._pos)
        if n == 0:
            raise SourceError(f"the archive {self._path} is shorter than its tar headers say "
                              f"(it ends at byte {self._pos:,}); it was truncated")
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class SourceArchiveFile(ArchiveFile):
    """An archive that is one file of another source (an S3 object)."""

    def __init__(self, source: BundleSource, name: str):
        self.source = source
        self.name = name
        self.description = source.describe(name)
        self.size = source.list()[name]

    @property
    def is_remote(self) -> bool:
        return True

    def read_at(self, offset: int, n: int) -> bytes:
        reader = getattr(self.source, "read_at", None)
        if reader is not None:
            return reader(self.name, offset, n)
        with self.open_range(offset, n) as f:
            return f.read(n)

    def open_range(self, offset: int, length: int) -> BinaryIO:
        try:
            return self.source.open(self.name, start=offset, end=offset + length)  # type: ignore[call-arg]
        except TypeError:  # a source without ranges: read and drop what comes before
            f = self.source.open(self.name)
            _skip(f, offset)
            return _Limited(f, length)  # type: ignore[return-value]


class _CachedReadAt:
    """Read-ahead for header walks over a remote archive: few, larger GETs."""

    def __init__(self, archive: ArchiveFile, block: int = READ_AHEAD):
        self.archive = archive
        self.block = block
        self._start = 0
        self._data = b""

    def __call__(self, offset: int, n: int) -> bytes:
        end = offset + n
        if self._start <= offset and end <= self._start + len(self._data):
            return self._data[offset - self._start:end - self._start]
        if n >= self.block:
            return self.archive.read_at(offset, n)
        self._start = offset
        self._data = self.archive.read_at(offset, self.block)
        return self._data[:n]


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        data = f.read(min(CHUNK, n))
        if not data:
            raise SourceError("the archive ended early")
        n -= len(data)


class _Limited(io.RawIOBase):
    def __init__(self, raw: BinaryIO, length: int):
        super().__init__()
        self._raw = raw
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(b)[:self._left]
        data = self._raw.read(len(view))
        n = len(data)
        view[:n] = data
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


# -- decompression ----------------------------------------------------------------

def _decompressed(raw: BinaryIO, kind: str, what: str) -> BinaryIO:
    if kind == GZIP:
        return io.BufferedReader(_SimpleGzip(raw, what), CHUNK)
    if kind == ZSTD:
        try:
            import zstandard  # only for a zstd-compressed archive
        except ImportError:
            raise UnknownBundleFormat(f"{what} is zstd-compressed and the 'zstandard' package is missing; "
                                      "install it (pip install zstandard) or decompress the archive "
                                      "with 'zstd -d' first") from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True,
                                                          closefd=True)
    if kind == XZ:
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if kind == BZIP2:
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw


class _SimpleGzip(io.RawIOBase):
    """gzip with several members, decompressed in large chunks; truncation is an error."""

    def __init__(self, raw: BinaryIO, what: str):
        super().__init__()
        self._raw = raw
        self._what = what
        self._d = zlib.decompressobj(31)
        self._in = b""
        self._member_started = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = len(b)
        while True:
            if self._in:
                if self._d.eof:
                    rest = self._in
                    if not rest.strip(b"\0"):
                        self._in = b""  # zero padding after the last member (tape blocking)
                        continue
                    self._d = zlib.decompressobj(31)
                try:
                    out = self._d.decompress(self._in, want)
                except zlib.error as e:
                    raise SourceError(f"{self._what}: corrupt gzip data ({e})") from None
                self._member_started = True
                self._in = self._d.unconsumed_tail if not self._d.eof else self._d.unused_data
                if out:
                    n = len(out)
                    b[:n] = out
                    return n
                continue
            if self._eof:
                return 0
            data = self._raw.read(CHUNK)
            if not data:
                self._eof = True
                if self._member_started and not self._d.eof:
                    raise SourceError(f"{self._what}: the gzip stream is truncated")
                return 0
            self._in = data

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


# -- sources --------------------------------------------------------------------------

def _resolve_links(members: dict[str, TarMember], what: str) -> dict[str, TarMember]:
    """Every name that can be read (files, and links to files inside the archive) -> its file member,
    resolved as the extracted tree resolves it (``tarstream.resolve_links``: symlinked folders are
    followed before '..', as the OS does; what extraction would do otherwise is refused)."""
    return resolve_links(members, what)


def _collect(reader_members: Iterable[TarMember], what: str) -> dict[str, TarMember]:
    members: dict[str, TarMember] = {}
    for m in reader_members:
        if not m.name:
            continue
        prev = members.get(m.name)
        if prev is not None and not (prev.kind == DIR and m.kind == DIR):
            raise BundleError(f"{what} holds {m.name!r} twice; a tool reading it would take either: "
                              "write the archive again")
        members[m.name] = m
    return members


class _ArchiveSource(BundleSource):
    """What plain and compressed tar sources share."""

    archive: ArchiveFile
    compression: str

    def describe(self, name: str) -> str:
        return f"{self.archive.description}:{name}"

    def canonical(self, name: str) -> str:
        """The file member a name (maybe a link) reads."""
        return self._files[name].name if name in self._files else name

    _files: dict[str, TarMember]


class PlainTarSource(_ArchiveSource):
    """An uncompressed tar, members read in place (local pread, or S3 ranged GETs)."""

    compression = PLAIN

    def __init__(self, archive: ArchiveFile):
        self.archive = archive
        self.description = archive.description
        read = _CachedReadAt(archive) if archive.is_remote else archive.read_at
        members = _collect(index_tar(read, what=archive.description, size=archive.size), archive.description)
        for m in members.values():
            if m.kind == FILE and m.offset + m.size > archive.size:
                raise SourceError(f"{archive.description} is truncated: member {m.name!r} needs "
                                  f"{m.offset + m.size:,} bytes, the file has {archive.size:,}")
        self._files = _resolve_links(members, archive.description)
        self.members = members

    @property
    def resumable(self) -> bool:  # an S3 archive stages its members resumably (ranged GETs)
        return self.archive.is_remote

    @property
    def parallel_reads(self) -> bool:  # a local archive: members are independent preads
        return not self.archive.is_remote

    def list(self) -> dict[str, int]:
        return {n: m.size for n, m in self._files.items()}

    def _member(self, name: str) -> TarMember:
        m = self._files.get(name)
        if m is None:
            raise SourceError(f"{self.describe(name)} is not a file of the archive")
        return m

    def open(self, name: str) -> BinaryIO:
        m = self._member(name)
        return self.archive.open_range(m.offset, m.size)

    def read_bytes(self, name: str, limit: int) -> bytes:
        m = self._member(name)
        if m.size > limit:
            raise SourceError(f"{self.describe(name)} is larger than {limit} bytes; "
                              "it cannot be a manifest or config")
        data = self.archive.read_at(m.offset, m.size)
        if len(data) != m.size:
            raise SourceError(f"{self.describe(name)}: the archive is truncated")
        return data

    def stage_blob(self, store, digest: Digest, size: int, name: str, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path:
        """Remote archives: stage a member resumably, only its own byte range fetched."""
        m = self._member(name)
        validator = ""
        if isinstance(self.archive, SourceArchiveFile):  # remote (is_remote): the object's ETag goes in it
            etag = getattr(self.archive.source, "etag", lambda n: "")(self.archive.name)
            validator = (f"{self.archive.description} etag={etag}"
                         f" member={m.name} offset={m.offset} size={m.size}")
        store.stage_blob_resumable(digest, size,
                                   lambda off: self.archive.open_range(m.offset + off, m.size - off),
                                   what=what, validator=validator, progress=progress)
        return store.layout.staged_blob(digest)


class StreamTarSource(_ArchiveSource):
    """A compressed tar: read front to back, in whole passes (see the module docstring)."""

    def __init__(self, archive: ArchiveFile, compression: str):
        self.archive = archive
        self.compression = compression
        self.description = archive.description
        self._small: dict[str, bytes] = {}
        self._wanted: set[str] = set()
        self._hashes: dict[str, tuple[Digest, int]] = {}
        self._lock = threading.Lock()
        self.passes = 0
        members: list[TarMember] = []
        cached = 0

        def keep(m: TarMember, reader: TarReader) -> None:
            nonlocal cached
            members.append(m)
            if m.kind == FILE and m.size <= SMALL and cached + m.size <= SMALL_CACHE:
                with reader.member_stream(m) as f:
                    data = f.read(m.size)
                self._small[m.name] = data
                cached += m.size

        self._pass(keep)
        collected = _collect(members, archive.description)
        self._files = _resolve_links(collected, archive.description)
        self.members = collected

    resumable = True   # stage_blob below: the current apply hands every blob to it

    def _pass(self, fn: Callable[[TarMember, TarReader], None]) -> None:
        self.passes += 1
        raw = self.archive.open_range(0, self.archive.size)
        with _decompressed(raw, self.compression, self.archive.description) as stream:
            reader = TarReader(stream, what=self.archive.description)
            for m in reader.members():
                fn(m, reader)

    def want(self, names: Iterable[str]) -> None:
        """The blobs a patch may read: a pass handles them all at once."""
        self._wanted.update(self.canonical(n) for n in names if n in self._files)

    def list(self) -> dict[str, int]:
        return {n: m.size for n, m in self._files.items()}

    def read_bytes(self, name: str, limit: int) -> bytes:
        m = self._files.get(name)
        if m is None:
            raise SourceError(f"{self.describe(name)} is not a file of the archive")
        if m.size > limit:
            raise SourceError(f"{self.describe(name)} is larger than {limit} bytes; "
                              "it cannot be a manifest or config")
        data = self._small.get(m.name)
        if data is None:
            with self.open(name) as f:
                data = f.read(m.size)
        return data

    def open(self, name: str) -> BinaryIO:
        """One member: a pass up to it (slow for many members: prefer ``scan``)."""
        m = self._files.get(name)
        if m is None:
            raise SourceError(f"{self.describe(name)} is not a file of the archive")
        if m.name in self._small:
            return io.BytesIO(self._small[m.name])
        out = _PassReader(self, m)
        return out  # type: ignore[return-value]

    def scan(self, names: Iterable[str], fn: Callable[[str, BinaryIO], None]) -> None:
        """``fn(name, stream)`` for every name, in one pass, in archive order."""
        by_member: dict[str, list[str]] = {}
        for n in names:
            by_member.setdefault(self.canonical(n), []).append(n)
        if not by_member:
            return

        def visit(m: TarMember, reader: TarReader) -> None:
            for n in by_member.get(m.name, ()):
                if m.name in self._small:
                    fn(n, io.BytesIO(self._small[m.name]))
                else:
                    with reader.member_stream(m) as f:
                        fn(n, f)
                    break  # the stream is consumed: a second alias gets nothing
        self._pass(visit)

    # the base's hash is wrapped by tenacity's retry, typed _RetryDecorated (with its retry attributes): this
    # override is a plain method on purpose (one pass over the archive, not retried)
    def hash(self, name: str, *, expected: Optional[Digest] = None,  # type: ignore[override]
             expected_size: Optional[int] = None,
             what: Optional[str] = None, progress: Optional[Callable[[int], None]] = None) -> Digest:
        """Dry runs: the first call hashes every wanted member in one pass."""
        m = self._files.get(name)
        if m is None:
            raise SourceError(f"{self.describe(name)} is not a file of the archive")
        with self._lock:
            if m.name not in self._hashes:
                todo = sorted(self._wanted | {m.name})

                def one(n: str, f: BinaryIO) -> None:
                    d, size = copy_and_hash(f, None, what=self.describe(n))
                    self._hashes[self.canonical(n)] = (d, size)
                self.scan([n for n in todo if n not in self._hashes], one)
            actual, size = self._hashes[m.name]
        label = what or self.describe(name)
        if progress:
            progress(size)
        if expected_size is not None and size != expected_size:
            raise SizeMismatch(label, expected_size, size)
        if expected is not None and actual != expected:
            raise DigestMismatch(label, expected, actual, size)
        return actual

    def stage_blob(self, store, digest: Digest, size: int, name: str, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path:
        """Stage ``name``; the same pass stages every other wanted blob the registry lacks."""
        with self._lock:
            if store.staged_path(digest) is None:
                todo = {self.canonical(name): (digest, size, what, progress)}
                for n in self._wanted:
                    d = _blob_digest(n)
                    m = self._files[n]
                    if d is None or n in todo or store.blob_size(d) == m.size or store.staged_path(d):
                        continue
                    todo[n] = (d, m.size, self.describe(n), None)

                def one(n: str, f: BinaryIO) -> None:
                    d, sz, label, bar = todo[n]
                    store.stage_blob(d, sz, lambda: _NoClose(f), what=label, progress=bar)
                    log.info("staged %s (%s B) from %s in archive order", d, f"{sz:,}",
                             self.archive.description)
                self.scan(list(todo), one)
        staged = store.staged_path(digest)
        if staged is None:
            raise SourceError(f"{what} was not staged: the archive changed while it was read")
        return staged


def _blob_digest(name: str) -> Optional[Digest]:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
        try:
            return Digest.parse("sha256:" + parts[2])
        except Exception:
            return None
    return None


class _NoClose(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return _readinto(self._f, b)


class _PassReader(io.RawIOBase):
    """One member of a compressed archive: decompresses from the start up to it."""

    def __init__(self, src: StreamTarSource, member: TarMember):
        super().__init__()
        src.passes += 1
        self._raw = src.archive.open_range(0, src.archive.size)
        self._stream = _decompressed(self._raw, src.compression, src.archive.description)
        self._reader = TarReader(self._stream, what=src.archive.description)
        self._inner: Optional[BinaryIO] = None
        for m in self._reader.members():
            if m.name == member.name:
                self._inner = self._reader.member_stream(m)
                break
        if self._inner is None:
            self._stream.close()
            raise SourceError(f"{src.describe(member.name)} vanished: the archive changed while it was read")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._inner.readinto(b)  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def open_archive(archive: ArchiveFile) -> _ArchiveSource:
    """A source over a tar archive, plain or compressed (sniffed from its first bytes)."""
    head = archive.read_at(0, 512)
    kind = sniff_compression(head)
    if kind is None:
        raise UnknownBundleFormat(_unknown_file(archive.description, head))
    try:
        if kind == PLAIN:
            return PlainTarSource(archive)
        return StreamTarSource(archive, kind)
    except TarError as e:
        if kind != PLAIN and "not a tar" in str(e):
            raise UnknownBundleFormat(f"{archive.description} is {kind}-compressed but holds no tar "
                                      "archive") from None
        raise


def _unknown_file(what: str, head: bytes) -> str:
    """What a file that is no tar seems to be, and what to do with it."""
    stripped = head.lstrip()
    if head[:4] == b"PK\x03\x04":
        found = "a zip file: unzip it and pass the folder it holds"
    elif stripped[:1] in (b"{", b"["):
        found = ("a JSON file, not a bundle: pass the folder that holds it (an OCI layout, a dir: "
                 "folder, an unpacked docker save archive)")
    elif head[:4] == b"\x89PNG" or head[:3] == b"GIF":
        found = "an image file, not a container image bundle"
    elif len(head) < 512:
        found = f"a {len(head)}-byte file, too short for a tar archive"
    else:
        found = "neither a tar archive nor a gzip, zstd, xz or bzip2 compressed one"
    return f"{what} is {found}; " + ACCEPTED_FORMATS
