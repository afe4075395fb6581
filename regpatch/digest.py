"""Digest value type and streaming hash-while-copy.

A digest is never a bare string once parsed: ``Digest.parse`` validates it and
everything else takes ``Digest``. Only sha256 is accepted: it is the only
algorithm the patch bundles and the registry's ``blobs/sha256`` tree use.
"""

from __future__ import annotations

import errno
import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from .errors import DigestMismatch, InvalidReference, SizeMismatch

CHUNK = 4 << 20  # 4 MiB: large enough for throughput, small enough to stay flat

_HEX = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> "Digest":
        if not isinstance(value, str):
            raise InvalidReference("digest", repr(value), "expected a string 'sha256:<64 hex>'")
        algo, sep, hexpart = value.partition(":")
        if not sep:
            raise InvalidReference("digest", value, "expected 'sha256:<64 lowercase hex>'")
        if algo != "sha256":
            raise InvalidReference("digest", value, "only sha256 digests are supported")
        if not _HEX.match(hexpart):
            raise InvalidReference("digest", value, "expected 'sha256:<64 lowercase hex>'")
        return cls(algo, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes) -> "Digest":
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @property
    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def new_hasher():
    return hashlib.sha256()


def copy_and_hash(
    src: BinaryIO,
    dst: Optional[BinaryIO],
    *,
    what: str,
    expected: Optional[Digest] = None,
    expected_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    hasher=None,
    already: int = 0,
) -> tuple[Digest, int]:
    """Read ``src`` to EOF once, hash it and write it to ``dst`` (if given).

    Fails at EOF (or as soon as the size is exceeded) with ``SizeMismatch`` or
    ``DigestMismatch`` naming ``what``, the expected and the actual values.
    ``hasher``/``already`` let a caller resume a hash over bytes already seen.
    Memory use is one chunk, whatever the size.
    """
    h = hasher or new_hasher()
    total = already
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = src.readinto(buf) if hasattr(src, "readinto") else _readinto(src, buf)
        if not n:
            break
        chunk = view[:n]
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)
        total += n
        if expected_size is not None and total > expected_size:
            raise SizeMismatch(what, expected_size, total)
        if progress:
            progress(n)
    if expected_size is not None and total != expected_size:
        raise SizeMismatch(what, expected_size, total)
    actual = Digest("sha256", h.hexdigest())
    if expected is not None and actual != expected:
        raise DigestMismatch(what, expected, actual, total)
    return actual, total


def _readinto(src, buf: bytearray) -> int:
    data = src.read(len(buf))
    buf[: len(data)] = data
    return len(data)


# Transient I/O faults (network shares, flaky disks). A digest or size
# mismatch is never retried: it is a fact about the bytes, not a fault.
TRANSIENT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET,
                    errno.ESTALE, errno.EHOSTUNREACH, errno.ENETRESET}


def is_transient_io(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


io_retry = retry(
    retry=retry_if_exception(is_transient_io),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.2, max=5),
    reraise=True,
)


@io_retry
def hash_file(path, *, what: Optional[str] = None, expected: Optional[Digest] = None,
              expected_size: Optional[int] = None,
              progress: Optional[Callable[[int], None]] = None) -> tuple[Digest, int]:
    """Hash a file streamed, retrying transient I/O errors from the start."""
    with open(path, "rb", buffering=0) as f:
        return copy_and_hash(f, None, what=what or str(path), expected=expected,
                             expected_size=expected_size, progress=progress)
