"""A strict tar reader that reads what Go's ``archive/tar`` reads, or refuses.

Why: regpatch publishes the image it reads from a bundle archive, and the
operator checks it with Go tools: skopeo 1.9.3, podman and docker as Debian 12
ships them read archives with Go 1.19's ``archive/tar`` and extract them with
containers/storage's ``pkg/archive``. A header construction that Go reads one
way and another reader (Python's ``tarfile``, GNU tar, bsdtar, or regpatch's own
former reader) another way lets one archive hold image A for one tool and image B
for the other. So this reader follows Go exactly, and where Go and a plausible
other reader differ it refuses the archive as ambiguous (``TarAmbiguous``)
instead of guessing. It also refuses whatever Go itself cannot read.

The rules, member type by member type (meta headers, names, prefixes, numbers,
end of archive, links), are written down in ``tests/support/tarref/SPEC.md``;
``tests/e2e/test_tar_differential.py`` checks them against Go's reader itself.

Reading works over a seekable file (data is skipped by seeking: listing a 4 GB
archive reads a few KB) and over a decompressing stream (skips are reads).
Memory is bounded whatever the archive holds: at most one pax header, one GNU
long name and one GNU long link name before a member, each at most
``MAX_META`` bytes; at most ``MAX_MEMBERS`` members and ``MAX_NAME_BYTES`` of
names; data is never held.
"""

from __future__ import annotations

import io
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property
from typing import BinaryIO, Callable, Iterator, Optional, Union

from regpatch.errors import BundleError, UnsafePath

BLOCK = 512
MAX_META = 64 << 10         # a pax header or GNU long name (Go: 1 MiB); image archives use ~100 bytes
MAX_MEMBERS = 100_000
MAX_NAME = 4096
MAX_NAME_BYTES = 8 << 20    # names and link names of all members together
MAX_DEPTH = 64              # folders in a member name; image archives use 3
MAX_SYMLINKS = 40           # Linux's MAXSYMLINKS: one lookup following more fails with ELOOP
MAX_LOOKUP_STEPS = 128      # components of one link target (CPU stays bounded)
MAX_INT64 = (1 << 63) - 1
SKIP_CHUNK = 1 << 20
TAIL_CHUNK = 64 << 10

FILE, DIR, SYMLINK, HARDLINK, OTHER = "file", "dir", "symlink", "hardlink", "other"
V7, USTAR, GNU, STAR = "V7", "USTAR", "GNU", "STAR"

REWRITE = "write the archive again with skopeo copy, podman save or docker save"


class TarError(BundleError):
    """The archive is not a readable tar, or holds what an image archive must not."""


class TarAmbiguous(TarError):
    """Go's archive/tar and another common tar reader would read the archive differently."""


@dataclass(frozen=True, slots=True)
class TarMember:
    name: str        # normalised: no leading './', no trailing '/', no empty or '.' components
    kind: str        # FILE, DIR, SYMLINK, HARDLINK, OTHER
    size: int        # data bytes (0 but for FILE)
    offset: int      # where the data starts in the uncompressed tar stream
    linkname: str = ""
    typeflag: str = ""   # the header's type flag as Go reports it ('\0' becomes '0' or '5')


@dataclass(frozen=True)
class _Header:
    """One header block as Go's ``readHeader`` reads it (before meta headers apply)."""

    at: int
    typeflag: bytes
    name: str        # prefix joined as Go joins it
    field_name: str  # the 100-byte name field alone (Python's tarfile types '\0' members from it)
    linkname: str
    size: int
    fmt: str


@dataclass
class _Pending:
    """The meta headers read so far for the next member (at most one of each kind)."""

    pax: Optional[dict[str, str]] = None
    long_name: Optional[str] = None
    long_link: Optional[str] = None
    first_at: int = -1

    def empty(self) -> bool:
        return self.pax is None and self.long_name is None and self.long_link is None


def _round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _where(what: str, at: int, name: Optional[str] = None, label: str = "member") -> str:
    """How an error names a member (or a meta header): its name as read so far and its offset."""
    if name:
        return f"{what}: {label} {name[:200]!r} (header at byte {at:,})"
    return f"{what}: header at byte {at:,}"


def _ambiguous(where: str, why: str) -> TarAmbiguous:
    return TarAmbiguous(f"{where}: refused as ambiguous: {why}; {REWRITE}")


def _text(raw: bytes) -> str:
    """Bytes as Go keeps them in a string; undecodable bytes survive (refused later, by name)."""
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field_bytes: bytes) -> bytes:
    """Go's ``parseString``: up to the first NUL, or the whole field."""
    return field_bytes.split(b"\0", 1)[0]


