"""A small, strict tar reader: headers only, data read in place.

Python's ``tarfile`` reads pax headers and GNU long names into memory at the
size the (untrusted) header claims; this reader bounds every piece of
metadata, refuses what an image archive never holds (sparse files, multi-volume
archives, unsafe or duplicate names), and works the same over a seekable file
(skips are seeks: listing a 4 GB archive reads a few KB) and over a
decompressing stream (skips are reads).

Formats: v7, ustar (with prefix), GNU (long names ``L``/``K``, base-256 sizes)
and pax (``path``, ``linkpath``, ``size``), as Go's ``archive/tar`` writes them
for skopeo, podman and docker.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

from regpatch.bundle.model import _safe_name
from regpatch.errors import BundleError, UnsafePath

BLOCK = 512
MAX_META = 1 << 20          # a pax header or GNU long name; image archives use a few hundred bytes
MAX_MEMBERS = 100_000
MAX_NAME = 4096
SKIP_CHUNK = 1 << 20

FILE, DIR, SYMLINK, HARDLINK, OTHER = "file", "dir", "symlink", "hardlink", "other"


class TarError(BundleError):
    """The archive is not a readable tar, or holds what an image archive must not."""


@dataclass(frozen=True)
class TarMember:
    name: str        # normalised: no leading './', no trailing '/'
    kind: str        # FILE, DIR, SYMLINK, HARDLINK, OTHER
    size: int        # data bytes (0 but for FILE)
    offset: int      # where the data starts in the uncompressed tar stream
    linkname: str = ""


def _round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        if field[0] == 0xFF:
            raise TarError(f"{what}: negative number in a tar header")
        value = field[0] & 0x7F
        for b in field[1:]:
            value = (value << 8) | b
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise TarError(f"{what}: bad octal number {text[:20]!r} in a tar header")
    return int(text, 8)


def _text(field: bytes) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TarError(f"tar member name {raw[:80]!r} is not UTF-8") from None


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156], "checksum")
    except TarError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)  # old signed-char writers
    return stored in (unsigned, signed)


def looks_like_tar(first_block: bytes) -> bool:
    """A first 512-byte block that is a valid tar header."""
    return len(first_block) >= BLOCK and _checksum_ok(first_block[:BLOCK]) and any(first_block[:100])


def _parse_pax(data: bytes, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] == b"\0":  # padding some writers leave
            break
        sp = data.find(b" ", pos)
        if sp < 0 or sp - pos > 20 or not data[pos:sp].isdigit():
            raise TarError(f"{what}: malformed pax record")
        length = int(data[pos:sp])
        end = pos + length
        if length < 5 or end > len(data) or data[end - 1:end] != b"\n":
            raise TarError(f"{what}: malformed pax record length")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq:
            raise TarError(f"{what}: pax record without '='")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise TarError(f"{what}: pax record is not UTF-8") from None
        pos = end
    return out


def normalise_name(raw: str, what: str) -> str:
    """'./a/b/' -> 'a/b'; unsafe names (absolute, '..', backslash, NUL) raise UnsafePath."""
    if len(raw) > MAX_NAME:
        raise TarError(f"{what}: member name longer than {MAX_NAME} characters")
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return ""
    if "\0" in name or any(ord(c) < 32 for c in name):
        raise UnsafePath(f"{what}: member name {name[:80]!r} holds control characters")
    try:
        return _safe_name(name)
    except UnsafePath:
        raise UnsafePath(f"{what}: member name {name[:200]!r} is not a plain relative path "
                         "(absolute, '..' or backslash); the archive is not safe to read") from None


class _Cursor:
    """Reads and skips over the tar stream, counting the position."""

    def __init__(self, stream: BinaryIO, *, seekable: bool, start: int = 0):
        self.stream = stream
        self.seekable = seekable
        self.pos = start

    def read(self, n: int) -> bytes:
        chunks = []
        left = n
        while left:
            data = self.stream.read(left)
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        data = b"".join(chunks)
        self.pos += len(data)
        return data

    def readinto_some(self, b) -> int:
        if hasattr(self.stream, "readinto"):
            n = self.stream.readinto(b) or 0
        else:
            data = self.stream.read(len(b))
            n = len(data)
            b[:n] = data
        self.pos += n
        return n

    def skip(self, n: int) -> None:
        if n <= 0:
            return
        if self.seekable:
            self.stream.seek(self.pos + n)
            self.pos += n
            return
        left = n
        while left:
            data = self.stream.read(min(SKIP_CHUNK, left))
            if not data:
                raise TarError(f"the tar stream ends inside a member (at byte {self.pos:,})")
            left -= len(data)
            self.pos += len(data)


class TarReader:
    """Walk a tar's members: ``next()`` gives the next member, ``member_stream()``
    reads the current member's data (unread data is skipped by ``next()``)."""

    def __init__(self, stream: BinaryIO, *, what: str, seekable: bool = False):
        self.what = what
        self._cur = _Cursor(stream, seekable=seekable)
        self._data_end = 0      # end of the current member's data (before padding)
        self._count = 0
        self._done = False
        self._global_ignored = False

    def _meta(self, size: int, kind: str) -> bytes:
        if size > MAX_META:
            raise TarError(f"{self.what}: a {kind} of {size:,} bytes (more than {MAX_META:,}); "
                           "not an image archive")
        data = self._cur.read(size)
        if len(data) != size:
            raise TarError(f"{self.what}: the archive ends inside a {kind}")
        self._cur.skip(_round_up(size) - size)
        return data

    def next(self) -> Optional[TarMember]:
        if self._done:
            return None
        self._cur.skip(_round_up(max(self._data_end, self._cur.pos)) - self._cur.pos)
        pax: dict[str, str] = {}
        long_name: Optional[str] = None
        long_link: Optional[str] = None
        while True:
            at = self._cur.pos
            block = self._cur.read(BLOCK)
            if len(block) == 0 and self._count > 0:
                self._done = True  # missing end-of-archive blocks: tolerated, like GNU tar
                return None
            if len(block) < BLOCK:
                raise TarError(f"{self.what}: the archive ends inside a header (byte {at:,})"
                               if self._count else f"{self.what} is empty or not a tar archive")
            if not any(block):
                self._done = True
                return None
            if not _checksum_ok(block):
                raise TarError(f"{self.what}: bad tar header checksum at byte {at:,}: the archive is "
                               "corrupt or not a tar" + ("" if self._count else " archive"))
            where = f"{self.what} (header at byte {at:,})"
            typeflag = block[156:157]
            size = _number(block[124:136], where)
            if typeflag == b"x":
                pax.update(_parse_pax(self._meta(size, "pax header"), where))
                continue
            if typeflag == b"g":
                self._meta(size, "global pax header")
                continue
            if typeflag == b"L":
                long_name = _text(self._meta(size, "GNU long name"))
                continue
            if typeflag == b"K":
                long_link = _text(self._meta(size, "GNU long link name"))
                continue
            break
        magic = block[257:263]
        name = _text(block[0:100])
        if magic == b"ustar\x00" and block[345:500].strip(b"\0"):
            name = _text(block[345:500]) + "/" + name
        name = pax.get("path", long_name if long_name is not None else name)
        linkname = pax.get("linkpath", long_link if long_link is not None else _text(block[157:257]))
        if "size" in pax:
            if not pax["size"].isdigit():
                raise TarError(f"{where}: pax size {pax['size'][:30]!r} is not a number")
            size = int(pax["size"])
        if any(k.startswith("GNU.sparse") for k in pax) or typeflag == b"S":
            raise TarError(f"{where}: sparse file {name[:200]!r}; image archives hold no sparse files")
        if typeflag in (b"M", b"V", b"N", b"D"):
            raise TarError(f"{where}: GNU multi-volume / dump entries are not supported")
        kind = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK,
                b"5": DIR}.get(typeflag, OTHER)
        # links, folders and devices carry no data; unknown types do (POSIX: read as files)
        data_size = 0 if kind in (HARDLINK, SYMLINK, DIR) or typeflag in (b"3", b"4", b"6") else size
        self._count += 1
        if self._count > MAX_MEMBERS:
            raise TarError(f"{self.what}: more than {MAX_MEMBERS:,} members; not an image archive")
        offset = self._cur.pos
        self._data_end = offset + data_size
        norm = normalise_name(name, where)
        return TarMember(norm, kind, data_size if kind == FILE else 0, offset, linkname)

    def member_stream(self, member: TarMember) -> BinaryIO:
        """A stream of the current member's data (which must be ``member``)."""
        if member.offset + member.size != self._data_end or self._cur.pos > member.offset + member.size:
            raise RuntimeError("member_stream() of a member that is not the current one")
        return _MemberStream(self._cur, member.offset + member.size)

    def members(self) -> Iterator[TarMember]:
        while True:
            m = self.next()
            if m is None:
                return
            yield m


class _MemberStream(io.RawIOBase):
    """The current member's data; closing it does not close the archive."""

    def __init__(self, cur: _Cursor, end: int):
        super().__init__()
        self._cur = cur
        self._end = end

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        left = self._end - self._cur.pos
        if left <= 0:
            return 0
        view = memoryview(b)[:left]
        n = self._cur.readinto_some(view)
        if n == 0:
            raise TarError(f"the tar stream ends inside a member (at byte {self._cur.pos:,})")
        return n


def index_tar(read_at: Callable[[int, int], bytes], *, what: str) -> list[TarMember]:
    """Every member of a seekable tar, reading only headers (``read_at(offset, n)``)."""
    return list(TarReader(_ReadAtStream(read_at), what=what, seekable=True).members())


class _ReadAtStream(io.RawIOBase):
    """A seekable stream over ``read_at`` (for headers: small reads, seeks over data)."""

    def __init__(self, read_at: Callable[[int, int], bytes]):
        super().__init__()
        self._read_at = read_at
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise io.UnsupportedOperation("absolute seeks only")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise io.UnsupportedOperation("bounded reads only")
        data = self._read_at(self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
