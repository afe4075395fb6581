"""Every hostile tar construction (tests/support/tarref/constructions.py) through regpatch's
tar reader: what it reads, or that it refuses, naming the member and saying why.

Each construction is read four ways that must agree: as a stream (a decompressing
reader: skips are reads), as a seekable archive with and without its length known
(skips are seeks), and as a whole bundle archive (plain and gzip-compressed, through
``open_source``: names collected, duplicates refused, links resolved as the extracted
tree resolves them). Go's own reading of the same bytes is compared in
tests/e2e/test_tar_differential.py; the rules are in tests/support/tarref/SPEC.md.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass, field
from typing import Optional, Union

import pytest

from regpatch.bundle.open import open_source
from regpatch.cli import main
from regpatch.bundle.tarstream import (DIR, FILE, HARDLINK, OTHER, SYMLINK, TarAmbiguous, TarError, TarReader,
                                       index_tar)
from regpatch.errors import BundleError, UnknownBundleFormat, UnsafePath
from support.tarref.constructions import LONG, A, B, constructions


@dataclass(frozen=True)
class Ok:
    """Read: members as (name, kind[, data for files | link target for links]), and the files
    the bundle archive offers (name -> bytes; default: every file member)."""

    members: tuple
    files: Optional[dict[str, bytes]] = None


@dataclass(frozen=True)
class Refused:
    """Refused with ``exc``; the message holds ``where`` (the member or byte) and matches ``why``.
    ``level="archive"``: the reader reads it, the bundle archive (names, links) refuses it."""

    exc: type
    where: str
    why: str
    level: str = "reader"
    archive_exc: Optional[type] = None
    members: tuple = field(default=())


def ok(*members, files=None) -> Ok:
    return Ok(tuple(members), files)


AMB = TarAmbiguous

EXPECT: dict[str, Union[Ok, Refused]] = {
    # plain archives the rules keep reading
    "ustar-basic": ok(("d", DIR), ("d/a", FILE, A), ("l", SYMLINK, "d/a"), files={"d/a": A, "l": A}),
    "gnu-long-name": ok((LONG, FILE, A)),
    "gnu-long-link": ok(("f", FILE, A), ("l", SYMLINK, "./" * 60 + "f"), files={"f": A, "l": A}),
    "pax-path-long": ok((LONG, FILE, A)),
    "pax-linkpath": ok(("f", FILE, A), ("l", SYMLINK, "./f"), files={"f": A, "l": A}),
    "ustar-prefix": ok(("p" * 150 + "/f", FILE, A)),
    "all-meta-agreeing": ok(("t", FILE, A), ("p", SYMLINK, "t"), files={"t": A, "p": A}),
    "pax-unknown-keys": ok(("f", FILE, A)),
    "v7-plain": ok(("f", FILE, A)),
    "gnu-magic-bad-version": ok(("f", FILE, A)),
    "ustar-version-garbage": ok(("f", FILE, A)),
    "ustar-utf8-name": ok(("caf\u00e9/f", FILE, A)),
    "checksum-signed": ok(("caf\u00e9", FILE, A)),
    "size-base256": ok(("f", FILE, A)),
    "size-octal-spaces": ok(("f", FILE, A)),
    "mtime-base256-negative": ok(("f", FILE, A)),
    "pax-size-override": ok(("f", FILE, A)),
    "pax-mtime-fraction": ok(("f", FILE, A)),
    "single-zero-block-eof": ok(("f", FILE, A)),
    "no-end-marker": ok(("f", FILE, A)),
    "eof-inside-padding": ok(("f", FILE, A)),
    "trailing-zeros": ok(("f", FILE, A)),
    "only-end-marker": Refused(TarError, "t holds no members", "not a bundle", archive_exc=BundleError),
    "duplicate-dirs": ok(("d", DIR), ("d", DIR), ("d/f", FILE, A)),
    "root-dir-dot": ok(("", DIR), ("f", FILE, A)),
    "fifo-and-device": ok(("p", OTHER), ("c", OTHER), ("f", FILE, A)),
    "hardlink-earlier": ok(("f", FILE, A), ("h", HARDLINK, "f"), files={"f": A, "h": A}),
    "hardlink-absolute-target": ok(("f", FILE, A), ("h", HARDLINK, "/f"), files={"f": A, "h": A}),
    "hardlink-chain": ok(("f", FILE, A), ("h1", HARDLINK, "f"), ("h2", HARDLINK, "./h1"),
                         files={"f": A, "h1": A, "h2": A}),
    "symlink-chain": ok(("c", FILE, A), ("a", SYMLINK, "b"), ("b", SYMLINK, "c"), files={"c": A, "a": A, "b": A}),
    "symlink-to-folder": ok(("b2", DIR), ("b2/x", FILE, A), ("blobs", SYMLINK, "b2"), files={"b2/x": A}),
    "symlink-dotdot-through-symlinked-folder": ok(
        ("d", DIR), ("d/e", DIR), ("ia.json", FILE, A), ("d/ia.json", FILE, B), ("s", SYMLINK, "d/e"),
        ("index.json", SYMLINK, "s/../ia.json"),
        files={"ia.json": A, "d/ia.json": B, "index.json": B}),     # B: as the system resolves it
    "gnu-long-name-and-pax-path-equal": ok((LONG, FILE, A)),
    "v7-nul-type-dir-empty": ok(("d", DIR), ("d/f", FILE, A)),
    "nul-type-file": ok(("f", FILE, A)),
    "star-prefix-short": ok(("sp/f", FILE, A)),
    # the issue's six (the sixth, the symlink, is read as the system reads it: above)
    "pax-x-then-x": Refused(AMB, "pax header 'PaxHeaders.0/x' (header at byte 1,024)", "two pax extended headers"),
    "gnu-long-name-and-pax-path": Refused(AMB, "member 'decoy-a.json'", "GNU long name 'index.json' and the pax "
                                          "path 'decoy-a.json' disagree: Go takes the GNU one"),
    "v7-nul-type-dir-with-data": Refused(AMB, "member 'pad/'", "dir entry with a size of 1,536: Go reads no data"),
    "star-prefix-131": Refused(AMB, "(header at byte 1,024)", "STAR header whose 131-byte prefix has no NUL"),
    "pax-x-then-g": Refused(AMB, "pax global header 'PaxHeaders.0/x' (header at byte 1,024)", "pax global header"),
    # the rest of Go's reader
    "star-bad-atime": Refused(TarError, "member 'f'", "atime field .* is not a number; Go's archive/tar rejects"),
    "pax-global-alone": Refused(AMB, "(header at byte 0)", "pax global header"),
    "pax-global-path": Refused(AMB, "(header at byte 0)", "pax global header"),
    "pax-size-plus": Refused(AMB, "pax header", r"pax size '\+32' is not plain decimal digits"),
    "pax-size-underscore": Refused(AMB, "pax header", "pax size '1_0' is not plain decimal digits"),
    "pax-size-empty": Refused(AMB, "pax header", "empty pax 'size': Go keeps the header's value"),
    "pax-size-on-dir": Refused(AMB, "member 'd/'", "dir entry with a size of 512"),
    "pax-path-nul": Refused(TarError, "pax header", "pax record 'path' holds a NUL; Go's archive/tar rejects"),
    "pax-path-empty": Refused(AMB, "pax header", "empty pax 'path'"),
    "pax-nul-padding": Refused(TarError, "pax header", "malformed pax record at offset 9"),
    "pax-bad-length": Refused(TarError, "pax header", "malformed pax record at offset 0"),
    "pax-length-plus": Refused(AMB, "pax header", r"pax record length with a '\+' sign"),
    "pax-duplicate-key": Refused(AMB, "pax header", "pax key 'path' twice in one header"),
    "pax-gnu-sparse": Refused(TarError, "pax header", "pax sparse file"),
    "pax-hdrcharset-binary": Refused(AMB, "pax header", "hdrcharset 'BINARY'"),
    "pax-mtime-bad": Refused(TarError, "pax header", "pax mtime 'abc' is not a time; Go rejects"),
    "pax-uid-bad": Refused(TarError, "pax header", "pax uid 'x' is not a number; Go rejects"),
    "pax-dangling": Refused(TarError, "header at byte 1,024", "meta headers with no member after them"),
    "pax-too-big": Refused(TarError, "pax header", "pax header of 71,695 bytes"),
    "gnu-long-link-and-pax-linkpath": Refused(AMB, "member 'l'", "GNU long link name 'b' and the pax linkpath 'a' "
                                              "disagree"),
    "gnu-long-name-twice": Refused(AMB, "GNU long-name header", "two GNU long names in a row"),
    "gnu-long-name-empty": Refused(AMB, "GNU long-name header", "empty GNU long name: Go ignores it"),
    "gnu-long-name-junk-after-nul": Refused(AMB, "GNU long-name header", "bytes after the NUL"),
    "gnu-long-name-too-big": Refused(TarError, "GNU long-name header", "GNU long name of 71,681 bytes"),
    "v7-prefix-bytes": Refused(AMB, "member 'index.json'", "V7 header with bytes in the USTAR prefix field"),
    "gnu-atime-in-prefix": Refused(AMB, "member 'f'", "GNU header with bytes in the USTAR prefix field"),
    "checksum-leading-nul": Refused(AMB, "member 'f' (header at byte 1,024)", "checksum field .* is not plain octal"),
    "checksum-bad": Refused(TarError, "header at byte 1,024", "bad tar header checksum"),
    "checksum-base256": Refused(TarError, "header at byte 1,024", "bad tar header checksum"),
    "size-base256-huge": Refused(TarError, "member 'f'", "end past the end of the archive|ends inside member"),
    "size-base256-overflow": Refused(TarError, "member 'f'", "overflows Go's archive/tar"),
    "size-base256-negative": Refused(AMB, "member 'f'", "base-256 size starting with byte 0xff"),
    "size-base256-0x81": Refused(AMB, "member 'f'", "base-256 size starting with byte 0x81"),
    "size-octal-leading-nul": Refused(AMB, "member 'f'", "size field .* is not a plain octal number"),
    "size-octal-inner-space": Refused(AMB, "member 'f'", "size field .* is not a plain octal number"),
    "mode-garbage": Refused(TarError, "member 'f'", "mode field .* is not a number"),
    "zero-block-then-header": Refused(AMB, "header at byte 1,536", "header after a single zero block"),
    "trailing-garbage": Refused(AMB, "byte 2,048", "data after the end-of-archive marker"),
    "truncated-data": Refused(TarError, "member 'f'", "end past the end of the archive|ends inside member"),
    "truncated-header": Refused(TarError, "byte 1,024", "ends inside a header"),
    "empty-archive": Refused(TarError, "t is empty", "empty or not a tar archive",
                             archive_exc=UnknownBundleFormat),
    "not-a-tar": Refused(TarError, "t is not", r"not a tar archive \(bad header checksum at byte 0\)",
                         archive_exc=UnknownBundleFormat),
    # names
    "duplicate-spellings": Refused(BundleError, "'a/b' twice", "a tool reading it would take either",
                                   level="archive", members=(("a/b", FILE, A), ("a/b", FILE, B))),
    "name-dotdot": Refused(UnsafePath, "member 'a/../index.json'", r"not a plain relative path \('..'\)"),
    "name-absolute": Refused(UnsafePath, "member '/etc/index.json'", "not a plain relative path"),
    "name-non-utf8": Refused(TarError, "header at byte 0", "is not UTF-8"),
    "name-control-char": Refused(UnsafePath, "header at byte 0", "holds control characters"),
    "file-named-dot": Refused(AMB, "member '.'", "file named like the archive's root folder"),
    "type-0-trailing-slash": Refused(AMB, "member 'f/'", "regular file whose name ends in '/'"),
    "nul-type-name-slash-mismatch": Refused(AMB, "member 'f/'", r"old-style \('\\0' type\) member"),
    "nul-type-prefix-only": Refused(AMB, "member 'd/'", r"old-style \('\\0' type\) member"),
    # type flags
    "dir-with-size": Refused(AMB, "member 'd/'", "dir entry with a size of 512"),
    "symlink-with-size": Refused(AMB, "member 'l'", "symlink entry with a size of 512"),
    "hardlink-with-size": Refused(AMB, "member 'h'", "hardlink entry with a size of 512"),
    "type-7": Refused(AMB, "member 'index.json'", "contiguous file"),
    "type-V": Refused(AMB, "member 'index.json'", "GNU volume header"),
    "type-N": Refused(AMB, "member 'index.json'", "old GNU long-names entry"),
    "type-S": Refused(AMB, "member 'index.json'", "GNU sparse file"),
    "type-M": Refused(AMB, "member 'index.json'", "GNU multi-volume continuation"),
    "type-D": Refused(AMB, "member 'index.json'", "GNU dump folder"),
    "type-X": Refused(AMB, "member 'index.json'", "Solaris extended header"),
    "type-A": Refused(AMB, "member 'index.json'", "unknown type flag b'A'"),
    "type-Z": Refused(AMB, "member 'index.json'", "unknown type flag b'Z'"),
    # links (the reader reads them; the bundle archive resolves them)
    "hardlink-later": Refused(TarError, "member 'h'", "hard link to 'f', which is itself or comes later",
                              level="archive", members=(("h", HARDLINK, "f"), ("f", FILE, A))),
    "hardlink-to-dir": Refused(TarError, "member 'h'", "hard link to 'd', which is no file",
                               level="archive", members=(("d", DIR), ("h", HARDLINK, "d"))),
    "hardlink-self": Refused(TarError, "member 'h'", "which is itself or comes later",
                             level="archive", members=(("h", HARDLINK, "h"),)),
    "hardlink-through-symlink": Refused(TarError, "member 'h'", "hard link to 's/f' through a symlink",
                                        level="archive", members=(("d", DIR), ("d/f", FILE, A), ("s", SYMLINK, "d"),
                                                                  ("h", HARDLINK, "s/f"))),
    "symlink-loop": Refused(TarError, "member '", "more than 40 symlinks in one lookup",
                            level="archive", members=(("a", SYMLINK, "b"), ("b", SYMLINK, "a"))),
    "symlink-long-chain": Refused(TarError, "member 'l0'", "more than 40 symlinks in one lookup", level="archive",
                                  members=tuple((f"l{i}", SYMLINK, f"l{i + 1}") for i in range(41))
                                  + (("l41", FILE, A),)),
    "symlink-absolute": Refused(UnsafePath, "member 'index.json'", "symlink to an absolute path",
                                level="archive", members=(("index.json", SYMLINK, "/etc/hostname"),)),
    "symlink-escape": Refused(UnsafePath, "member 'd/l'", "outside the archive",
                              level="archive", members=(("d", DIR), ("d/l", SYMLINK, "../../x"))),
    "symlink-lexically-out-os-in": Refused(UnsafePath, "member 'l'", "outside the archive", level="archive",
                                           members=(("a", DIR), ("a/b", DIR), ("f", FILE, A), ("s", SYMLINK, "a/b"),
                                                    ("l", SYMLINK, "s/../../f"))),
    "member-under-symlink": Refused(AMB, "member 's/f'", "it lies inside 's', a symlink", level="archive",
                                    members=(("d", DIR), ("s", SYMLINK, "d"), ("s/f", FILE, A))),
    "member-under-file": Refused(AMB, "member 'f/g'", "it lies inside 'f', a file", level="archive",
                                 members=(("f", FILE, A), ("f/g", FILE, B))),
}

CASES = constructions()


def test_every_construction_has_an_expectation():
    assert sorted(c.name for c in CASES) == sorted(EXPECT)


class _Unseekable(io.RawIOBase):
    """A stream that can only be read front to back (as a decompressor)."""

    def __init__(self, data: bytes):
        super().__init__()
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)


def _summary(m, data: Optional[bytes]) -> tuple:
    if m.kind == FILE:
        return (m.name, m.kind, data)
    if m.kind in (SYMLINK, HARDLINK):
        return (m.name, m.kind, m.linkname)
    return (m.name, m.kind)


def read_stream(data: bytes) -> list[tuple]:
    reader = TarReader(_Unseekable(data), what="t")   # type: ignore[arg-type]
    out = []
    for m in reader.members():
        body = reader.member_stream(m).read() if m.kind == FILE else None
        out.append(_summary(m, body))
    return out


def read_index(data: bytes, *, sized: bool) -> list[tuple]:
    members = index_tar(lambda o, n: data[o:o + n], what="t", size=len(data) if sized else None)
    return [_summary(m, data[m.offset:m.offset + m.size] if m.kind == FILE else None) for m in members]


def read_bundle(path) -> dict[str, bytes]:
    src = open_source(str(path))
    return {name: src.read_bytes(name, 1 << 20) for name in src.list()}


READERS = {"stream": read_stream, "index": lambda d: read_index(d, sized=True),
           "index-probing": lambda d: read_index(d, sized=False)}


def _check_refusal(exc_info, want: Refused, exc: type) -> None:
    assert isinstance(exc_info.value, exc), f"{type(exc_info.value).__name__}: {exc_info.value}"
    message = str(exc_info.value)
    assert "\n" not in message
    if exc is BundleError:  # either the format sniffing or the reader refuses it
        assert re.search(want.why + "|neither a tar archive", message), message
    elif exc is not UnknownBundleFormat:
        assert want.where in message, message
        assert re.search(want.why, message), message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("how", sorted(READERS))
def test_reader(case, how):
    want = EXPECT[case.name]
    if isinstance(want, Refused) and want.level == "reader":
        with pytest.raises(BundleError) as e:
            READERS[how](case.data)
        _check_refusal(e, want, want.exc)
    else:
        assert READERS[how](case.data) == list(want.members)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("compress", ["", "gzip"])
def test_bundle_archive(case, compress, tmp_path):
    """The same bytes as a bundle (plain: read in place; gzip: read as a stream)."""
    want = EXPECT[case.name]
    path = tmp_path / ("a.tar.gz" if compress else "a.tar")
    path.write_bytes(gzip.compress(case.data) if compress else case.data)
    if isinstance(want, Refused):
        with pytest.raises(BundleError) as e:
            read_bundle(path)
        _check_refusal(e, want, want.archive_exc or want.exc)
        return
    files = want.files if want.files is not None else {m[0]: m[2] for m in want.members if m[1] == FILE}
    assert read_bundle(path) == files


def test_messages_name_the_archive_member_and_what_to_do():
    """A refusal says which archive, which member, why, and what to do, on one line."""
    case = next(c for c in CASES if c.name == "pax-x-then-x")
    with pytest.raises(TarAmbiguous) as e:
        read_stream(case.data)
    assert str(e.value) == (
        "t: pax header 'PaxHeaders.0/x' (header at byte 1,024): refused as ambiguous: two pax extended headers "
        "in a row: Go applies only the second, Python's tarfile applies both; write the archive again with "
        "skopeo copy, podman save or docker save")
    assert e.value.exit_code == 3


def test_huge_size_is_a_bundle_error_not_a_traceback_on_a_stream():
    """A 2^62-byte member in a stream: skipping it reads to the end and stops there."""
    case = next(c for c in CASES if c.name == "size-base256-huge")
    reader = TarReader(_Unseekable(case.data), what="t")   # type: ignore[arg-type]
    m = reader.next()
    assert m is not None and m.size == 1 << 62
    with pytest.raises(TarError, match="ends inside member 'f'"):
        reader.next()


@pytest.mark.parametrize("name", ["pax-x-then-x", "size-base256-overflow", "size-base256-0x81",
                                  "v7-nul-type-dir-with-data", "zero-block-then-header"])
@pytest.mark.parametrize("compress", ["", "gzip"])
def test_cli_refuses_with_exit_code_3_and_one_line(name, compress, tmp_path, capsys):
    """``regpatch inspect`` of a hostile archive: exit 3, one line naming the member, no traceback
    (regpatch's former reader raised OverflowError on the base-256 sizes)."""
    case = next(c for c in CASES if c.name == name)
    path = tmp_path / ("a.tar.gz" if compress else "a.tar")
    path.write_bytes(gzip.compress(case.data) if compress else case.data)
    assert main(["inspect", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"regpatch: error: {path}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
