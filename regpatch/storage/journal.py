"""The journal of a tag's last patch, and of its last rollback: what was under way, resumed by the
same command. It tells the operator what happened and what a killed run was doing; it never makes
a step skip work and never says that something is done (the storage decides)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import RegpatchError
from regpatch.platform.ownfiles import not_own_kind, read_own_file, refusal_reason, set_aside
from regpatch.reference import Repository, Tag
from regpatch.storage.state import now_iso

log = logging.getLogger("regpatch.journal")

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
        """The journal at ``path``; None when there is none. One that is not a journal this code
        wrote (not a small regular file, not JSON, a field missing or of another type) is set aside
        with a warning (renamed, never deleted) and None returned: it tells the operator what
        happened, it never decides anything, so nothing is lost."""
        journal: Optional[Journal] = None
        try:
            data = read_own_file(path, JOURNAL_LIMIT, what="journal")
            if data is None:
                return None
            doc = json.loads(data)
            journal = cls(**doc) if isinstance(doc, dict) else None
            why = journal._invalid() if journal is not None else "not a JSON object"
        except RegpatchError as e:
            if not not_own_kind(path, JOURNAL_LIMIT):
                log.warning("%s; going on without it", e)  # its folder cannot be read: nothing to set aside
                return None
            why = refusal_reason(e, path, "journal")
        except (ValueError, TypeError) as e:
            why = f"not a journal: {str(e)[:120]}"
        if why is None:
            return journal
        set_aside(path, "journal", why)
        return None

    def _invalid(self) -> Optional[str]:
        """Why this journal is not one regpatch wrote (a field of another type), or None."""
        for name in ("repository", "tag", "target", "source", "started", "updated", "status", "kind"):
            if not isinstance(getattr(self, name), str):
                return f"its field {name!r} is not a string"
        for name in ("old", "error", "verified_url"):
            if not isinstance(getattr(self, name), (str, type(None))):
                return f"its field {name!r} is not a string or null"
        if not (isinstance(self.steps, list) and all(isinstance(step, str) for step in self.steps)):
            return "its field 'steps' is not a list of strings"
        if not isinstance(self.runs, int) or isinstance(self.runs, bool) or self.runs < 1:
            return "its field 'runs' is not a positive number"
        try:
            Digest.parse(self.target)
            if self.old is not None:
                Digest.parse(self.old)
        except RegpatchError:
            return "its digests are not sha256:<64 hex>"
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

