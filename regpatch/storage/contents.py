"""What a registry's storage holds, as a small deterministic JSON (``regpatch contents``).

Made on the site and carried back to the connected side, where ``regpatch
bundle --have FILE`` leaves out every blob the file lists. The same storage
always gives the same bytes (sorted keys, no time stamp, no host name), so
the sha256 of the file names one state of the site::

    {
     "blobs":{"sha256:<hex>":<size>, ...},
     "format":"regpatch-contents/1",
     "repositories":{"<name>":{"revisions":["sha256:<hex>", ...],
                               "tags":{"<tag>":"sha256:<hex>", ...}}}
    }

Reading the storage is strict, the way the registry (2.8) reads it: a link
file counts only when it holds exactly ``sha256:<64 hex>`` (a trailing newline
or a UTF-16 link makes the registry answer HTTP 500, so such a tag is not
reported), names are checked against their grammar before any path is made
from them (paths come from ``Layout`` only), symlinked folders are not
followed, and the walk of nested repository names is bounded. When in doubt a
blob or tag is left out: a contents file that under-reports only makes the
next bundle larger, one that over-reports would make it incomplete (which the
site's check would then refuse, naming the missing blobs).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from regpatch import platform
from regpatch.digest import Digest
from regpatch.errors import InvalidReference, ManifestError, StorageError, StorageNotFound, UsageError
from regpatch.manifest import load_json
from regpatch.options import opt
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository, Tag
from regpatch.storage.layout import Layout
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.contents")

FORMAT = "regpatch-contents/1"
MAX_CONTENTS_FILE = 64 << 20            # about 700,000 blobs
MAX_REPOSITORY_DEPTH = 128              # a 255-character name has at most 128 components
_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_FILE_NAME = re.compile(r"[A-Za-z0-9._+@=-]{1,255}")


@dataclass(frozen=True)
class RepositoryContents:
    tags: Mapping[str, Digest]          # tag -> digest its current/link holds
    revisions: tuple[Digest, ...]       # manifests the repository can serve by digest


@dataclass(frozen=True)
class Contents:
    blobs: Mapping[Digest, int]                       # every blob data file: digest -> size
    repositories: Mapping[str, RepositoryContents]
    skipped: tuple[str, ...] = field(default=(), compare=False)  # what was left out, and why

    def to_json(self) -> bytes:
        """The deterministic bytes of the file (same contents, same bytes)."""
        doc = {
            "format": FORMAT,
            "blobs": {str(d): self.blobs[d] for d in sorted(self.blobs, key=str)},
            "repositories": {
                name: {"tags": {t: str(r.tags[t]) for t in sorted(r.tags)},
                       "revisions": sorted(str(d) for d in r.revisions)}
                for name, r in sorted(self.repositories.items())},
        }
        return (json.dumps(doc, sort_keys=True, indent=1, separators=(",", ":"), ensure_ascii=True)
                + "\n").encode("ascii")

    def summary(self) -> str:
        tags = sum(len(r.tags) for r in self.repositories.values())
        return (f"{len(self.blobs)} blobs ({sum(self.blobs.values()):,} B), "
                f"{len(self.repositories)} repositories, {tags} tags")


@dataclass(frozen=True)
class ContentsFile:
    """A contents file read back (on the connected side), with its own identity."""

    name: str           # base name of the file, as recorded in a bundle
    sha256: Digest      # sha256 of the file's exact bytes
    contents: Contents


# --------------------------------------------------------------------------- reading the storage

def _scandir(path: Path, what: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []
    except PermissionError as e:
        raise StorageError(f"cannot list {what} {path}: {e.strerror}; run as a user that can "
                           "read the registry storage") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _blobs(layout: Layout, skipped: list[str]) -> dict[Digest, int]:
    blobs: dict[Digest, int] = {}
    for prefix in _scandir(layout.blobs_root(), "the blobs folder"):
        if not (_is_dir(prefix) and _HEX2.fullmatch(prefix.name)):
            if prefix.is_symlink():
                skipped.append(f"blobs/sha256/{prefix.name!r}: a symlink, not followed")
            continue
        for entry in _scandir(Path(prefix.path), "the blobs folder"):
            name = entry.name
            if not (_HEX64.fullmatch(name) and name.startswith(prefix.name) and _is_dir(entry)):
                continue
            digest = Digest.parse("sha256:" + name)
            path = layout.blob_data(digest)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # a folder without data (an interrupted upload): not a blob
            except OSError as e:
                raise StorageError(f"cannot read {layout.relative(path)}: {e.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                skipped.append(f"{layout.relative(path)}: not a regular file")
                continue
            blobs[digest] = st.st_size
    return blobs


def _repository_names(layout: Layout, skipped: list[str]) -> Iterator[Repository]:
    """Every repository: a folder with ``_manifests``, reached through valid name components."""
    root = layout.repositories_root
    stack: list[tuple[tuple[str, ...], Path]] = [((), root)]
    while stack:
        parts, folder = stack.pop()
        entries = _scandir(folder, "the repositories folder")
        names = {e.name for e in entries}
        if parts and "_manifests" in names:
            yield Repository.parse("/".join(parts))
        if len(parts) >= MAX_REPOSITORY_DEPTH:
            skipped.append(f"repositories/{'/'.join(parts)}: deeper than {MAX_REPOSITORY_DEPTH} "
                           "components, not walked")
            continue
        for e in sorted(entries, key=lambda e: e.name, reverse=True):
            if e.name.startswith("_") or not _is_dir(e):
                continue
            if not _COMPONENT.fullmatch(e.name):
                skipped.append(f"repositories/{'/'.join(parts + (e.name,))!r}: not a valid "
                               "repository name component")
                continue
            name = "/".join(parts + (e.name,))
            if len(name) > 255:
                skipped.append(f"repositories/{name[:60]}...: name longer than 255 characters")
                continue
            # the path comes from Layout, from the validated components
            stack.append((parts + (e.name,), layout.repository(Repository.parse(name))))


def _repository(store: RegistryStore, repo: Repository, skipped: list[str]) -> RepositoryContents:
    layout = store.layout
    tags: dict[str, Digest] = {}
    for e in _scandir(layout.tags_dir(repo), f"the tags of {repo}"):
        if not _is_dir(e):
            continue
        try:
            tag = Tag.parse(e.name)
        except InvalidReference:
            skipped.append(f"{repo}: tag folder {e.name!r} is not a valid tag")
            continue
        path = layout.tag_current_link(repo, tag)
        try:
            digest = store.read_link(path)
        except StorageError as err:
            skipped.append(f"{repo}:{tag}: {err}")
            continue
        if digest is not None:
            tags[tag.name] = digest
    revisions: list[Digest] = []
    for e in _scandir(layout.revisions_dir(repo), f"the revisions of {repo}"):
        if not (_is_dir(e) and _HEX64.fullmatch(e.name)):
            continue
        digest = Digest.parse("sha256:" + e.name)
        try:
            linked = store.read_link(layout.revision_link(repo, digest))
        except StorageError as err:
            skipped.append(f"{repo}@{digest}: {err}")
            continue
        if linked is None:
            continue
        if linked != digest:
            skipped.append(f"{repo}@{digest}: the revision link holds {linked}")
            continue
        revisions.append(digest)
    return RepositoryContents(tags, tuple(sorted(revisions, key=str)))


def read_storage(store: RegistryStore, repositories: Optional[Sequence[str]] = None) -> Contents:
    """Read what the storage holds: every blob, and the tags and revisions of
    every repository (or only of ``repositories``). Never writes."""
    layout = store.layout
    if not layout.v2.is_dir():
        raise StorageNotFound(f"{store.root} holds no docker/registry/v2; pass the registry's "
                              f"'rootdirectory' ({opt.storage}) or its config.yml ({opt.registry_config})")
    wanted = [Repository.parse(r) for r in repositories] if repositories else None
    skipped: list[str] = []
    blobs = _blobs(layout, skipped)
    if wanted is None:
        names = list(_repository_names(layout, skipped))
    else:
        names = []
        for repo in wanted:
            if not layout.repository(repo).is_dir():
                raise UsageError(f"repository {repo} is not in the registry storage {store.root}")
            names.append(repo)
    repos = {r.name: _repository(store, r, skipped) for r in names}
    for s in skipped:
        log.warning("contents: left out %s", s)
    return Contents(blobs, repos, tuple(skipped))


def write_contents(contents: Contents, out: Path | str, *, storage_root: Optional[Path] = None) -> Digest:
    """Write the file atomically (``-``: stdout); returns the sha256 of its bytes.

    Refused inside the registry's ``docker/`` tree: the registry's storage is
    never written by this command."""
    data = contents.to_json()
    digest = Digest.of_bytes(data)
    if str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return digest
    out = Path(out)
    if storage_root is not None:
        docker = Path(os.path.realpath(Path(storage_root) / "docker"))
        real = Path(os.path.realpath(out))
        if real == docker or docker in real.parents:
            raise UsageError(f"--out {out} is inside the registry storage {docker}; write the "
                             "contents file elsewhere")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name, e.g. {out / 'site.contents.json'}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        platform.replace(tmp, out)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write the contents file {out}: {e.strerror}") from None
    return digest


# --------------------------------------------------------------------------- reading a file back

def _bad(name: str, what: str) -> UsageError:
    return UsageError(f"contents file {name} is not a regpatch contents file: {what}; make it on the "
                      f"site with 'regpatch contents {opt.storage} --out FILE'")


def _digest(value, name: str, where: str) -> Digest:
    try:
        return Digest.parse(value)
    except InvalidReference:
        raise _bad(name, f"{where} is not 'sha256:<64 hex>'") from None


def _size(value, name: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 1 << 53:
        raise _bad(name, f"{where} is not a size in bytes")
    return value


def parse_contents(data: bytes, name: str) -> Contents:
    """Parse and check the bytes of a contents file (every key and value)."""
    try:
        doc = load_json(data, what=name)  # bounded depth, no duplicate or case-folded keys
    except ManifestError as e:
        raise _bad(name, f"not JSON, or JSON Go would read differently ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(name, f"'format' is not {FORMAT!r}")
    unknown = set(doc) - {"format", "blobs", "repositories"}
    if unknown:
        raise _bad(name, f"unknown keys {sorted(unknown)[:5]}")
    raw_blobs = doc.get("blobs")
    if not isinstance(raw_blobs, dict):
        raise _bad(name, "'blobs' is not an object")
    blobs = {_digest(k, name, f"blobs key {k[:80]!r}"): _size(v, name, f"blobs[{k[:80]!r}]")
             for k, v in raw_blobs.items()}
    raw_repos = doc.get("repositories")
    if not isinstance(raw_repos, dict):
        raise _bad(name, "'repositories' is not an object")
    repos: dict[str, RepositoryContents] = {}
    for rname, r in raw_repos.items():
        try:
            repo = Repository.parse(rname)
        except InvalidReference:
            raise _bad(name, f"repository name {str(rname)[:80]!r} is invalid") from None
        if not isinstance(r, dict) or not isinstance(r.get("tags"), dict) \
                or not isinstance(r.get("revisions"), list) or set(r) - {"tags", "revisions"}:
            raise _bad(name, f"repository {repo} is not {{'tags': {{...}}, 'revisions': [...]}}")
        tags = {}
        for t, d in r["tags"].items():
            try:
                Tag.parse(t)
            except InvalidReference:
                raise _bad(name, f"tag {str(t)[:80]!r} of {repo} is invalid") from None
            tags[t] = _digest(d, name, f"tag {repo}:{t}")
        revisions = tuple(_digest(d, name, f"a revision of {repo}") for d in r["revisions"])
        repos[repo.name] = RepositoryContents(tags, revisions)
    return Contents(blobs, repos)


def read_contents_file(path: Path | str) -> ContentsFile:
    """Read a contents file made on the site (``--have FILE``), bounded and checked."""
    path = Path(path)
    data = read_own_file(path, MAX_CONTENTS_FILE, what="contents file", error=UsageError)
    if data is None:
        raise UsageError(f"contents file {path} does not exist")
    name = path.name
    if not _FILE_NAME.fullmatch(name):
        name = "contents.json"  # recorded in the bundle: keep it a plain name
    return ContentsFile(name, Digest.of_bytes(data), parse_contents(data, str(path)))


def union_blobs(files: Iterable[ContentsFile]) -> dict[Digest, int]:
    """Every blob any of the files lists (digest -> size; the first size wins on conflict)."""
    out: dict[Digest, int] = {}
    for f in files:
        for d, size in f.contents.blobs.items():
            if d in out and out[d] != size:
                log.warning("contents files disagree on the size of %s (%d and %d bytes); the "
                            "first is kept", d, out[d], size)
                continue
            out.setdefault(d, size)
    return out
