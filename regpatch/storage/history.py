"""``history.jsonl``: every tag change regpatch made, one JSON object a line, appended durably,
read back leniently (a torn, malformed or mistyped line is skipped with a warning).

One versioned format, owned here. A line carries its version in ``v`` (1 added ``other``, of a
``raced`` line; 2 added ``requested_by`` and ``reason``, the change request); a line without
``v`` (regpatch 0.1, 0.2) is version 0 and reads with the same rules. The fields are
the fields of ``HistoryEntry``, each with its kind in its metadata; the actions are the keys of
``ACTIONS``. Adding a field is one line in ``HistoryEntry`` (with a default, so older lines
still read; ``since`` = the version that adds it; ``shown`` = its label in the table); adding
an action is one entry of ``ACTIONS``. A line of a newer version keeps the fields and actions
this code knows and ignores the others; a line of this version or older is checked strictly:
every field of its kind, the digests valid, the action known.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Optional

from regpatch import platform
from regpatch.digest import Digest
from regpatch.errors import RegpatchError, os_errors
from regpatch.hooks import checkpoint
from regpatch.manifest import load_json
from regpatch.platform.ownfiles import not_own_kind, read_own_file, refusal_reason, set_aside
from regpatch.reference import Repository, Tag
from regpatch.sanitize import escape_controls, redact
from regpatch.storage.layout import Layout
from regpatch.storage.state import actor, now_iso
from regpatch.tables import CompactTable, cell, code, shorten

log = logging.getLogger("regpatch.state")

HISTORY_VERSION = 2  # 1: other (a raced line); 2: requested_by, reason

# what each action records; the one place an action is added
ACTIONS: dict[str, str] = {
    "patch": "a patch moved the tag from old to new",
    "rollback": "a rollback moved the tag back from old to new (an image the tag held before)",
    "restore": "a patch's own move undone (old -> new) because the registry did not serve the new image",
    "pruned": "regpatch prune unlinked the image old from the repository (its revision link and tag "
              "index entries; the blobs stay until the registry's garbage collection); new: what the tag "
              "held then",
    "raced": "another writer wrote the tag while regpatch moved it from old to new; other: what that "
             "writer wrote; the tag was left as it was found after the move",
}

TEXT, OPTIONAL_TEXT, DIGEST, OPTIONAL_DIGEST, VERSION = "text", "optional text", "digest", "optional digest", \
    "version"


def _kind(kind: str, *, since: int = 0, shown: Optional[str] = None) -> Any:
    """The metadata of a history field: its kind, the version that added it, its table label."""
    return {"kind": kind, "since": since, "shown": shown}
HISTORY_LIMIT = 64 << 20  # about 200,000 tag changes


@dataclass(frozen=True)
class HistoryEntry:
    time: str = field(metadata=_kind(TEXT))
    repository: str = field(metadata=_kind(TEXT))
    tag: str = field(metadata=_kind(TEXT))
    old: Optional[str] = field(metadata=_kind(OPTIONAL_DIGEST))
    new: str = field(metadata=_kind(DIGEST))
    action: str = field(metadata=_kind(TEXT))   # a key of ACTIONS
    source: str = field(metadata=_kind(TEXT))
    actor: str = field(metadata=_kind(TEXT))
    other: Optional[str] = field(default=None, metadata=_kind(OPTIONAL_DIGEST, since=1, shown="other writer"))
    requested_by: Optional[str] = field(default=None, metadata=_kind(OPTIONAL_TEXT, since=2, shown="requested by"))
    reason: Optional[str] = field(default=None, metadata=_kind(OPTIONAL_TEXT, since=2, shown="reason"))
    v: int = field(default=HISTORY_VERSION, metadata=_kind(VERSION, since=1))

    def to_json(self) -> str:
        """The line as written: ``v`` first, then every field (None included, for a reader's ease)."""
        doc = asdict(self)
        return json.dumps({"v": doc.pop("v"), **doc})

    def notes(self) -> str:
        """The fields a table shows with their label (``other writer sha256:...``)."""
        return "; ".join(f"{f.metadata['shown']} {getattr(self, f.name)}" for f in fields(self)
                         if f.metadata.get("shown") and getattr(self, f.name) is not None)

def record_history(store, repo: Repository, tag: Tag, old: Optional[Digest], new: Digest, *,
                   action: str, source: str, other: Optional[Digest] = None, requested_by: Optional[str] = None,
                   reason: Optional[str] = None) -> HistoryEntry:
    """Append one line to history.jsonl (O_APPEND, fsynced). The source never holds a credential."""
    if action not in ACTIONS:
        raise ValueError(f"internal: unknown history action {action!r}")
    entry = HistoryEntry(now_iso(), repo.name, tag.name, str(old) if old else None, str(new), action,
                         redact(source), actor(), other=str(other) if other else None,
                         requested_by=redact(requested_by) if requested_by else None,
                         reason=redact(reason) if reason else None)
    path = store.layout.history
    store.ensure_state_dir(path.parent)
    line = (entry.to_json() + "\n").encode()
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
    try:
        data = read_own_file(layout.history, HISTORY_LIMIT, what="history file")
    except RegpatchError as refused:
        if not not_own_kind(layout.history, HISTORY_LIMIT):
            raise  # its folder cannot be read: say so
        # a FIFO, a link, a folder, a huge file: not the history regpatch writes
        set_aside(layout.history, "history file", refusal_reason(refused, layout.history, "history file"))
        return []
    if data is None:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    entries = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = history_entry(load_json(line.encode(), what=f"{layout.history} line {n}"))
        except (RegpatchError, ValueError, TypeError) as err:
            # a line torn by a crash or a full disk during an append, or not written by
            # regpatch: the others still count
            log.warning("%s line %d is not a history entry (torn by a crash?): %s; skipped", layout.history, n,
                        err)
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
        Digest.parse(value)  # as regpatch writes it: sha256:<64 lowercase hex>


def history_entry(doc: Any) -> HistoryEntry:
    """One history line, checked against the fields of its version: raises ValueError or
    TypeError (or InvalidReference for a bad digest) for anything else."""
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    version = doc.get("v", 0)
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
    if version <= HISTORY_VERSION and values["action"] not in ACTIONS:
        raise ValueError(f"unknown action {values['action']!r}")
    return HistoryEntry(**values)


def previous_digest(layout: Layout, repo: Repository, tag: Tag, current: Optional[Digest]) -> Optional[Digest]:
    """The digest the tag pointed at before it became ``current`` (from history)."""
    for e in reversed(read_history(layout, repo.name, tag.name)):
        if current is not None and e.new == str(current) and e.old:
            return Digest.parse(e.old)
    return None


def pruned_when(layout: Layout, repo: Repository, digest: Digest) -> Optional[HistoryEntry]:
    """The history line that says ``regpatch prune`` unlinked ``digest`` from ``repo``, if any."""
    return next((e for e in reversed(read_history(layout, repo.name))
                 if e.action == "pruned" and e.old == str(digest)), None)


def last_patch(entries: list[HistoryEntry]) -> Optional[HistoryEntry]:
    """The last ``patch`` line of a tag's history (what a plain rollback undoes)."""
    return next((e for e in reversed(entries) if e.action == "patch"), None)


def render_history(entries: list[HistoryEntry]) -> str:
    if not entries:
        return "no tag changes recorded"
    rows: list[tuple[str, ...]] = [("TIME", "REPOSITORY:TAG", "ACTION", "OLD", "NEW", "SOURCE", "BY")]
    for e in entries:
        source = redact(e.source) + (f" ({e.notes()})" if e.notes() else "")
        rows.append(tuple(escape_controls(c) for c in (e.time, f"{e.repository}:{e.tag}", e.action,
                                                 (e.old or "(new tag)")[:19], e.new[:19], source, e.actor)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    # every column but the last is padded
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def render_history_markdown(entries: list[HistoryEntry], heading: str, where: str, limit: int) -> str:
    """The newest ``limit`` entries as markdown, newest first (the artifact history-REGISTRY): digests
    compact in the table and in full under it (``regpatch.tables``), so it fits a 1,366 px screen;
    who asked (else the user@host that ran it) in the table, the source and the notes under it."""
    lines = [f"# {heading}", "", f"{where}: {len(entries)} tag change(s) recorded"
             f"{f', the newest {limit} shown' if len(entries) > limit else ''}.", ""]
    table = CompactTable(("time (UTC)", "repository:tag", "action", "old", "new", "by"))
    for e in reversed(entries[-limit:]):
        time = e.time[:-len("+00:00")].replace("T", " ") if e.time.endswith("+00:00") else e.time
        by = e.requested_by or e.actor.split(" pid ", 1)[0]  # user@host (its pid and flow run: --json)
        table.add(cell(time), code(shorten(f"{e.repository}:{e.tag}", 24)), cell(e.action),
                  table.digest(e.old, "(new tag)"), table.digest(e.new), cell(shorten(by, 16)))
        notes = "; ".join(x for x in (f"source {redact(e.source)}", e.notes()) if x)
        table.detail(f"{time} {e.action} of {e.repository}:{e.tag}", notes)  # in full, under the table
    return "\n".join(lines + table.lines()) + "\n"