# -- numbers ------------------------------------------------------------------------------------

_STRICT_OCTAL = re.compile(rb" *[0-7]*[ \0]*")
_OCTAL_DIGITS = b"01234567"
_HIGH_BYTES = bytes(range(128, 256))
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _go_octal(raw: bytes) -> Optional[int]:
    """Go's ``parseOctal``: None where Go sets its parse error."""
    raw = raw.strip(b" \0")
    if not raw:
        return 0
    digits = _cstr(raw)
    if not digits or digits.translate(None, _OCTAL_DIGITS):
        return None
    value = int(digits, 8)
    return value if value < 1 << 64 else None


def _go_numeric(raw: bytes) -> Optional[int]:
    """Go's ``parseNumeric`` (base-256 two's complement or octal): None where Go fails."""
    if not raw or not raw[0] & 0x80:
        return _go_octal(raw)
    inv = 0xFF if raw[0] & 0x40 else 0
    x = 0
    for i, c in enumerate(raw):
        c ^= inv
        if i == 0:
            c &= 0x7F
        if x >> 56:
            return None
        x = (x << 8) | c
    if x >> 63:
        return None
    return -x - 1 if inv else x


def _strict_size(raw: bytes, where: str) -> int:
    """The size field, which decides where the next header starts: one reading only."""
    if raw[0] & 0x80:
        if raw[0] != 0x80:
            raise _ambiguous(where, f"a base-256 size starting with byte {raw[0]:#04x} (negative, or bits "
                             "that Go reads and Python's tarfile and GNU tar do not)")
        value = int.from_bytes(raw[1:], "big")
        if value > MAX_INT64:
            raise TarError(f"{where}: a size of {value:,} bytes overflows Go's archive/tar; "
                           "the archive is corrupt or hostile")
        return value
    if not _STRICT_OCTAL.fullmatch(raw):
        raise _ambiguous(where, f"the size field {raw!r} is not a plain octal number (Go trims NULs "
                         "and spaces at both ends, Python's tarfile cuts at the first NUL)")
    return _go_octal(raw) or 0


def _checksum_ok(block: bytes, *, strict: bool = True) -> bool:
    """Go's check (the unsigned or the signed sum); ``strict``: on a field in the form every
    reader parses alike (Go trims leading NULs that Python's tarfile reads as the end)."""
    raw = block[148:156]
    if strict and not _STRICT_OCTAL.fullmatch(raw):
        return False
    stored = _go_octal(raw)
    rest = block[:148] + block[156:]
    unsigned = sum(rest) + 8 * 32
    if stored == unsigned:
        return True
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))    # bytes a signed char makes negative
    return stored == unsigned - 256 * high


def _format(block: bytes) -> Optional[str]:
    """Go's ``getFormat``: None when the checksum fails (Go: FormatUnknown, an invalid header)."""
    if not _checksum_ok(block):
        return None
    magic, version, trailer = block[257:263], block[263:265], block[508:512]
    if magic == b"ustar\0":
        return STAR if trailer == b"tar\0" else USTAR
    if magic == b"ustar " and version == b" \0":
        return GNU
    return V7


def looks_like_tar(first_block: bytes) -> bool:
    """A first 512-byte block that is a valid tar header."""
    return len(first_block) >= BLOCK and _format(first_block[:BLOCK]) is not None and any(first_block[:100])


# -- one header block ---------------------------------------------------------------------------

_V7_NUMBERS = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("mtime", 136, 148))
_USTAR_NUMBERS = (("devmajor", 329, 337), ("devminor", 337, 345))
_STAR_NUMBERS = (("atime", 476, 488), ("ctime", 488, 500))


def _check_numbers(block: bytes, fmt: str, where: str) -> None:
    """Every number Go parses in this format must parse, or Go fails the whole archive."""
    fields = _V7_NUMBERS + (() if fmt == V7 else _USTAR_NUMBERS) + (_STAR_NUMBERS if fmt == STAR else ())
    for label, start, end in fields:
        if _go_numeric(block[start:end]) is None:
            raise TarError(f"{where}: the {label} field {block[start:end]!r} is not a number; Go's "
                           "archive/tar rejects the archive (invalid tar header)")


