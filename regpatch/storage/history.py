"""``history.jsonl``: every tag change regpatch made (time, old -> new, action, source, who, who
asked for it and why), appended durably, read back leniently (a torn or malformed line is
skipped with a warning).

One versioned format, owned here. A line carries its version in ``v``; a line without ``v``
(regpatch 0.1, 0.2) is version 0. The fields are those of ``HistoryEntry``, each with its kind
in its metadata (``since``: the version that added it, with a default so that older lines
still read; ``shown``: its label in the table). Version 2 adds ``requested_by`` and
``reason`` (version 1 is the tag-race branch's ``other``, not known here: a line of any
version reads with the fields this code knows, the others ignored). A line of this version or
older is checked strictly: every field of its kind, the digests valid.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Optional

from regpatch.digest import Digest
from regpatch.errors import RegpatchError, os_errors
from regpatch.hooks import checkpoint
from regpatch.manifest import load_json
from regpatch.reference import Repository, Tag
from regpatch.sanitize import escape_controls
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso

log = logging.getLogger("regpatch.state")

HISTORY_VERSION = 2

TEXT, OPTIONAL_TEXT, DIGEST, OPTIONAL_DIGEST, VERSION = "text", "optional text", "digest", "optional digest", \
    "version"


def _kind(kind: str, *, since: int = 0, shown: Optional[str] = None) -> Any:
    """The metadata of a history field: its kind, the version that added it, its table label."""
    return {"kind": kind, "since": since, "shown": shown}


@dataclass(frozen=True)
class HistoryEntry:
    time: str = field(metadata=_kind(TEXT))
    repository: str = field(metadata=_kind(TEXT))
    tag: str = field(metadata=_kind(TEXT))
    old: Optional[str] = field(metadata=_kind(OPTIONAL_DIGEST))
    new: str = field(metadata=_kind(DIGEST))
    action: str = field(metadata=_kind(TEXT))  # patch | rollback | restore (a move the registry did not serve, undone)
    source: str = field(metadata=_kind(TEXT))
    actor: str = field(metadata=_kind(TEXT))  # the process: user@host pid N [flow-run ID]
    requested_by: Optional[str] = field(default=None, metadata=_kind(OPTIONAL_TEXT, since=2, shown="requested by"))
    reason: Optional[str] = field(default=None, metadata=_kind(OPTIONAL_TEXT, since=2, shown="reason"))
    v: int = field(default=HISTORY_VERSION, metadata=_kind(VERSION, since=1))

    def to_json(self) -> str:
        """The line as written: ``v`` first, then every field (None included, for a reader's ease)."""
        doc = asdict(self)
        return json.dumps({"v": doc.pop("v"), **doc})

    def notes(self) -> str:
        """The fields a table shows with their label (``requested by ana; reason CHG-12``)."""
        return "; ".join(f"{f.metadata['shown']} {getattr(self, f.name)}" for f in fields(self)
                         if f.metadata.get("shown") and getattr(self, f.name) is not None)



def record_history(store, repo: Repository, tag: Tag, old: Optional[Digest], new: Digest, *,
                   action: str, source: str, requested_by: Optional[str] = None,
                   reason: Optional[str] = None) -> HistoryEntry:
    """Append one line to history.jsonl (O_APPEND, fsynced)."""
    entry = HistoryEntry(now_iso(), repo.name, tag.name, str(old) if old else None, str(new), action,
                         source, actor(), requested_by=requested_by or None, reason=reason or None)
    path = store.layout.history
    store.ensure_state_dir(path.parent)
    line = (entry.to_json() + "\n").encode()
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



def _check(f: Field, value: Any) -> None:
    kind = f.metadata["kind"]
    if kind == VERSION:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"'{f.name}' is not a version number")
    elif value is None and kind in (OPTIONAL_DIGEST, OPTIONAL_TEXT):
        return
    elif not isinstance(value, str):
        raise TypeError(f"'{f.name}' is not a string")
    elif kind in (DIGEST, OPTIONAL_DIGEST):
        Digest.parse(value)


def _history_entry(doc: Any) -> HistoryEntry:
    """One history line, checked against the fields this code knows: every field of its kind
    (``old``, ``requested_by``, ``reason`` may be null or absent in older lines), the digests
    valid; anything else raises ValueError or TypeError (or InvalidReference for a digest)."""
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    values: dict[str, Any] = {}
    for f in fields(HistoryEntry):
        if f.name not in doc:
            if f.default is MISSING:
                raise ValueError(f"'{f.name}' is missing")
            if f.name == "v":
                values["v"] = 0  # a line of regpatch 0.2 or older
            continue
        _check(f, doc[f.name])
        values[f.name] = doc[f.name]
    return HistoryEntry(**values)



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
        source = e.source + (f" ({e.notes()})" if e.notes() else "")
        rows.append(tuple(escape_controls(c) for c in (e.time, f"{e.repository}:{e.tag}", e.action,
                                                 (e.old or "(new tag)")[:19], e.new[:19], source, e.actor)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # every column but the last is padded
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)

