"""Hostile (and a few plain) tar constructions as raw bytes, each named.

Every header is written by hand here (no ``tarfile``): the point is to write
what a careful writer never would. Each construction is one place where Go's
``archive/tar`` (skopeo, podman) and another reader (Python's ``tarfile``, GNU
tar, bsdtar, regpatch's former reader) can read an archive differently, or a
plain archive the rules must keep reading. ``constructions()`` lists them all;
tests/unit/test_tar_reader.py states regpatch's reading of each and
tests/e2e/test_tar_differential.py compares it with Go's.

The field layout (offsets) is POSIX ustar's, with GNU's atime/ctime and STAR's
131-byte prefix where those formats put them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

BLOCK = 512
END = bytes(2 * BLOCK)

USTAR, GNU, V7, STAR = "ustar", "gnu", "v7", "star"


@dataclass(frozen=True)
class Construction:
    name: str
    doc: str      # what it is and which readers read it differently
    data: bytes


def octal(n: int, width: int) -> bytes:
    """A numeric field as Go and GNU tar write it: zero-padded octal and a NUL."""
    return f"{n:0{width - 1}o}".encode() + b"\0"


def _put(block: bytearray, at: int, value: bytes) -> None:
    block[at:at + len(value)] = value


def _sums(block: bytearray) -> tuple[int, int]:
    """(unsigned, signed) checksums with the checksum field counted as spaces."""
    rest = bytes(block[:148]) + b" " * 8 + bytes(block[156:])
    return sum(rest), sum(b - 256 if b > 127 else b for b in rest)


def header(name: Union[bytes, str], *, typeflag: bytes = b"0", size: Union[int, bytes] = 0,
           linkname: Union[bytes, str] = b"", fmt: str = USTAR, prefix: bytes = b"",
           fields: Optional[dict[int, bytes]] = None, checksum: Union[str, bytes] = "unsigned") -> bytes:
    """One 512-byte header block. ``fields`` overwrites raw bytes (offset -> bytes) before the
    checksum is computed; ``checksum`` is "unsigned", "signed" or the raw 8-byte field."""
    b = bytearray(BLOCK)
    _put(b, 0, name.encode() if isinstance(name, str) else name)
    _put(b, 100, b"0000644\0")
    _put(b, 108, b"0000000\0")
    _put(b, 116, b"0000000\0")
    _put(b, 124, octal(size, 12) if isinstance(size, int) else size)
    _put(b, 136, octal(0o14500000000, 12))
    _put(b, 156, typeflag)
    _put(b, 157, linkname.encode() if isinstance(linkname, str) else linkname)
    if fmt != V7:
        _put(b, 257, {USTAR: b"ustar\x0000", STAR: b"ustar\x0000", GNU: b"ustar  \0"}[fmt])
        _put(b, 265, b"root")
        _put(b, 297, b"root")
        _put(b, 329, b"0000000\x000000000\0")
        _put(b, 345, prefix)
    if fmt == STAR:
        _put(b, 476, octal(0, 12) + octal(0, 12))
        _put(b, 508, b"tar\0")
    for at, value in (fields or {}).items():
        _put(b, at, value)
    if isinstance(checksum, bytes):
        _put(b, 148, checksum)
    else:
        unsigned, signed = _sums(b)
        _put(b, 148, f"{unsigned if checksum == 'unsigned' else signed:06o}".encode() + b"\0 ")
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def entry(name: Union[bytes, str], data: bytes = b"", **kw) -> bytes:
    """A header and its padded data (``size`` defaults to the data's length)."""
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)


def record(key: Union[bytes, str], value: Union[bytes, str]) -> bytes:
    """One pax record, ``"%d %s=%s\\n"`` with its own length counted."""
    k = key.encode() if isinstance(key, str) else key
    v = value.encode() if isinstance(value, str) else value
    body = b" " + k + b"=" + v + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(*records: tuple, typeflag: bytes = b"x", raw: Optional[bytes] = None) -> bytes:
    """A pax extended (``x``) or global (``g``) header with its records."""
    payload = raw if raw is not None else b"".join(record(k, v) for k, v in records)
    return entry(b"PaxHeaders.0/x", payload, typeflag=typeflag)