def _join_prefix(block: bytes, fmt: str, name: str, where: str) -> str:
    """The name as Go reads it: USTAR and STAR prefixes joined; V7 and GNU have none."""
    if fmt == USTAR:
        prefix = _cstr(block[345:500])
    elif fmt == STAR:
        if 0 not in block[345:476]:
            raise _ambiguous(where, "a STAR header whose 131-byte prefix has no NUL: Go reads 131 bytes, "
                             "readers without STAR support read 155 (into its atime and ctime)")
        prefix = _cstr(block[345:476])
    else:
        if block[345]:
            raise _ambiguous(where, f"a {fmt} header with bytes in the USTAR prefix field: Go ignores "
                             "them, Python's tarfile prepends them to the name")
        prefix = b""
    return _text(prefix) + "/" + name if prefix else name


def _parse_header(block: bytes, at: int, what: str, first: bool) -> _Header:
    fmt = _format(block)
    if fmt is None and _checksum_ok(block, strict=False):
        raise _ambiguous(_where(what, at, _text(_cstr(block[0:100]))),
                         f"the checksum field {block[148:156]!r} is not plain octal: Go trims its NULs and "
                         "spaces and accepts it, Python's tarfile cuts at the first NUL and rejects it")
    if fmt is None:
        if first:
            raise TarError(f"{what} is not a tar archive (bad header checksum at byte 0)")
        raise TarError(f"{_where(what, at)}: bad tar header checksum (Go's archive/tar rejects it too); "
                       "the archive is corrupt")
    field_name = _text(_cstr(block[0:100]))
    where = _where(what, at, field_name)
    _check_numbers(block, fmt, where)
    size = _strict_size(block[124:136], where)
    name = _join_prefix(block, fmt, field_name, where)
    return _Header(at, block[156:157], name, field_name, _text(_cstr(block[157:257])), size, fmt)


# -- meta headers -------------------------------------------------------------------------------

_PAX_STRINGS = {"path", "linkpath", "uname", "gname"}
_PAX_UTF8 = "ISO-IR 10646 2000 UTF-8"


def _pax_record(data: bytes, pos: int, where: str) -> tuple[str, str, int]:
    """One ``"%d %s=%s\\n"`` record at ``pos`` as Go's ``parsePAXRecord`` reads it."""
    bad = f"{where}: malformed pax record at offset {pos}; Go's archive/tar rejects the archive"
    sp = data.find(b" ", pos, pos + 21)
    if data[pos:pos + 1] == b"+":
        raise _ambiguous(where, f"a pax record length with a '+' sign at offset {pos}: Go reads it, "
                         "Python's tarfile rejects the record")
    if sp <= pos or not data[pos:sp].isdigit():
        raise TarError(bad)
    end = pos + int(data[pos:sp])
    if end - pos < 5 or end > len(data) or end <= sp + 1 or data[end - 1] != 0x0A:
        raise TarError(bad)
    key, eq, value = data[sp + 1:end - 1].partition(b"=")
    if not eq or not key or b"\0" in key:
        raise TarError(bad)
    k = _text(key)
    if k in _PAX_STRINGS and b"\0" in value:
        raise TarError(f"{where}: pax record {k!r} holds a NUL; Go's archive/tar rejects the archive")
    return k, _text(value), end


def _go_pax_time_ok(value: str) -> bool:
    """Go's ``parsePAXTime`` accepts it."""
    secs, _, frac = value.partition(".")
    if not _GO_INT.fullmatch(secs) or abs(int(secs)) > MAX_INT64:
        return False
    return frac == "" or (frac.isascii() and frac.isdigit())


def _check_pax_value(key: str, value: str, where: str) -> None:
    """One record: what Go's ``mergePAX`` rejects, and what readers apply differently."""
    if key.startswith("GNU.sparse."):
        raise TarError(f"{where}: a pax sparse file ({key}); image archives hold no sparse files")
    if key in ("path", "linkpath", "size") and value == "":
        raise _ambiguous(where, f"an empty pax {key!r}: Go keeps the header's value, Python's "
                         "tarfile uses the empty one")
    if key in ("uid", "gid") and value and not (_GO_INT.fullmatch(value) and abs(int(value)) <= MAX_INT64):
        raise TarError(f"{where}: pax {key} {value[:30]!r} is not a number; Go rejects the archive")
    if key in ("atime", "mtime", "ctime") and value and not _go_pax_time_ok(value):
        raise TarError(f"{where}: pax {key} {value[:30]!r} is not a time; Go rejects the archive")


def _check_pax(records: dict[str, str], where: str) -> None:
    for key, value in records.items():
        _check_pax_value(key, value, where)
    size = records.get("size")
    if size is not None and not (size.isascii() and size.isdigit() and int(size) <= MAX_INT64):
        raise _ambiguous(where, f"pax size {size[:30]!r} is not plain decimal digits (Go and Python's "
                         "tarfile read signs, spaces and '_' differently)")
    charset = records.get("hdrcharset")
    if charset is not None and charset != _PAX_UTF8:
        raise _ambiguous(where, f"pax hdrcharset {charset[:40]!r}: Python's tarfile decodes the names "
                         "differently, Go ignores it")


