"""regpatch's own state, kept outside ``docker/`` (the registry never reads it).

    <root>/.regpatch/locks/<repo>.lock one patch or rollback per repository at a time
    <state>/journal/<repo>@<tag>.json  what the last patch of that tag has done so far
    <state>/history.jsonl              every tag change: who, when, old -> new, from what
    <state>/reports/<time>-<repo>@<tag>.md  the summary of each run

The state folder defaults to ``<rootdirectory>/.regpatch``; the locks stay under the
storage root whatever the state folder is (docs/architecture.md, "The state folder").
"""

from __future__ import annotations

import getpass
import logging
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from . import interrupt
from .digest import Digest
from .errors import LockTimeout, RegpatchError, os_errors
from .manifest import load_json
from .faults import checkpoint
from .layout import Layout
from .reference import Repository, Tag
from .sanitize import escape_controls

log = logging.getLogger("regpatch.state")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor() -> str:
    """Who/what is running: user@host pid, and the Prefect flow run when there is one."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    who = f"{user}@{socket.gethostname()} pid {os.getpid()}"
    run = os.environ.get("PREFECT__FLOW_RUN_ID")
    return who + (f" flow-run {run}" if run else "")


# -- lock ----------------------------------------------------------------------

def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def repository_lock(layout: Layout, repo: Repository, *, timeout: float = 300.0,
                    on_wait=None) -> Iterator[None]:
    """Hold the repository's lock; wait up to ``timeout`` seconds for it.

    An OS file lock (flock / msvcrt.locking): released by the OS when the
    holder dies, so a killed patch never leaves a stale lock behind.
    """
    path = layout.lock(repo)
    with os_errors("creating the repository lock", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay, warned = 0.05, False
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = _read_holder(path)
                raise LockTimeout(f"repository {repo} is being patched by another run ({holder}); "
                                  f"waited {timeout:.0f}s; try again later or raise --lock-timeout")
            if on_wait and not warned:
                on_wait(_read_holder(path))
                warned = True
            interrupt.sleep(delay)
            delay = min(delay * 2, 1.0)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{actor()} since {now_iso()}".encode())
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "holder unknown"
    except OSError:
        return "holder unknown"


# -- journal -------------------------------------------------------------------

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

    @classmethod
    def load(cls, path: Path) -> Optional["Journal"]:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, store) -> None:
        self.updated = now_iso()
        path = store.layout.journal(Repository(self.repository), Tag(self.tag))
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


# -- history -------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryEntry:
    time: str
    repository: str
    tag: str
    old: Optional[str]
    new: str
    action: str          # patch | rollback | restore (a move the registry did not serve, undone)
    source: str
    actor: str


def record_history(store, repo: Repository, tag: Tag, old: Optional[Digest], new: Digest, *,
                   action: str, source: str) -> HistoryEntry:
    """Append one line to history.jsonl (O_APPEND, fsynced)."""
    entry = HistoryEntry(now_iso(), repo.name, tag.name, str(old) if old else None, str(new), action,
                         source, actor())
    path = store.layout.history
    store.ensure_state_dir(path.parent)
    line = (json.dumps(asdict(entry)) + "\n").encode()
    with os_errors("appending to", path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line  # the last line was torn: never continue it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    checkpoint("history")
    return entry


def read_history(layout: Layout, repository: Optional[str] = None,
                 tag: Optional[str] = None) -> list[HistoryEntry]:
    try:
        lines = layout.history.read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = _history_entry(load_json(line.encode(), what=f"{layout.history} line {n}"))
        except (RegpatchError, ValueError, TypeError):
            # a line torn by a crash or a full disk during an append, or not written by
            # regpatch: the others still count
            log.warning("%s line %d is not a history entry (torn by a crash?); skipped", layout.history, n)
            continue
        if (repository is None or e.repository == repository) and (tag is None or e.tag == tag):
            entries.append(e)
    return entries


def _history_entry(doc) -> HistoryEntry:
    """One history line, checked the way this code writes it: every field a string (``old``
    may be null), the digests valid; anything else raises ValueError or TypeError."""
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    e = HistoryEntry(**doc)
    if not all(isinstance(v, str) for k, v in asdict(e).items() if k != "old") or not isinstance(e.old, (str, type(None))):
        raise TypeError("a field is not a string")
    Digest.parse(e.new)
    if e.old is not None:
        Digest.parse(e.old)
    return e


def previous_digest(layout: Layout, repo: Repository, tag: Tag, current: Optional[Digest]) -> Optional[Digest]:
    """The digest the tag pointed at before it became ``current`` (from history)."""
    for e in reversed(read_history(layout, repo.name, tag.name)):
        if current is not None and e.new == str(current) and e.old:
            return Digest.parse(e.old)
    return None


def render_history(entries: list[HistoryEntry]) -> str:
    if not entries:
        return "no tag changes recorded"
    rows = [("TIME", "REPOSITORY:TAG", "ACTION", "OLD", "NEW", "SOURCE", "BY")]
    for e in entries:
        rows.append(tuple(escape_controls(c) for c in (e.time, f"{e.repository}:{e.tag}", e.action,
                                                 (e.old or "(new tag)")[:19], e.new[:19], e.source, e.actor)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)