def gnu_long(text: Union[bytes, str], typeflag: bytes = b"L", *, raw: Optional[bytes] = None) -> bytes:
    """A GNU long name (``L``) or long link name (``K``) header, as GNU tar writes it."""
    data = raw if raw is not None else (text.encode() if isinstance(text, str) else text) + b"\0"
    return entry(b"././@LongLink", data, typeflag=typeflag, fmt=GNU)


def dir_entry(name: str) -> bytes:
    return header(name, typeflag=b"5", fields={100: b"0000755\0"})


def symlink(name: str, target: Union[bytes, str], **kw) -> bytes:
    return header(name, typeflag=b"2", linkname=target, **kw)


def hardlink(name: str, target: Union[bytes, str], **kw) -> bytes:
    return header(name, typeflag=b"1", linkname=target, **kw)


A, B = b"image A: what a lax reader sees\n", b"image B: what Go sees\n"
LONG = "n" * 120 + "/" + "m" * 60 + "/file"

_ALL: list[tuple[str, str, Callable[[], bytes]]] = []


def construction(name: str, doc: str):
    def register(fn: Callable[[], bytes]) -> Callable[[], bytes]:
        _ALL.append((name, doc, fn))
        return fn
    return register


def constructions() -> list[Construction]:
    """Every construction, in a stable order."""
    return [Construction(name, doc, fn()) for name, doc, fn in _ALL]


def by_name(name: str) -> Construction:
    return next(c for c in constructions() if c.name == name)


# -- plain archives the rules must keep reading -----------------------------------------------------

@construction("ustar-basic", "a folder, a file in it and a symlink to it; USTAR headers as Go writes them")
def _ustar_basic() -> bytes:
    return dir_entry("d/") + entry("d/a", A) + symlink("l", "d/a") + END


@construction("gnu-long-name", "a GNU 'L' long name before a file (GNU tar, Python's GNU_FORMAT)")
def _gnu_long_name() -> bytes:
    return gnu_long(LONG) + entry(LONG[:100], A) + END


@construction("gnu-long-link", "a GNU 'K' long link name before a symlink")
def _gnu_long_link() -> bytes:
    return entry("f", A) + gnu_long("./" * 60 + "f", b"K") + symlink("l", "x") + END


@construction("pax-path-long", "a pax 'path' for a long name (Go's writer)")
def _pax_path_long() -> bytes:
    return pax(("path", LONG)) + entry(LONG[:100], A) + END


@construction("pax-linkpath", "a pax 'linkpath' for a symlink")
def _pax_linkpath() -> bytes:
    return entry("f", A) + pax(("linkpath", "./f")) + symlink("l", "ignored") + END


@construction("ustar-prefix", "a USTAR prefix joined to the name: 'p.../f'")
def _ustar_prefix() -> bytes:
    return entry("f", A, prefix=b"p" * 150) + END


@construction("all-meta-agreeing", "a pax header, a GNU long name and a GNU long link name that agree")
def _all_meta() -> bytes:
    return (entry("t", A) + pax(("path", "p"), ("linkpath", "t")) + gnu_long("p") + gnu_long("t", b"K")
            + symlink("hdr-name", "hdr-link") + END)


@construction("pax-unknown-keys", "pax records Go keeps but does not apply (xattrs, comment, sub-second mtime)")
def _pax_unknown() -> bytes:
    return pax(("SCHILY.xattr.user.k", "v"), ("comment", "hi"), ("mtime", "1700000000.25")) + entry("f", A) + END


@construction("v7-plain", "an old V7 header: no magic, no prefix")
def _v7_plain() -> bytes:
    return entry("f", A, fmt=V7) + END


@construction("gnu-magic-bad-version", "magic 'ustar ' with version '00': V7 to Go (no prefix), read alike")
def _gnu_bad_version() -> bytes:
    return entry("f", A, fields={257: b"ustar 00"}) + END


@construction("ustar-version-garbage", "magic 'ustar\\0' with a junk version: USTAR to Go, read alike")
def _ustar_version() -> bytes:
    return entry("f", A, fields={263: b"zz"}) + END


@construction("ustar-utf8-name", "a UTF-8 name in a USTAR header")
def _utf8_name() -> bytes:
    return entry("caf\u00e9/f".encode(), A) + END


@construction("checksum-signed", "a checksum only the signed byte sum matches (old signed-char writers): "
              "Go, tarfile, GNU tar and bsdtar all accept it")
def _checksum_signed() -> bytes:
    return entry("caf\u00e9".encode(), A, checksum="signed") + END