def _parse_pax(data: bytes, where: str) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        key, value, pos = _pax_record(data, pos, where)
        if key in records:
            raise _ambiguous(where, f"pax key {key[:60]!r} twice in one header (readers keep different ones)")
        records[key] = value
    _check_pax(records, where)
    return records


def _long_name(data: bytes, where: str, kind: str) -> str:
    """A GNU long name or link name: the data up to its first NUL."""
    text, _, rest = data.partition(b"\0")
    if rest.strip(b"\0"):
        raise _ambiguous(where, f"bytes after the NUL that ends the {kind}")
    if not text:
        raise _ambiguous(where, f"an empty {kind}: Go ignores it, Python's tarfile applies it")
    return _text(text)


# -- type flags ---------------------------------------------------------------------------------

_KINDS = {b"0": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": OTHER, b"4": OTHER, b"5": DIR, b"6": OTHER}
_HEADER_ONLY = {b"1", b"2", b"3", b"4", b"5", b"6"}
_META = {b"x", b"L", b"K"}
_META_LABELS = {b"x": "pax header", b"L": "GNU long-name header", b"K": "GNU long-link header"}
_REFUSED_TYPES = {
    b"g": "a pax global header: Go returns it as a member and drops pending records, containers/storage "
          "ignores it, Python's tarfile and GNU tar apply it to every later member",
    b"7": "a contiguous file (type '7'): Python's tarfile and GNU tar read a file, containers/storage "
          "(skopeo, podman) fails on it",
    b"S": "a GNU sparse file; image archives hold no sparse files",
    b"M": "a GNU multi-volume continuation; image archives are single volumes",
    b"V": "a GNU volume header: Go reads it as a file, GNU tar as a label",
    b"N": "an old GNU long-names entry: Go reads it as a file, GNU tar renames files from it",
    b"D": "a GNU dump folder: Go reads it as a file, GNU tar as a folder listing",
    b"X": "a Solaris extended header: Python's tarfile reads it as pax records, Go as a file",
}


def _typeflag(hdr: _Header, name: str, size: int, where: str) -> bytes:
    """The member's type flag after Go's '\\0' rule; refuses what readers type differently."""
    t = hdr.typeflag
    if t in _REFUSED_TYPES:
        raise _ambiguous(where, _REFUSED_TYPES[t])
    if t == b"\0":
        if hdr.field_name.endswith("/") != name.endswith("/"):
            raise _ambiguous(where, "an old-style ('\\0' type) member whose name field and full name "
                             "disagree on a trailing '/': Go decides folder or file from the full name, "
                             "Python's tarfile from the name field")
        t = b"5" if name.endswith("/") else b"0"
    elif t == b"0" and name.endswith("/"):
        raise _ambiguous(where, "a regular file whose name ends in '/': Go reads a file, bsdtar a folder")
    if t not in _KINDS:
        raise _ambiguous(where, f"unknown type flag {t!r}: Go reads its data as a file, containers/storage "
                         "fails, other readers skip it")
    if t in _HEADER_ONLY and size:
        raise _ambiguous(where, f"a {_KINDS[t]} entry with a size of {size:,}: Go reads no data for it "
                         "(what follows is read as headers), GNU tar and bsdtar may skip it as data")
    return t


# -- names --------------------------------------------------------------------------------------

def normalise_name(raw: str, what: str) -> str:
    """'./a//b/' -> 'a/b', as an extraction cleans it; unsafe names raise UnsafePath.

    Unsafe: absolute, '..' components, backslashes, control characters. Names
    that are not UTF-8 or longer than MAX_NAME raise TarError.
    """
    if len(raw) > MAX_NAME:
        raise TarError(f"{what}: member name longer than {MAX_NAME} characters; not an image archive")
    if any("\udc80" <= c <= "\udcff" for c in raw):
        raise TarError(f"{what}: member name {raw[:80]!r} is not UTF-8; {REWRITE}")
    if any(ord(c) < 32 or c == "\x7f" for c in raw):
        raise UnsafePath(f"{what}: member name {raw[:80]!r} holds control characters")
    if raw.startswith("/") or "\\" in raw:
        raise UnsafePath(f"{what}: member name {raw[:200]!r} is not a plain relative path "
                         "(absolute or backslash); the archive is not safe to read")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{what}: member name {raw[:200]!r} is not a plain relative path "
                         "('..'); the archive is not safe to read")
    if len(parts) > MAX_DEPTH:
        raise TarError(f"{what}: member name {raw[:80]!r}... is {len(parts)} folders deep (more than "
                       f"{MAX_DEPTH}); not an image archive")
    return "/".join(parts)


