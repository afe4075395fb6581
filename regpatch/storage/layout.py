"""Every path of the registry's storage, in one place.

Like distribution's ``registry/storage/paths.go``: typed inputs (Digest,
Repository, Tag) in, a path out; no other module joins registry paths.

    <root>/docker/registry/v2/
        blobs/sha256/<hex[0:2]>/<hex>/data
        repositories/<name>/_layers/sha256/<hex>/link
        repositories/<name>/_manifests/revisions/sha256/<hex>/link
        repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
        repositories/<name>/_manifests/tags/<tag>/current/link
    <root>/.regpatch/          regpatch's own state (the registry never reads it)
    <root>/.regpatch/locks/    repository locks and the maintenance gate (always here, whatever --state-dir says)

State file names are bounded whatever the names: a repository may have 255
characters and a tag 128, and a file name only 255 bytes. ``state_name`` gives
a readable, truncated prefix of the names plus the sha256 of the full names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from regpatch.digest import Digest
from regpatch.reference import Repository, Tag

V2 = ("docker", "registry", "v2")
STATE_DIR = ".regpatch"


@dataclass(frozen=True)
class Layout:
    root: Path  # the registry's rootdirectory
    state_dir: Optional[Path] = None  # default: <root>/.regpatch (same filesystem: renames stay atomic)

    @property
    def v2(self) -> Path:
        return self.root.joinpath(*V2)

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.root / STATE_DIR

    @property
    def history(self) -> Path:
        return self.state / "history.jsonl"

    def journal(self, repo: Repository, tag: Tag) -> Path:
        return self.state / "journal" / f"{state_name(repo, tag)}.json"

    def rollback_journal(self, repo: Repository, tag: Tag) -> Path:
        """The journal of the tag's last rollback (beside the patch's, never over it)."""
        return self.state / "journal" / f"{state_name(repo, tag)}.rollback.json"

    def lock(self, repo: Repository) -> Path:
        """The repository's lock lives with the storage it protects, whatever the state
        folder: two runs naming different --state-dir folders still exclude each other.
        The one place that names it; the name is bounded (``state_name``)."""
        return self.root / STATE_DIR / "locks" / f"{state_name(repo)}.lock"

    @property
    def maintenance_lock(self) -> Path:
        """The storage's maintenance gate (``storage.lock.maintenance_window``); its name cannot be a
        repository's (``state_name`` begins with a letter or digit)."""
        return self.root / STATE_DIR / "locks" / "_maintenance.lock"

    @property
    def gc_journal(self) -> Path:
        """What the last ``regpatch gc`` was doing (it decides nothing: the storage does)."""
        return self.state / "journal" / "_gc.json"

    @property
    def gc_config(self) -> Path:
        """The config.yml ``regpatch gc`` hands the registry's garbage-collect when only the storage
        folder is known (regpatch's own file: the operator's config.yml is never edited)."""
        return self.state / "gc" / "config.yml"

    @property
    def reports(self) -> Path:
        """One markdown report per run (what the Prefect artifact shows, for runs without Prefect)."""
        return self.state / "reports"

    def report(self, repo: Repository, tag: Tag, stamp: str) -> Path:
        return self.reports / f"{stamp}-{state_name(repo, tag)}.md"

    @property
    def staging(self) -> Path:
        """Verified blob bytes wait here before they are renamed into place."""
        return self.state / "staging"

    @property
    def scratch(self) -> Path:
        """Blobs regpatch makes itself (a docker save archive's compressed layers) wait here."""
        return self.state / "convert"

    def staged_blob(self, digest: Digest) -> Path:
        return self.staging / f"{digest.algorithm}-{digest.hex}"

    # -- blobs -------------------------------------------------------------
    def blob_dir(self, digest: Digest) -> Path:
        return self.v2 / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex

    def blob_data(self, digest: Digest) -> Path:
        return self.blob_dir(digest) / "data"

    # -- repositories -------------------------------------------------------
    @property
    def repositories(self) -> Path:
        return self.v2 / "repositories"

    def repository(self, repo: Repository) -> Path:
        return self.repositories.joinpath(*repo.parts)

    def layer_link(self, repo: Repository, digest: Digest) -> Path:
        return self.repository(repo) / "_layers" / digest.algorithm / digest.hex / "link"

    def revision_link(self, repo: Repository, digest: Digest) -> Path:
        return (self.repository(repo) / "_manifests" / "revisions" / digest.algorithm
                / digest.hex / "link")

    def tags_dir(self, repo: Repository) -> Path:
        return self.repository(repo) / "_manifests" / "tags"

    def tag_dir(self, repo: Repository, tag: Tag) -> Path:
        return self.tags_dir(repo) / tag.name

    def tag_index_dir(self, repo: Repository, tag: Tag, algorithm: str = "sha256") -> Path:
        """Parent of every ``<hex>/link`` index link of a tag (every digest it was ever set to)."""
        return self.tag_dir(repo, tag) / "index" / algorithm

    def tag_index_link(self, repo: Repository, tag: Tag, digest: Digest) -> Path:
        return self.tag_index_dir(repo, tag, digest.algorithm) / digest.hex / "link"

    def tag_current_link(self, repo: Repository, tag: Tag) -> Path:
        return self.tag_dir(repo, tag) / "current" / "link"

    # -- enumeration (read-only walks, e.g. ``regpatch contents``) -----------
    def blobs_root(self, algorithm: str = "sha256") -> Path:
        """Parent of every ``<hex[0:2]>/<hex>/data`` of one algorithm."""
        return self.v2 / "blobs" / algorithm

    @property
    def repositories_root(self) -> Path:
        return self.v2 / "repositories"

    def revisions_dir(self, repo: Repository, algorithm: str = "sha256") -> Path:
        """Parent of every ``<hex>/link`` revision link of a repository."""
        return self.repository(repo) / "_manifests" / "revisions" / algorithm

    def relative(self, path: Path) -> str:
        """A path as the operator reads it in logs: relative to v2/ when inside."""
        try:
            return str(path.relative_to(self.v2))
        except ValueError:
            return str(path)


REPO_PREFIX = 64   # characters of the repository name kept readable in a state file name
TAG_PREFIX = 32    # characters of the tag kept readable


def state_name(repo: Repository, tag: Optional[Tag] = None) -> str:
    """A file name (without suffix) for a repository, or a repository and tag.

    ``<repo prefix>[@<tag prefix>]~<sha256 of "repo" or "repo:tag">``: the
    prefixes ('/' shown as '+') are for the operator's eyes; the hash of the
    full names makes it unique, so two names sharing a prefix (or differing
    only in case, on a case-insensitive disk) never share a file. At most
    64 + 1 + 32 + 1 + 64 = 162 characters, all ASCII.
    """
    full = repo.name if tag is None else f"{repo.name}:{tag.name}"
    readable = repo.name[:REPO_PREFIX].replace("/", "+")
    if tag is not None:
        readable += "@" + tag.name[:TAG_PREFIX]
    return f"{readable}~{hashlib.sha256(full.encode('ascii')).hexdigest()}"