@construction("size-base256", "a base-256 size (first byte 0x80), as GNU and Go write sizes over 8 GiB")
def _size_base256() -> bytes:
    return entry("f", A, size=b"\x80" + len(A).to_bytes(11, "big")) + END


@construction("size-octal-spaces", "an octal size with a leading space and a trailing space and NUL")
def _size_spaces() -> bytes:
    return entry("f", A, size=f" {len(A):09o} \0".encode()) + END


@construction("mtime-base256-negative", "a negative base-256 mtime (before 1970): Go reads it, it is no size")
def _mtime_negative() -> bytes:
    return entry("f", A, fields={136: b"\xff" * 11 + b"\xf0"}) + END


@construction("pax-size-override", "a pax 'size' over a header size of 0")
def _pax_size() -> bytes:
    return pax(("size", str(len(A)))) + entry("f", A, size=0) + END


@construction("pax-mtime-fraction", "a pax mtime with a fraction")
def _pax_mtime_fraction() -> bytes:
    return pax(("mtime", "-1.5")) + entry("f", A) + END


@construction("single-zero-block-eof", "one zero block, then the end of the file: Go ends cleanly")
def _single_zero() -> bytes:
    return entry("f", A) + bytes(BLOCK)


@construction("no-end-marker", "no end-of-archive blocks at all: Go ends cleanly at a header boundary")
def _no_end() -> bytes:
    return entry("f", A)


@construction("eof-inside-padding", "the file ends inside the last member's padding: a clean end to Go")
def _eof_padding() -> bytes:
    return header("f", size=len(A)) + A + bytes(100)


@construction("trailing-zeros", "two zero blocks then zeros up to a 10 KiB record (GNU tar's blocking)")
def _trailing_zeros() -> bytes:
    data = entry("f", A) + END
    return data + bytes(-len(data) % 10240)


@construction("only-end-marker", "an archive of two zero blocks: no members")
def _only_end() -> bytes:
    return END


@construction("duplicate-dirs", "the same folder twice ('d/' and './d'): extraction merges them")
def _dup_dirs() -> bytes:
    return dir_entry("d/") + dir_entry("./d") + entry("d/f", A) + END


@construction("root-dir-dot", "the root folder './' as a member (docker save, GNU tar -C dir .)")
def _root_dot() -> bytes:
    return dir_entry("./") + entry("./f", A) + END


@construction("fifo-and-device", "a fifo and a character device (no data)")
def _fifo() -> bytes:
    return header("p", typeflag=b"6") + header("c", typeflag=b"3") + entry("f", A) + END


@construction("hardlink-earlier", "a hard link to an earlier file")
def _hardlink_earlier() -> bytes:
    return entry("f", A) + hardlink("h", "f") + END


@construction("hardlink-absolute-target", "a hard link to '/f': extraction joins it to its folder (the file f)")
def _hardlink_abs() -> bytes:
    return entry("f", A) + hardlink("h", "/f") + END


@construction("hardlink-chain", "a hard link to a hard link to a file")
def _hardlink_chain() -> bytes:
    return entry("f", A) + hardlink("h1", "f") + hardlink("h2", "./h1") + END


@construction("symlink-chain", "a symlink to a symlink to a file")
def _symlink_chain() -> bytes:
    return entry("c", A) + symlink("a", "b") + symlink("b", "c") + END


@construction("symlink-to-folder", "a symlink to a folder: the folder's files are not members under the link")
def _symlink_dir() -> bytes:
    return dir_entry("b2/") + entry("b2/x", A) + symlink("blobs", "b2") + END


@construction("symlink-dotdot-through-symlinked-folder",
              "issue #6: 'index.json' -> 's/../ia.json' where s -> d/e: a lexical reader reads ia.json "
              "(image A), the system follows s first and reads d/ia.json (image B)")
def _symlink_dotdot() -> bytes:
    return (dir_entry("d/") + dir_entry("d/e/") + entry("ia.json", A) + entry("d/ia.json", B)
            + symlink("s", "d/e") + symlink("index.json", "s/../ia.json") + END)


# -- the issue's six, and the rest of Go's reader --------------------------------------------------

@construction("pax-x-then-x", "issue #1: two pax headers in a row: Go applies the second only, "
              "tarfile and regpatch's former reader both (the first's path wins)")
def _pax_x_x() -> bytes:
    return (pax(("path", "index.json")) + pax(("comment", "second")) + entry("decoy-a.json", A)
            + pax(("path", "decoy-b.json")) + pax(("comment", "second")) + entry("index.json", B) + END)