# -- the stream ---------------------------------------------------------------------------------

class _Cursor:
    """Reads and skips over the tar stream, counting the position."""

    def __init__(self, stream: Union[BinaryIO, io.RawIOBase], *, seekable: bool, start: int = 0):
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

    def skip(self, n: int) -> int:
        """Skip up to n bytes; the number skipped (fewer only at the end of a stream)."""
        if n <= 0:
            return 0
        if self.seekable:
            self.stream.seek(self.pos + n)
            self.pos += n
            return n
        left = n
        while left:
            data = self.stream.read(min(SKIP_CHUNK, left))
            if not data:
                break
            left -= len(data)
            self.pos += len(data)
        return n - left

    def has_byte_at(self, offset: int) -> bool:
        """A seekable stream holds a byte at offset (Go's discard seeks, then reads the last byte)."""
        self.stream.seek(offset)
        present = bool(self.stream.read(1))
        self.stream.seek(self.pos)
        return present


class TarReader:
    """Walk a tar's members: ``next()`` gives the next member, ``member_stream()``
    reads the current member's data (unread data is skipped by ``next()``).

    ``size``: the archive's length when known (a seekable file): a member that
    would end past it is refused before anything else is read."""

    def __init__(self, stream: Union[BinaryIO, io.RawIOBase], *, what: str, seekable: bool = False,
                 size: Optional[int] = None):
        self.what = what
        self._cur = _Cursor(stream, seekable=seekable)
        self._size = size
        self._data_end = 0      # end of the current member's data (before padding)
        self._current = ""      # the current member's name, for messages
        self._count = 0
        self._name_bytes = 0
        self._done = False

    # - reading blocks

    def _finish_member(self) -> None:
        """Skip the rest of the current member's data and its padding, as Go does."""
        left = self._data_end - self._cur.pos
        if left > 0 and self._cur.skip(left) < left:
            raise TarError(f"{self.what}: the archive ends inside member {self._current[:200]!r} "
                           f"(at byte {self._cur.pos:,}); it is truncated")
        pad = _round_up(self._cur.pos) - self._cur.pos
        if pad and self._cur.skip(pad) < pad:
            self._done = True   # Go: the stream ending inside the last padding is a clean end

    def _next_block(self) -> Optional[bytes]:
        """The next header block; None at the end of the archive (after checking what follows)."""
        at = self._cur.pos
        block = self._cur.read(BLOCK)
        if not block:
            if at == 0:
                raise TarError(f"{self.what} is empty or not a tar archive")
            return None
        if len(block) < BLOCK:
            raise TarError(f"{self.what}: the archive ends inside a header (byte {at:,}); it is truncated"
                           if at else f"{self.what} is not a tar archive (shorter than one header)")
        if any(block):
            return block
        self._end_marker(at)
        return None

    def _end_marker(self, at: int) -> None:
        """After one zero block: Go needs a second one (or EOF); regpatch also wants nothing after."""
        second = self._cur.read(BLOCK)
        if not second:
            return
        if len(second) < BLOCK:
            raise TarError(f"{self.what}: the archive ends inside its end-of-archive marker (byte {at:,}); "
                           "it is truncated")
        if any(second):
            raise _ambiguous(_where(self.what, at + BLOCK), "a header after a single zero block: Go's "
                             "archive/tar fails, Python's tarfile ends the archive at the zero block, "
                             "GNU tar --ignore-zeros reads on")
        self._check_tail()

    def _check_tail(self) -> None:
        """Only zero bytes may follow the end-of-archive marker (tape record padding)."""
        while True:
            at = self._cur.pos
            chunk = self._cur.read(TAIL_CHUNK)
            if not chunk:
                return
            if any(chunk):
                first = at + next(i for i, b in enumerate(chunk) if b)
                raise _ambiguous(f"{self.what}: byte {first:,}", "data after the end-of-archive marker: Go's "
                                 "archive/tar and GNU tar stop at the marker, GNU tar --ignore-zeros "
                                 "reads on")

    def _meta_data(self, hdr: _Header, kind: str) -> bytes:
        where = _where(self.what, hdr.at, hdr.name, _META_LABELS[hdr.typeflag])
        if hdr.size > MAX_META:
            raise TarError(f"{where}: a {kind} of {hdr.size:,} bytes (more than {MAX_META:,}); "
                           "not an image archive")
        data = self._cur.read(hdr.size)
        if len(data) != hdr.size:
            raise TarError(f"{where}: the archive ends inside a {kind}; it is truncated")
        self._cur.skip(_round_up(hdr.size) - hdr.size)
        return data

    # - members

    def _take_meta(self, hdr: _Header, pending: _Pending) -> None:
        """A pax ``x``, GNU ``L`` or ``K`` header: kept for the next member; one of each at most."""
        where = _where(self.what, hdr.at, hdr.name, _META_LABELS[hdr.typeflag])
        if pending.first_at < 0:
            pending.first_at = hdr.at
        if hdr.typeflag == b"x":
            if pending.pax is not None:
                raise _ambiguous(where, "two pax extended headers in a row: Go applies only the second, "
                                 "Python's tarfile applies both")
            pending.pax = _parse_pax(self._meta_data(hdr, "pax header"), where)
        elif hdr.typeflag == b"L":
            if pending.long_name is not None:
                raise _ambiguous(where, "two GNU long names in a row: Go keeps the second, Python's "
                                 "tarfile the first")
            pending.long_name = _long_name(self._meta_data(hdr, "GNU long name"), where, "GNU long name")
        else:
            if pending.long_link is not None:
                raise _ambiguous(where, "two GNU long link names in a row: Go keeps the second, Python's "
                                 "tarfile the first")
            pending.long_link = _long_name(self._meta_data(hdr, "GNU long link name"), where,
                                           "GNU long link name")

    def _merged(self, hdr: _Header, pending: _Pending) -> tuple[str, str, int]:
        """Name, link name and size after Go's merge: pax records, then GNU names over them."""
        pax = pending.pax or {}
        name = pax.get("path", hdr.name)
        linkname = pax.get("linkpath", hdr.linkname)
        size = int(pax["size"]) if "size" in pax else hdr.size
        where = _where(self.what, hdr.at, name)
        for gnu, key, label in ((pending.long_name, "path", "long name"),
                                (pending.long_link, "linkpath", "long link name")):
            if gnu is not None and key in pax and pax[key] != gnu:
                raise _ambiguous(where, f"the GNU {label} {gnu[:100]!r} and the pax {key} {pax[key][:100]!r} "
                                 "disagree: Go takes the GNU one, Python's tarfile the pax one")
        if pending.long_name is not None:
            name = pending.long_name
        if pending.long_link is not None:
            linkname = pending.long_link
        return name, linkname, size

    def _member(self, hdr: _Header, pending: _Pending) -> TarMember:
        if hdr.typeflag == b"g":
            raise _ambiguous(_where(self.what, hdr.at, hdr.name, "pax global header"), _REFUSED_TYPES[b"g"])
        name, linkname, size = self._merged(hdr, pending)
        where = _where(self.what, hdr.at, name)
        t = _typeflag(hdr, name, size, where)
        kind = _KINDS[t]
        norm = normalise_name(name, where)
        if not norm and kind != DIR:
            raise _ambiguous(where, f"a {kind} named like the archive's root folder")
        if kind in (SYMLINK, HARDLINK) and not linkname:
            raise TarError(f"{where}: a {kind} with an empty target; the archive is corrupt")
        self._count += 1
        self._name_bytes += len(name) + len(linkname)
        if self._count > MAX_MEMBERS:
            raise TarError(f"{where}: more than {MAX_MEMBERS:,} members; not an image archive")
        if self._name_bytes > MAX_NAME_BYTES:
            raise TarError(f"{where}: more than {MAX_NAME_BYTES:,} bytes of member names; not an image archive")
        data_size = size if kind == FILE else 0
        offset = self._cur.pos
        self._check_data_present(offset, data_size, where)
        self._data_end = offset + data_size
        self._current = norm
        return TarMember(norm, kind, data_size, offset, linkname, t.decode("latin-1"))

    def _check_data_present(self, offset: int, n: int, where: str) -> None:
        """A seekable archive must hold all of a member's data (a stream finds out when skipping)."""
        if not n:
            return
        if self._size is not None:
            if offset + n > self._size:
                raise TarError(f"{where}: its {n:,} data bytes end past the end of the archive "
                               f"({self._size:,} bytes); it is truncated or the size is hostile")
        elif self._cur.seekable and not self._cur.has_byte_at(offset + n - 1):
            raise TarError(f"{where}: its {n:,} data bytes end past the end of the archive; "
                           "it is truncated or the size is hostile")

    def next(self) -> Optional[TarMember]:
        if self._done:
            return None
        self._finish_member()
        pending = _Pending()
        while not self._done:
            at = self._cur.pos
            block = self._next_block()
            if block is None:
                break
            hdr = _parse_header(block, at, self.what, first=at == 0)
            if hdr.typeflag in _META:
                self._take_meta(hdr, pending)
                continue
            return self._member(hdr, pending)
        self._done = True
        if not pending.empty():
            raise TarError(f"{_where(self.what, pending.first_at)}: pax or GNU meta headers with no member "
                           "after them at the end of the archive; it is truncated")
        if not self._count:
            raise TarError(f"{self.what} holds no members (an empty tar archive); not a bundle")
        return None

    def member_stream(self, member: TarMember) -> BinaryIO:
        """A stream of the current member's data (which must be ``member``)."""
        if member.offset + member.size != self._data_end or self._cur.pos > member.offset + member.size:
            raise RuntimeError("member_stream() of a member that is not the current one")
        return _MemberStream(self._cur, member.offset + member.size,  # type: ignore[return-value]
                             f"{self.what}: the archive ends inside member {member.name[:200]!r}")

    def members(self) -> Iterator[TarMember]:
        while True:
            m = self.next()
            if m is None:
                return
            yield m


