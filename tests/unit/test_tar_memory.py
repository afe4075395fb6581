"""Metadata bombs: the worst tar archives for memory are refused (or read) in little memory.

The issue measured 2.1 GB of memory from a 432 KB zstd archive of consecutive pax
headers. Each bomb here is written compressed (zstd and gzip), then opened as a
bundle in a fresh interpreter, whose peak RSS growth (``resource.getrusage``,
measured from after the imports) must stay under 50 MB. The figures are printed
(``pytest -s``) for the closing note.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import zstandard

from support.tarref.constructions import END, entry, gnu_long, pax, record, symlink

LIMIT_KB = 50 << 10
BIG_RECORD = ("comment", "c" * ((64 << 10) - 600))          # a pax header just under regpatch's bound


def consecutive_pax() -> Iterator[bytes]:
    """The issue's bomb: pax headers in a row, never a member (128 MB uncompressed)."""
    header = pax(BIG_RECORD)
    for _ in range(2000):
        yield header


def consecutive_long_names() -> Iterator[bytes]:
    header = gnu_long("n" * ((64 << 10) - 600))
    for _ in range(2000):
        yield header


def huge_pax_record() -> Iterator[bytes]:
    """One pax header at Go's own bound (1 MiB), then a member."""
    yield pax(raw=record("comment", "c" * ((1 << 20) - 40)))
    yield entry("f", b"x")


def long_names_per_member() -> Iterator[bytes]:
    """Many members, each with a 4,000-character pax path (the name budget stops it)."""
    for i in range(10_000):
        yield pax(("path", f"{i:08d}/" + "p" * 3990)) + entry("f", b"")


def members_with_meta() -> Iterator[bytes]:
    """A pax header, a GNU long name and a long link name (each near 64 KiB) before every member."""
    big = "q" * ((64 << 10) - 600)
    for i in range(1500):
        yield pax(BIG_RECORD) + gnu_long(f"{i}/" + big[:3000]) + gnu_long(big[:3000], b"K") + symlink("x", "y")


def empty_files(count: int) -> Iterator[bytes]:
    """Headers of empty files 'm/000000'...: one template, the name and checksum patched (fast)."""
    template = bytearray(entry("m/000000", b""))
    base = sum(template) - sum(template[148:156]) + 8 * 32 - sum(template[:8])
    for i in range(count):
        name = f"m/{i:06d}".encode()
        template[:8] = name
        template[148:156] = f"{base + sum(name):06o}".encode() + b"\0 "
        yield bytes(template)


def too_many_members() -> Iterator[bytes]:
    """One member more than regpatch reads, each an empty file with a short name."""
    yield from empty_files(100_001)


def max_members() -> Iterator[bytes]:
    """As many members as regpatch reads (the worst archive it accepts), symlinks among them."""
    yield from empty_files(99_000)
    for i in range(1000):
        yield symlink(f"l/{i:04d}", f"../m/{i:06d}")
    yield END


def symlink_walks() -> Iterator[bytes]:
    """Names and link targets as deep and long as allowed: every symlink walks 127 components
    (CPU: resolving them all takes seconds at most; memory: the name budget)."""
    deep = "/".join(["d"] * 63)
    yield pax(("path", deep + "/f")) + entry("x", b"A")
    target = "d/../" * 31 + deep + "/f"
    for i in range((8 << 20) // (len(target) + 10)):
        yield pax(("linkpath", target)) + symlink(f"l{i}", "x")
    yield END


BOMBS: dict[str, tuple[Callable[[], Iterator[bytes]], bool]] = {
    "consecutive-pax": (consecutive_pax, True),
    "consecutive-long-names": (consecutive_long_names, True),
    "huge-pax-record": (huge_pax_record, True),
    "long-names-per-member": (long_names_per_member, True),
    "members-with-meta": (members_with_meta, True),
    "too-many-members": (too_many_members, True),
    "max-members": (max_members, False),
    "symlink-walks": (symlink_walks, False),
}


def write_bomb(path: Path, chunks: Iterator[bytes], compress: str) -> int:
    """Stream the bomb into its compressor; the uncompressed size."""
    total = 0
    with open(path, "wb") as raw:
        out = (zstandard.ZstdCompressor(level=3).stream_writer(raw) if compress == "zstd"
               else gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0))
        with out:
            for chunk in chunks:
                out.write(chunk)
                total += len(chunk)
    return total


# Peak RSS growth from after the imports: the kernel's high-water mark is reset there
# (/proc/self/clear_refs, Linux) so that memory freed by the imports cannot hide growth;
# getrusage's ru_maxrss is the fallback where the reset is not allowed.
PROBE = r"""
import gc, json, resource, sys
import zstandard, zlib
from regpatch.bundle.open import open_source
from regpatch.errors import BundleError

def status(key):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(key + ":")).split()[1])

gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, peak_of = status("VmRSS"), lambda: status("VmHWM")
except OSError:
    base, peak_of = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, \
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    src = open_source(sys.argv[1])
    outcome = f"read {len(src.members)} members"
except BundleError as e:
    outcome = f"refused: {e}"
print(json.dumps({"growth_kb": peak_of() - base, "outcome": outcome}))
"""


@pytest.mark.parametrize("bomb,compress", [(b, c) for b in sorted(BOMBS) for c in ("zstd", "gzip")
                                            if not (b == "symlink-walks" and c == "gzip")])  # CPU-bound: once
def test_metadata_bomb_stays_small(bomb, compress, tmp_path):
    make, refused = BOMBS[bomb]
    path = tmp_path / f"{bomb}.tar.{'zst' if compress == 'zstd' else 'gz'}"
    size = write_bomb(path, make(), compress)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    print(f"\n{bomb} ({compress}, {path.stat().st_size:,} bytes, {size:,} uncompressed): "
          f"peak RSS growth {result['growth_kb'] / 1024:.1f} MB; {result['outcome'][:160]}")
    assert result["outcome"].startswith("refused") == refused, result["outcome"]
    assert result["growth_kb"] < LIMIT_KB, result
