"""The Digest value type.

A digest is never a bare string once parsed: ``Digest.parse`` validates the
whole string (no trailing newline, no surrounding space) and everything else
takes ``Digest``. Only sha256 is accepted: it is the only
algorithm the patch bundles and the registry's ``blobs/sha256`` tree use.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from regpatch.errors import InvalidReference

CHUNK = 4 << 20  # 4 MiB: large enough for throughput, small enough to stay flat

_HEX = re.compile(r"[a-f0-9]{64}", re.ASCII)


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __post_init__(self) -> None:  # no Digest can hold anything but sha256 and 64 hex
        if self.algorithm != "sha256" or not isinstance(self.hex, str) or not _HEX.fullmatch(self.hex):
            raise InvalidReference("digest", f"{self.algorithm}:{self.hex}",
                                   "expected 'sha256:<64 lowercase hex>'")

    @classmethod
    def parse(cls, value: object) -> "Digest":  # any JSON value: a non-string is refused
        if not isinstance(value, str):
            raise InvalidReference("digest", repr(value), "expected a string 'sha256:<64 hex>'")
        algo, sep, hexpart = value.partition(":")
        if not sep:
            raise InvalidReference("digest", value, "expected 'sha256:<64 lowercase hex>'")
        if algo != "sha256":
            raise InvalidReference("digest", value, "only sha256 digests are supported")
        if not _HEX.fullmatch(hexpart):
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


# --------------------------------------------------------------------------- kernel helpers
# Linux-only speed-ups, each optional: when the call is missing or refused the copy
# goes on the portable way, with the same result.