class _MemberStream(io.RawIOBase):
    """The current member's data; closing it does not close the archive."""

    def __init__(self, cur: _Cursor, end: int, truncated: str):
        super().__init__()
        self._cur = cur
        self._end = end
        self._truncated = truncated

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        left = self._end - self._cur.pos
        if left <= 0:
            return 0
        view = memoryview(b)[:left]
        n = self._cur.readinto_some(view)
        if n == 0:
            raise TarError(f"{self._truncated} (at byte {self._cur.pos:,}); it is truncated")
        return n


def index_tar(read_at: Callable[[int, int], bytes], *, what: str, size: Optional[int] = None) -> list[TarMember]:
    """Every member of a seekable tar, reading only headers (``read_at(offset, n)``)."""
    return list(TarReader(_ReadAtStream(read_at), what=what, seekable=True, size=size).members())


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


# -- links, as the extracted tree resolves them --------------------------------------------------

@dataclass(frozen=True)
class _Dir:
    """A lookup that ends on a folder (a DIR member, or a prefix of member names)."""

    path: str


_Found = Union[TarMember, _Dir, None]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


@dataclass
class _Tree:
    """The folder tree an extraction makes of the members (unique, normalised names),
    looked up as the kernel looks paths up: component by component, following symlinks."""

    members: dict[str, TarMember]
    what: str
    names: list[str] = field(default_factory=list)
    symlinks: dict[str, tuple[_Found, int]] = field(default_factory=dict)
    hardlinks: dict[str, TarMember] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = sorted(self.members)

    @cached_property
    def order(self) -> dict[str, int]:
        """Archive order (hard links only: most archives need no such map of every name)."""
        return {n: i for i, n in enumerate(self.members)}

    def has_children(self, path: str) -> bool:
        """Some member lies under path: extraction makes it a folder (MkdirAll)."""
        i = bisect_left(self.names, path + "/")
        return i < len(self.names) and self.names[i].startswith(path + "/")

    def check_nesting(self) -> None:
        """No member under a symlink (extraction writes through it) or under a file."""
        for name, m in self.members.items():
            if m.kind != DIR and self.has_children(name):
                child = self.names[bisect_left(self.names, name + "/")]
                raise _ambiguous(f"{self.what}: member {child[:200]!r}",
                                 f"it lies inside {name[:200]!r}, a {m.kind}: extraction writes it through "
                                 "the link or fails, a lexical reader keeps it as it is")

    def lookup(self, start: str, target: str, follow_last: bool, origin: str, depth: int) -> tuple[_Found, int]:
        """What ``target``, looked up from folder ``start``, reaches; and the symlinks followed.

        As the kernel: a symlink met before the last component is followed first (so a
        later '..' leaves its target, not the link's folder); a file before the last
        component reads nothing (ENOTDIR)."""
        parts = target.split("/")
        if len(parts) > MAX_LOOKUP_STEPS:
            raise TarError(f"{self.what}: member {origin[:200]!r}: a link target of more than "
                           f"{MAX_LOOKUP_STEPS} path components; not an image archive")
        cur, links = start, 0
        for i, c in enumerate(parts):
            more = i < len(parts) - 1
            if c in ("", "."):
                continue
            if c == "..":
                cur = self._up(cur, origin)
                continue
            found, used = self._step(cur, c, more or follow_last, depth)
            links += used
            if links > MAX_SYMLINKS:
                raise self.loop(origin)
            if not isinstance(found, _Dir):
                return (None if more else found), links
            cur = found.path
        return _Dir(cur), links

    def _step(self, cur: str, c: str, follow: bool, depth: int) -> tuple[_Found, int]:
        """Component ``c`` of folder ``cur``: a folder, a member or nothing (symlinks followed
        when ``follow``); and the symlinks that took."""
        path = f"{cur}/{c}" if cur else c
        m = self.members.get(path)
        if m is None:
            return (_Dir(path) if self.has_children(path) else None), 0
        if m.kind == DIR:
            return _Dir(path), 0
        if m.kind == SYMLINK and follow:
            found, used = self.symlink(m, depth + 1)
            return found, used + 1
        return m, 0

    def _up(self, cur: str, origin: str) -> str:
        if not cur:
            raise UnsafePath(f"{self.what}: member {origin[:200]!r} links to a path that leads out "
                             "of the archive's folder; the archive is not safe to read")
        return _parent(cur)

    def loop(self, origin: str) -> TarError:
        return TarError(f"{self.what}: member {origin[:200]!r}: more than {MAX_SYMLINKS} symlinks in one "
                        "lookup (a loop?); the system cannot read it either")

    def symlink(self, m: TarMember, depth: int = 0) -> tuple[_Found, int]:
        """What a symlink member resolves to (following every symlink on the way), memoised."""
        if m.name in self.symlinks:
            return self.symlinks[m.name]
        if depth > MAX_SYMLINKS:
            raise self.loop(m.name)
        if m.linkname.startswith("/"):
            raise UnsafePath(f"{self.what}: member {m.name!r} is a symlink to an absolute path "
                             f"{m.linkname[:200]!r}")
        _lexical(m, self.what)
        self.symlinks[m.name] = (None, MAX_SYMLINKS + 1)    # met again before it resolves: a loop
        found = self.lookup(_parent(m.name), m.linkname, True, m.name, depth)
        self.symlinks[m.name] = found
        return found

    def hardlink(self, m: TarMember) -> TarMember:
        """The file an (earlier) hard link target is: extraction links to it with link(2)."""
        if m.name in self.hardlinks:
            return self.hardlinks[m.name]
        target = _lexical_path("", m.linkname.lstrip("/"), m, self.what)
        found, links = self.lookup("", target, False, m.name, 0) if target else (None, 0)
        where = f"{self.what}: member {m.name[:200]!r}"
        if links:
            raise TarError(f"{where}: a hard link to {m.linkname[:200]!r} through a symlink; {REWRITE}")
        if not isinstance(found, TarMember) or found.kind not in (FILE, HARDLINK):
            raise TarError(f"{where}: a hard link to {m.linkname[:200]!r}, which is no file of the archive; "
                           f"extraction fails; {REWRITE}")
        if self.order[found.name] >= self.order[m.name]:
            raise TarError(f"{where}: a hard link to {m.linkname[:200]!r}, which is itself or comes later "
                           "in the archive; "
                           f"extraction fails; {REWRITE}")
        result = self.hardlink(found) if found.kind == HARDLINK else found
        self.hardlinks[m.name] = result
        return result