@construction("gnu-long-name-and-pax-path", "issue #2: a pax path then a GNU long name: Go takes the GNU "
              "name, tarfile and regpatch's former reader the pax path")
def _gnu_and_pax() -> bytes:
    return (pax(("path", "decoy-a.json")) + gnu_long("index.json") + entry("hdr-a", B)
            + pax(("path", "index.json")) + gnu_long("decoy-b.json") + entry("hdr-b", A) + END)


@construction("gnu-long-name-and-pax-path-equal", "a GNU long name and a pax path that agree")
def _gnu_and_pax_equal() -> bytes:
    return pax(("path", LONG)) + gnu_long(LONG) + entry("hdr", A) + END


@construction("v7-nul-type-dir-with-data", "issue #3: a '\\0'-type member named 'pad/' with data: Go reads a "
              "folder and parses the 'data' as headers (index.json = B, and a file that swallows the next "
              "member); regpatch's former reader skipped it as a file and read index.json = A")
def _nul_dir() -> bytes:
    hidden = entry("index.json", B)
    swallowed = entry("index.json", A)
    payload = hidden + header("junk", size=len(swallowed))
    return entry("pad/", payload, typeflag=b"\0") + swallowed + END


@construction("v7-nul-type-dir-empty", "a '\\0'-type member named 'd/' without data: a folder to everyone")
def _nul_dir_empty() -> bytes:
    return header("d/", typeflag=b"\0") + entry("d/f", A) + END


@construction("nul-type-file", "a '\\0'-type member without a trailing slash: a file")
def _nul_file() -> bytes:
    return entry("f", A, typeflag=b"\0") + END


@construction("star-prefix-131", "issue #4: a STAR header whose 131-byte prefix is 'x...x/..' without a NUL: "
              "Go reads 'x...x/../index.json' (= index.json once cleaned), readers without STAR support "
              "read 155 bytes, 'x...x/..000.../index.json'")
def _star_131() -> bytes:
    return entry("index.json", A) + entry("index.json", B, fmt=STAR, prefix=b"x" * 128 + b"/..") + END


@construction("star-prefix-short", "a STAR header with a short, NUL-terminated prefix: read alike")
def _star_short() -> bytes:
    return entry("f", A, fmt=STAR, prefix=b"sp") + END


@construction("star-bad-atime", "a STAR header whose atime is not a number: Go fails")
def _star_atime() -> bytes:
    return entry("f", A, fmt=STAR, fields={476: b"zz"}) + END


@construction("pax-x-then-g", "issue #5: a pax header then a global one: Go drops the first's records, "
              "tarfile applies both, regpatch's former reader ignored the global one")
def _pax_x_g() -> bytes:
    return (pax(("path", "index.json")) + pax(("comment", "g"), typeflag=b"g") + entry("decoy-a.json", A)
            + pax(("path", "decoy-b.json")) + pax(("comment", "g"), typeflag=b"g") + entry("index.json", B)
            + END)


@construction("pax-global-alone", "a pax global header with a comment (git archive writes one): Go returns "
              "it as a member; tarfile and GNU tar apply global records to every later member")
def _pax_g() -> bytes:
    return pax(("comment", "0123abcd"), typeflag=b"g") + entry("f", A) + END


@construction("pax-global-path", "a pax global 'path': tarfile renames every later member, Go none")
def _pax_g_path() -> bytes:
    return pax(("path", "index.json"), typeflag=b"g") + entry("f", A) + entry("g", B) + END


@construction("pax-size-plus", "pax size '+N': Go and tarfile read N, stricter readers fail")
def _pax_size_plus() -> bytes:
    return pax(("size", f"+{len(A)}")) + entry("f", A, size=0) + END


@construction("pax-size-underscore", "pax size '1_0': tarfile's int() reads 10, Go fails")
def _pax_size_underscore() -> bytes:
    return pax(("size", "1_0")) + entry("f", A[:10], size=0) + END


@construction("pax-size-empty", "pax 'size=': Go keeps the header's size, tarfile reads 0")
def _pax_size_empty() -> bytes:
    return pax(("size", "")) + entry("f", A) + END


@construction("pax-size-on-dir", "a pax size of 512 on a folder: Go skips nothing and reads the 512 bytes as "
              "a header; GNU tar skips them")
