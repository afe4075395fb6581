"""Deterministic gzip, compressed on every core, streamed.

Used to convert the uncompressed layers of a ``docker save`` archive into the
gzip layers a registry serves. The same input always gives the same bytes
(and so the same digest) with the same zlib: the header has no file name and
mtime 0, and the input is cut into fixed blocks whatever the number of
threads.

How (the scheme pigz uses): the input is cut into ``BLOCK`` blocks; each is
deflated on its own (zlib releases the GIL, so blocks compress in parallel
threads), primed with the last 32 KiB of the block before it so the ratio
stays close to a single stream, and ends with a sync flush, which byte-aligns
it so the raw deflate streams can be concatenated. A block whose sample does
not compress (already compressed or random data) is written as stored deflate
blocks instead, at copy speed. The stream ends with an empty final stored
block, then the CRC-32 and the length of the input.

Memory: a few blocks per thread, whatever the size of the input.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from regpatch.hashing import Readable

BLOCK = 1 << 20           # input bytes per independently deflated block (fixed: part of the output)
WINDOW = 32 << 10         # deflate's window: the dictionary each block is primed with
SAMPLE = 64 << 10         # bytes of a block tried first to tell incompressible data
INCOMPRESSIBLE = 0.97     # a sample that shrinks less than this is stored
DEFAULT_LEVEL = 1
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no flags, mtime 0, no xfl, OS unknown
FINAL_EMPTY_STORED = b"\x01\x00\x00\xff\xff"
_STORED_MAX = 0xFFFF


def _stored(data: memoryview) -> bytes:
    """``data`` as non-final stored deflate blocks (the stream is byte-aligned here)."""
    out = bytearray()
    for i in range(0, len(data), _STORED_MAX):
        part = data[i:i + _STORED_MAX]
        n = len(part)
        out += b"\x00" + struct.pack("<HH", n, n ^ 0xFFFF)
        out += part
    return bytes(out)


def deflate_block(data: bytes, dictionary: bytes, level: int) -> bytes:
    """One block: raw deflate primed with ``dictionary``, ending byte-aligned (sync flush).

    The first ``SAMPLE`` bytes are deflated and sync-flushed first: when they do not
    shrink, the whole block is stored instead; otherwise the same compressor goes on
    with the rest (the sample is not compressed twice).
    """
    view = memoryview(data)
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                         **({"zdict": dictionary} if dictionary else {}))
    if len(data) <= SAMPLE:
        return c.compress(view) + c.flush(zlib.Z_SYNC_FLUSH)
    head = c.compress(view[:SAMPLE]) + c.flush(zlib.Z_SYNC_FLUSH)
    if len(head) >= INCOMPRESSIBLE * SAMPLE:
        return _stored(view)
    return head + c.compress(view[SAMPLE:]) + c.flush(zlib.Z_SYNC_FLUSH)


class GzipStats:
    """What one compression saw: sha256 and size of the input and of the output."""

    def __init__(self) -> None:
        self.raw_hasher = hashlib.sha256()
        self.raw_size = 0
        self.out_hasher = hashlib.sha256()
        self.out_size = 0

    @property
    def raw_digest(self) -> str:
        return "sha256:" + self.raw_hasher.hexdigest()

    @property
    def out_digest(self) -> str:
        return "sha256:" + self.out_hasher.hexdigest()


def _read_full(src: Readable, n: int) -> bytes:
    chunks = []
    left = n
    while left:
        data = src.read(left)
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def compress_stream(src: Readable, write: Optional[Callable[[bytes], object]], *, level: int = DEFAULT_LEVEL,
                    threads: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                    limit: Optional[int] = None) -> GzipStats:
    """Read ``src`` to EOF (or ``limit`` bytes), gzip it deterministically, hand the output to ``write``.

    Hashes input and output while streaming (``GzipStats``); ``write`` None
    only hashes the output. ``progress`` gets input byte counts.
    """
    threads = threads or min(4, os.cpu_count() or 1)
    stats = GzipStats()
    crc = 0

    def emit(data: bytes) -> None:
        stats.out_hasher.update(data)
        stats.out_size += len(data)
        if write is not None:
            write(data)

    emit(HEADER)
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gzip") if threads > 1 else None
    prev_tail = b""
    left = limit
    try:
        while True:
            want = BLOCK if left is None else min(BLOCK, left)
            block = _read_full(src, want) if want else b""
            if not block:
                break
            if left is not None:
                left -= len(block)
            stats.raw_hasher.update(block)
            stats.raw_size += len(block)
            crc = zlib.crc32(block, crc)
            if pool is None:
                emit(deflate_block(block, prev_tail, level))
            else:
                pending.append(pool.submit(deflate_block, block, prev_tail, level))
                while len(pending) > threads * 2:
                    emit(pending.popleft().result())
            prev_tail = block[-WINDOW:]
            if progress:
                progress(len(block))
        while pending:
            emit(pending.popleft().result())
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    emit(FINAL_EMPTY_STORED + struct.pack("<II", crc & 0xFFFFFFFF, stats.raw_size & 0xFFFFFFFF))
    return stats