def _lexical_path(start: str, target: str, m: TarMember, what: str) -> str:
    """``filepath.Join(start, target)`` cleaned; leaving the root is refused."""
    parts = start.split("/") if start else []
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise UnsafePath(f"{what}: member {m.name!r} links to {m.linkname[:200]!r}, outside the "
                                 "archive")
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def _lexical(m: TarMember, what: str) -> None:
    """containers/storage refuses a symlink whose target leaves the folder lexically."""
    _lexical_path(_parent(m.name), m.linkname, m, what)


def resolve_links(members: dict[str, TarMember], what: str) -> dict[str, TarMember]:
    """Every name that reads a file once extracted (files, and links to files) -> its file member.

    ``members``: normalised names in archive order, no duplicates (but folders).
    Members under a symlink or a file, absolute or escaping symlinks, symlink
    loops and hard links to anything but an earlier file are refused.
    """
    tree = _Tree(members, what)
    tree.check_nesting()
    files: dict[str, TarMember] = {}
    for name, m in members.items():
        found: _Found = m
        if m.kind == SYMLINK:
            found, links = tree.symlink(m)
            if links + 1 > MAX_SYMLINKS:    # following m itself counts too
                raise tree.loop(name)
        if isinstance(found, TarMember) and found.kind == HARDLINK:
            found = tree.hardlink(found)
        if isinstance(found, TarMember) and found.kind == FILE:
            files[name] = found
    return files
