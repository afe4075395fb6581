"""``history.jsonl``: every tag change regpatch made (time, old -> new, action, source, who), appended
durably, read back leniently (a torn or malformed line is skipped with a warning)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional

from regpatch import platform
from regpatch.digest import Digest
from regpatch.errors import RegpatchError, os_errors
from regpatch.hooks import checkpoint
from regpatch.manifest import load_json
from regpatch.platform.ownfiles import read_own_file
from regpatch.reference import Repository, Tag
from regpatch.sanitize import escape_controls
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso

log = logging.getLogger("regpatch.state")

HISTORY_LIMIT = 64 << 20  # about 200,000 tag changes


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
        fd = platform.open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and platform.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line  # the last line was torn: never continue it
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    checkpoint("history")
    return entry



def read_history(layout: Layout, repository: Optional[str] = None,
                 tag: Optional[str] = None) -> list[HistoryEntry]:
    data = read_own_file(layout.history, HISTORY_LIMIT, what="history file")
    if data is None:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
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
    texts = all(isinstance(v, str) for k, v in asdict(e).items() if k != "old")
    if not texts or not isinstance(e.old, (str, type(None))):
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
    rows: list[tuple[str, ...]] = [("TIME", "REPOSITORY:TAG", "ACTION", "OLD", "NEW", "SOURCE", "BY")]
    for e in entries:
        rows.append(tuple(escape_controls(c) for c in (e.time, f"{e.repository}:{e.tag}", e.action,
                                                 (e.old or "(new tag)")[:19], e.new[:19], e.source, e.actor)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # every column but the last is padded
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)

