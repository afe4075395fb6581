"""The journal of a tag's last patch, and of its last rollback: what was under way, resumed by the
same command. It tells the operator what happened and what a killed run was doing; it never makes
a step skip work and never says that something is done (the storage decides)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import RegpatchError
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository, Tag
from regpatch.storage.state import now_iso

JOURNAL_LIMIT = 1 << 20  # a journal is a few hundred bytes


@dataclass
class Journal:
    """What the patch of one tag has done so far; survives kills.

    Written atomically after every step, so a re-run (or a Prefect flow-run
    retry) can say what it resumes from. The storage itself stays the source
    of truth: every step checks it again and skips what is already there.
    """
    repository: str
    tag: str
    target: str                      # the manifest digest being applied
    old: Optional[str]
    source: str
    started: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    status: str = "running"          # running | complete | failed | interrupted
    steps: list[str] = field(default_factory=list)
    runs: int = 1
    error: Optional[str] = None
    verified_url: Optional[str] = None  # the registry API whose pull proved ``target``
    kind: str = "patch"              # patch | rollback (a rollback's journal is a file of its own)

    @classmethod
    def load(cls, path: Path) -> Optional["Journal"]:
        """The journal at ``path``; None when there is none or it is not one this code wrote
        (it tells the operator what happened, it never decides anything: nothing is lost)."""
        try:
            data = read_own_file(path, JOURNAL_LIMIT, what="journal")
            return cls(**json.loads(data)) if data is not None else None
        except (RegpatchError, ValueError, TypeError):
            return None

    def save(self, store) -> None:
        self.updated = now_iso()
        repo, tag = Repository(self.repository), Tag(self.tag)
        path = store.layout.rollback_journal(repo, tag) if self.kind == "rollback" else store.layout.journal(repo, tag)
        store.write_file(path, json.dumps(asdict(self), indent=1).encode())

    def mark(self, store, step: str) -> None:
        if step not in self.steps:
            self.steps.append(step)
        self.save(store)


def was_verified(store, repo: Repository, tag: Tag, target: Digest, url: Optional[str]) -> bool:
    """True when the last patch of this tag to ``target`` completed with a verification
    pull that went through the registry API ``url`` (never for a run without a URL)."""
    if not url:
        return False
    j = Journal.load(store.layout.journal(repo, tag))
    return bool(j and j.target == str(target) and j.status == "complete" and j.verified_url == url)


def open_journal(store, repo: Repository, tag: Tag, target: Digest, old: Optional[Digest],
                 source: str) -> tuple[Journal, Optional[Journal]]:
    """The journal for this patch, and the earlier unfinished one it resumes (if any)."""
    path = store.layout.journal(repo, tag)
    previous = Journal.load(path)
    if previous and previous.target == str(target) and previous.status in ("running", "failed", "interrupted"):
        previous.runs += 1
        previous.status, previous.error, previous.verified_url = "running", None, None
        previous.save(store)
        return previous, previous
    j = Journal(repo.name, tag.name, str(target), str(old) if old else None, source)
    j.save(store)
    return j, None