def _pax_size_dir() -> bytes:
    return pax(("size", "512")) + dir_entry("d/") + header("d/hidden") + END


@construction("pax-path-nul", "a pax path with a NUL: Go fails, tarfile cuts or keeps it")
def _pax_path_nul() -> bytes:
    return pax(("path", b"index.json\0tail")) + entry("f", A) + END


@construction("pax-path-empty", "pax 'path=': Go keeps the header's name, tarfile uses ''")
def _pax_path_empty() -> bytes:
    return pax(("path", "")) + entry("f", A) + END


@construction("pax-nul-padding", "pax records followed by NUL padding: Go fails (regpatch's former reader "
              "stopped at the NUL)")
def _pax_nul_pad() -> bytes:
    return pax(raw=record("path", "p") + bytes(20)) + entry("f", A) + END


@construction("pax-bad-length", "a pax record whose length runs past the data: Go fails")
def _pax_bad_length() -> bytes:
    return pax(raw=b"99 path=p\n") + entry("f", A) + END


@construction("pax-length-plus", "a pax record length '+12': Go's ParseInt reads it, tarfile's regex fails")
def _pax_length_plus() -> bytes:
    return pax(raw=b"+12 path=ab\n") + entry("f", A) + END


@construction("pax-duplicate-key", "the same pax key twice in one header")
def _pax_dup() -> bytes:
    return pax(("path", "a"), ("path", "b")) + entry("f", A) + END


