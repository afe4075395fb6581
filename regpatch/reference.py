"""Repository names and tags, validated before they ever touch a path.

Grammar from distribution's ``reference`` package:
  repository: path components separated by '/', each
              ``[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*``, total length <= 255
  tag:        ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``

Every check matches the WHOLE string (``re.fullmatch``): a valid name followed
by a newline, a NUL or a look-alike letter is refused, never trimmed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regpatch.errors import InvalidReference

_COMPONENT_TEXT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG_TEXT = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_COMPONENT = re.compile(_COMPONENT_TEXT, re.ASCII)
_TAG = re.compile(_TAG_TEXT, re.ASCII)
# the same grammars as JSON schema patterns (the run forms'; the length of a repository
# is the schema's maxLength)
REPOSITORY_PATTERN = f"^{_COMPONENT_TEXT}(?:/{_COMPONENT_TEXT})*$"
TAG_PATTERN = f"^{_TAG_TEXT}$"

# Path components the registry itself reserves inside a repository folder.
_RESERVED = {"_layers", "_manifests", "_uploads"}


@dataclass(frozen=True)
class Repository:
    name: str

    @classmethod
    def parse(cls, value: str) -> "Repository":
        rule = ("lowercase components [a-z0-9] joined by '.', '_', '__' or '-', "
                "separated by '/', at most 255 characters")
        if not isinstance(value, str) or not value or len(value) > 255:
            raise InvalidReference("repository", str(value), rule)
        for part in value.split("/"):
            if not _COMPONENT.fullmatch(part) or part in _RESERVED:
                raise InvalidReference("repository", value, rule)
        return cls(value)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("/"))

    def __str__(self) -> str:
        return self.name


def normalized_length(name: str) -> int:
    """The length of a repository name as Docker normalises it (``docker.io/library/NAME``
    for a name without '/', ``docker.io/NAME`` when the first component is not a host
    name: no '.' or ':' and not ``localhost``). Registry 2.8.2 with a blob descriptor
    cache refuses a name whose normalised form is longer than 255 characters."""
    first, slash, _ = name.partition("/")
    if not slash:
        return len("docker.io/library/") + len(name)
    if "." in first or ":" in first or first == "localhost":
        return len(name)
    return len("docker.io/") + len(name)


@dataclass(frozen=True)
class Tag:
    name: str

    @classmethod
    def parse(cls, value: str) -> "Tag":
        if not isinstance(value, str) or not _TAG.fullmatch(value):
            raise InvalidReference(
                "tag", str(value), "[A-Za-z0-9_] then up to 127 of [A-Za-z0-9._-]")
        return cls(value)

    def __str__(self) -> str:
        return self.name