@construction("pax-gnu-sparse", "pax GNU sparse 1.0 records: Go reads a sparse map from the data")
def _pax_sparse() -> bytes:
    return (pax(("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "s"),
                ("GNU.sparse.realsize", "10")) + entry("f", b"1\n0\n10\n" + bytes(505) + A[:10]) + END)


@construction("pax-hdrcharset-binary", "pax hdrcharset=BINARY: tarfile decodes names differently")
def _pax_charset() -> bytes:
    return pax(("hdrcharset", "BINARY")) + entry("f", A) + END


@construction("pax-mtime-bad", "pax mtime 'abc': Go fails")
def _pax_mtime_bad() -> bytes:
    return pax(("mtime", "abc")) + entry("f", A) + END


@construction("pax-uid-bad", "pax uid 'x': Go fails")
def _pax_uid_bad() -> bytes:
    return pax(("uid", "x")) + entry("f", A) + END


@construction("pax-dangling", "a pax header and then the end of the archive")
def _pax_dangling() -> bytes:
    return entry("f", A) + pax(("path", "g")) + END


@construction("pax-too-big", "a 70 KiB pax header (regpatch's bound is 64 KiB; Go's 1 MiB)")
def _pax_big() -> bytes:
    return pax(("comment", "c" * (70 << 10))) + entry("f", A) + END


@construction("gnu-long-link-and-pax-linkpath", "a pax linkpath and a GNU long link name that disagree")
def _gnu_link_pax() -> bytes:
    return entry("a", A) + entry("b", B) + pax(("linkpath", "a")) + gnu_long("b", b"K") + symlink("l", "x") + END


@construction("gnu-long-name-twice", "two GNU long names in a row: Go keeps the second, tarfile the first")
def _gnu_twice() -> bytes:
    return gnu_long("index.json") + gnu_long("decoy.json") + entry("f", A) + END


@construction("gnu-long-name-empty", "an empty GNU long name: Go ignores it, tarfile applies it")
def _gnu_empty() -> bytes:
    return gnu_long("", raw=b"\0") + entry("f", A) + END


@construction("gnu-long-name-junk-after-nul", "bytes after the NUL of a GNU long name")
def _gnu_junk() -> bytes:
    return gnu_long("", raw=b"f\0index.json") + entry("g", A) + END


@construction("gnu-long-name-too-big", "a 70 KiB GNU long name")
def _gnu_big() -> bytes:
    return gnu_long("n" * (70 << 10)) + entry("f", A) + END


@construction("v7-prefix-bytes", "a V7 header (no magic) with bytes where USTAR's prefix is: Go ignores them, "
              "tarfile prepends them")
def _v7_prefix() -> bytes:
    return entry("index.json", A, fmt=V7, fields={345: b"decoy"}) + END


@construction("gnu-atime-in-prefix", "a GNU header with an atime (where USTAR's prefix is): tarfile reads it "
              "as a prefix")
def _gnu_atime() -> bytes:
    return entry("f", A, fmt=GNU, fields={345: octal(0o14500000000, 12)}) + END


@construction("checksum-leading-nul", "a checksum field '\\0' + octal: Go trims the NUL and accepts it, "
              "tarfile reads 0 and stops")
def _checksum_nul() -> bytes:
    value = int(entry("f", A)[148:154], 8)   # the checksum does not depend on the field itself
    return entry("ok", B) + entry("f", A, checksum=b"\0" + f"{value:06o}".encode() + b" ") + END


@construction("checksum-bad", "a wrong checksum")
def _checksum_bad() -> bytes:
    return entry("ok", B) + entry("f", A, checksum=b"0000000\0") + END


@construction("checksum-base256", "a base-256 checksum: tarfile reads it, Go does not")
def _checksum_b256() -> bytes:
    value = int(entry("f", A)[148:154], 8)
    return entry("ok", B) + entry("f", A, checksum=b"\x80" + value.to_bytes(7, "big")) + END


@construction("size-base256-huge", "a base-256 size of 2^62 bytes: past the end of any archive")
def _size_huge() -> bytes:
    return header("f", size=b"\x80" + (1 << 62).to_bytes(11, "big")) + A + END


@construction("size-base256-overflow", "a base-256 size of 2^64: Go reports an overflow")
def _size_overflow() -> bytes:
    return header("f", size=b"\x80" + (1 << 64).to_bytes(11, "big")) + END


@construction("size-base256-negative", "a base-256 size of -1")
def _size_negative() -> bytes:
    return header("f", size=b"\xff" * 12) + END


@construction("size-base256-0x81", "a base-256 size whose first byte is 0x81: Go reads its low bit, "
              "tarfile fails")
def _size_81() -> bytes:
    return header("f", size=b"\x81" + bytes(11)) + END


@construction("size-octal-leading-nul", "an octal size after leading NULs: Go reads the number, tarfile 0")
def _size_nul() -> bytes:
    return entry("f", A, size=bytes(8) + f"{len(A):03o}".encode() + b"\0") + END


@construction("size-octal-inner-space", "an octal size '0000 000041': Go fails, GNU tar reads 0")
def _size_inner_space() -> bytes:
    return entry("f", A, size=b"0000 0000" + f"{len(A):02o}".encode() + b"\0") + END


@construction("mode-garbage", "a mode field that is no number: Go fails the archive")
def _mode_garbage() -> bytes:
    return entry("f", A, fields={100: b"zzzzzzz\0"}) + END


@construction("zero-block-then-header", "a single zero block, then a header: Go fails, tarfile ends the "
              "archive there, GNU tar -i reads on")
def _zero_then_header() -> bytes:
    return entry("f", A) + bytes(BLOCK) + entry("index.json", B) + END


@construction("trailing-garbage", "a header after the end-of-archive marker: nobody reads it but "
              "GNU tar --ignore-zeros")
def _trailing_garbage() -> bytes:
    return entry("f", A) + END + entry("index.json", B) + END


@construction("truncated-data", "the archive ends inside a member's data")
def _truncated_data() -> bytes:
    return header("f", size=1000) + A


@construction("truncated-header", "the archive ends inside a header")
def _truncated_header() -> bytes:
    return entry("f", A) + header("g")[:100]


@construction("empty-archive", "a file of 0 bytes")
def _empty() -> bytes:
    return b""


@construction("not-a-tar", "text, not a tar")
def _not_tar() -> bytes:
    return b"hello, world\n" * 100


# -- names ------------------------------------------------------------------------------------

@construction("duplicate-spellings", "'a/b' and './a//b': two members, one path once extracted")
def _dup_spellings() -> bytes:
    return entry("a/b", A) + entry("./a//b", B) + END


@construction("name-dotdot", "a name with '..'")
def _name_dotdot() -> bytes:
    return entry("a/../index.json", A) + END


@construction("name-absolute", "an absolute name")
def _name_abs() -> bytes:
    return entry("/etc/index.json", A) + END


@construction("name-non-utf8", "a name that is not UTF-8")
def _name_latin1() -> bytes:
    return entry(b"caf\xe9", A) + END


@construction("name-control-char", "a name with a newline")
def _name_newline() -> bytes:
    return entry("a\nb", A) + END


@construction("file-named-dot", "a regular file named '.'")
def _file_dot() -> bytes:
    return entry(".", A) + END


@construction("type-0-trailing-slash", "a regular ('0') file named 'f/': Go reads a file, bsdtar a folder")
def _type0_slash() -> bytes:
    return entry("f/", A) + END


@construction("nul-type-name-slash-mismatch", "a '\\0' member whose header name is 'f' and pax path 'f/': Go "
              "reads a folder (from the pax path), tarfile a file (from the header name)")
def _nul_mismatch() -> bytes:
    return pax(("path", "f/")) + header("f", typeflag=b"\0") + END


@construction("nul-type-prefix-only", "a '\\0' member with a prefix 'd' and an empty name: Go reads 'd/', a "
              "folder; tarfile types it from the empty name field: a file")
def _nul_prefix_only() -> bytes:
    return entry("ok", B) + header("", typeflag=b"\0", prefix=b"d") + END


# -- type flags -------------------------------------------------------------------------------

@construction("dir-with-size", "a folder with a size and data: Go reads the data as headers")
def _dir_size() -> bytes:
    return header("d/", typeflag=b"5", size=BLOCK) + header("d/hidden") + END


@construction("symlink-with-size", "a symlink with a size and data: Go reads the data as headers")
def _symlink_size() -> bytes:
    return symlink("l", "f", size=BLOCK) + header("hidden") + END


@construction("hardlink-with-size", "a hard link with a size and data")
def _hardlink_size() -> bytes:
    return entry("f", A) + hardlink("h", "f", size=BLOCK) + header("hidden") + END


for _flag, _what in ((b"7", "contiguous file"), (b"V", "GNU volume header"), (b"N", "old GNU long names"),
                     (b"S", "GNU sparse file"), (b"M", "GNU multi-volume continuation"), (b"D", "GNU dump folder"),
                     (b"X", "Solaris extended header"), (b"A", "Solaris ACL"), (b"Z", "unknown type")):
    construction(f"type-{_flag.decode()}", f"a member of type {_flag.decode()!r} ({_what})")(
        (lambda flag: lambda: entry("index.json", A, typeflag=flag, fmt=GNU) + END)(_flag))


# -- links ------------------------------------------------------------------------------------

@construction("hardlink-later", "a hard link to a file that comes later: extraction fails")
def _hardlink_later() -> bytes:
    return hardlink("h", "f") + entry("f", A) + END


@construction("hardlink-to-dir", "a hard link to a folder: link(2) refuses it")
def _hardlink_dir() -> bytes:
    return dir_entry("d/") + hardlink("h", "d") + END


@construction("hardlink-self", "a hard link to itself")
def _hardlink_self() -> bytes:
    return hardlink("h", "h") + END


@construction("hardlink-through-symlink", "a hard link to 's/f' where s -> d: link(2) follows s")
def _hardlink_symlink() -> bytes:
    return dir_entry("d/") + entry("d/f", A) + symlink("s", "d") + hardlink("h", "s/f") + END


@construction("symlink-loop", "two symlinks to each other")
def _symlink_loop() -> bytes:
    return symlink("a", "b") + symlink("b", "a") + END


@construction("symlink-long-chain", "41 symlinks in a chain: the system gives ELOOP")
def _symlink_long() -> bytes:
    links = b"".join(symlink(f"l{i}", f"l{i + 1}") for i in range(41))
    return links + entry("l41", A) + END


@construction("symlink-absolute", "a symlink to an absolute path (a host file once extracted)")
def _symlink_abs() -> bytes:
    return symlink("index.json", "/etc/hostname") + END


@construction("symlink-escape", "a symlink out of the archive's folder")
def _symlink_escape() -> bytes:
    return dir_entry("d/") + symlink("d/l", "../../x") + END


@construction("symlink-lexically-out-os-in", "'l' -> 's/../../f' where s -> a/b: the system stays inside, "
              "containers/storage's lexical check refuses it as a breakout")
def _symlink_lex_out() -> bytes:
    return (dir_entry("a/") + dir_entry("a/b/") + entry("f", A) + symlink("s", "a/b")
            + symlink("l", "s/../../f") + END)


@construction("member-under-symlink", "a member inside a symlinked folder: extraction writes it through the link")
def _member_under_symlink() -> bytes:
    return dir_entry("d/") + symlink("s", "d") + entry("s/f", A) + END


@construction("member-under-file", "a member inside a file")
def _member_under_file() -> bytes:
    return entry("f", A) + entry("f/g", B) + END
