"""The compare-and-swap of a tag's ``current/link``, as strong as a filesystem allows.

A filesystem has no atomic compare-and-swap of a file's content. Registry 2.8 writes a tag
(``tagStore.Tag``) in this order: the tag's index link ``index/sha256/<hex>/link``, then
``current/link``, each with ``PutContent``, which opens the existing file, truncates it and
writes it IN PLACE (no temp file, no rename; distribution 3 writes a temp file and renames it).
So a push of the tag that lands while regpatch moves it can show itself in three ways, and
``TagSwap`` watches all three:

1. its index link appears or is rewritten (a new entry, or a changed inode, size, mtime or
   ctime) before its ``current/link`` write, which comes microseconds later;
2. its ``current/link`` write lands in place in the inode regpatch read, which regpatch keeps
   open from the read to the end (so even a write into the inode the swap displaced is seen);
3. a writer that renames (distribution 3, another tool) replaces the inode regpatch read.

The protocol (``read``, then ``swap``):

* read: open ``current/link`` and keep it open; remember its bytes and identity (inode, size,
  mtime, ctime) and every index entry's identity. An index link newer than ``current/link``
  and younger than ``PENDING_WINDOW`` is a push in flight: wait until ``current/link`` changes
  (then the caller sees the other writer's digest and refuses, nothing written) or the window
  passes (a push that died half-way);
* swap: write the new link to a temp file beside ``current/link`` (fsynced); check again that
  nothing changed since the read (else: nothing is written, the caller refuses); then swap the
  two names atomically with ``renameat2(RENAME_EXCHANGE)`` (Linux; for a new tag
  ``RENAME_NOREPLACE``, or ``link()`` elsewhere), so that the file displaced is exactly the
  one that was current at that instant, and check it is the inode and bytes that were read;
  where the exchange is not available, a plain replace. After the swap, and again
  ``SETTLE`` later: the displaced inode unchanged, ``current/link`` still the temp file's
  inode holding the new digest, no index entry new or changed. Anything else is an
  ``Interference``: the caller records it and stops, and never moves the tag again itself.

What remains (stated, not hidden): a writer that does not write an index link (a person
editing the file by hand) and that had opened the old ``current/link`` before the swap but
writes it only after the last check (``SETTLE`` after the swap) writes into the displaced
file, which is then gone; a rename-style writer without an index link, on a filesystem
without ``RENAME_EXCHANGE`` (NFS), between the last check and the rename. The registry always
writes the index link first, so every push of a registry is seen (measured in
``tests/e2e/test_tag_race.py``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from regpatch import interrupt, platform
from regpatch.digest import Digest
from regpatch.errors import os_errors
from regpatch.hooks import checkpoint, hook_point
from regpatch.reference import Repository, Tag
from regpatch.storage.files import fsync_dir
from regpatch.storage.store import LINK_RE

log = logging.getLogger("regpatch.store")

PENDING_WINDOW = 2.0     # s: an index link this young and newer than current/link is a push in flight
SETTLE = 0.02            # s: the post-swap check runs again this much later (an in-place write in flight)
POLL = 0.005             # s: how often a push in flight is looked at
MAX_INDEX_ENTRIES = 100_000
READ_LIMIT = 1024        # a link is 71 bytes

@dataclass(frozen=True)
class FileId:
    """What identifies one state of a file: a rewrite in place changes size, mtime or ctime,
    a rename changes the inode."""
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileId":
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_at_start(fd: int) -> bytes:
    """A link's bytes through a descriptor, from the start."""
    return platform.pread(fd, READ_LIMIT + 1, 0)


def parse_link(raw: Optional[bytes]) -> Optional[Digest]:
    """The digest of a link's bytes, read as strictly as ``RegistryStore.read_link``; None for
    no file or bytes that are not exactly a link (the plan has warned about those)."""
    m = LINK_RE.fullmatch(raw) if raw is not None else None
    return Digest("sha256", m.group(1).decode("ascii")) if m else None


@dataclass(frozen=True)
class Interference:
    """What another writer did to the tag while it was swapped: the digests it wrote or
    pushed in the window (empty: it wrote something that is not a digest), what
    ``current/link`` holds now, and what was seen (for the log)."""
    others: tuple[Digest, ...]
    holds: Optional[Digest]
    seen: str


@dataclass(frozen=True)
class SwapOutcome:
    moved: bool                               # the new link was put in place
    found: Optional[Digest] = None            # not moved: what the tag holds (another writer moved it)
    interference: Optional[Interference] = None


class TagSwap:
    """One compare-and-swap of ``repo:tag``'s ``current/link`` (module docstring). Use as a
    context manager: ``read()``, compare, then ``swap(to)``."""

    def __init__(self, store, repo: Repository, tag: Tag):
        layout = store.layout
        self.store = store
        self.current = layout.tag_current_link(repo, tag)
        self.index = layout.tag_index_dir(repo, tag)
        store.check_paths([self.current, self.index])
        self._fd: Optional[int] = None
        self._raw: Optional[bytes] = None
        self._id: Optional[FileId] = None
        self._entries: dict[str, Optional[FileId]] = {}
        self._ignore: frozenset[str] = frozenset()

    def __enter__(self) -> "TagSwap":
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading -----------------------------------------------------------------------
    def _open(self) -> None:
        """Open (and on POSIX keep open) current/link; remember its bytes and identity."""
        self._close()
        with os_errors("reading", self.current):
            try:
                fd = platform.open_nofollow(self.current, os.O_RDONLY)
            except FileNotFoundError:
                self._raw, self._id = None, None
                return
            try:
                self._raw, self._id = _read_at_start(fd), FileId.of(os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
        if platform.can_hold_while_replacing():  # (Windows: a file held open cannot be replaced)
            self._fd = fd
        else:
            os.close(fd)

    def _index_entries(self) -> dict[str, Optional[FileId]]:
        """Every index entry of the tag (its hex) -> its link's identity (None: no link yet)."""
        entries: dict[str, Optional[FileId]] = {}
        with os_errors("listing", self.index):
            try:
                scan = list(os.scandir(self.index))
            except (FileNotFoundError, NotADirectoryError):
                return entries
            for e in scan[:MAX_INDEX_ENTRIES]:
                try:
                    entries[e.name] = FileId.of(os.stat(os.path.join(e.path, "link"), follow_symlinks=False))
                except (FileNotFoundError, NotADirectoryError):
                    entries[e.name] = None
        return entries

    def _path_id(self) -> Optional[FileId]:
        with os_errors("reading", self.current):
            try:
                return FileId.of(os.stat(self.current, follow_symlinks=False))
            except FileNotFoundError:
                return None

    def read(self, ignore: Iterable[Optional[Digest]] = ()) -> Optional[Digest]:
        """What the tag holds (None: no tag, or a link that is not a digest), after waiting out
        a push in flight. ``ignore``: digests whose index links do not count as another writer's
        (the one regpatch writes, the one it expects)."""
        self._ignore = frozenset(d.hex for d in ignore if d is not None)
        for _ in range(3):
            self._open()
            self._entries = self._index_entries()
            if not self._wait_for_push_in_flight():
                break
        return parse_link(self._raw)

    def _wait_for_push_in_flight(self) -> bool:
        """True when a push that had written its index link but not yet ``current/link`` did
        write it while this waited (read again); False when none was in flight, or it never
        wrote ``current/link`` within ``PENDING_WINDOW`` (it died half-way)."""
        since = self._id.mtime_ns if self._id else 0
        now = time.time_ns()
        window = int(PENDING_WINDOW * 1e9)
        young = [fid.mtime_ns for name, fid in self._entries.items()
                 if fid is not None and name not in self._ignore and fid.mtime_ns > since
                 and now - fid.mtime_ns < window]
        if not young:
            return False
        return self._current_changes_within((min(young) + window - now) / 1e9)

    def _current_changes_within(self, seconds: float) -> bool:
        """Wait (interruptibly, before anything is written) until current/link changes: True,
        or ``seconds`` pass: False."""
        log.info("tag %s: its index holds a link newer than its current link (a push in flight?): waiting "
                 "up to %.1fs for the push to finish", self.current.parent.parent.name, seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._path_id() != self._id:
                return True
            interrupt.sleep(POLL)
        return False

    # -- swapping ----------------------------------------------------------------------
    def _changed_since_read(self) -> Optional[str]:
        """What changed in current/link since ``read`` (None: nothing)."""
        if self._path_id() != self._id:
            return "current/link was rewritten or replaced"
        if self._fd is not None and _read_at_start(self._fd) != self._raw:
            return "current/link was written in place"
        return None

    def swap(self, to: Digest) -> SwapOutcome:
        """Put ``to`` in current/link if it still holds what ``read`` saw (module docstring)."""
        tmp = self.store.write_temp(self.current, str(to).encode("ascii"))
        displaced: Optional[Path] = None
        try:
            if self._changed_since_read():
                return SwapOutcome(False, found=self._settled_holds())
            if self._changed_entries():  # a push wrote its index link since the read: let it finish
                if self._current_changes_within(PENDING_WINDOW):
                    return SwapOutcome(False, found=self._settled_holds())
                self._entries = self._index_entries()  # it died half-way: its index link moves nothing
            hook_point("tag-flip:swap")
            with os_errors("moving the tag of", self.current):
                ours = FileId.of(os.stat(tmp))
                moved, displaced = self._put_in_place(tmp)
            if not moved:
                return SwapOutcome(False, found=self._settled_holds())
            fsync_dir(self.current.parent)
            checkpoint("wrote link")  # the commit point (the crash test kills here too)
            hook_point("tag-flip:swapped")
            seen = self._after_swap(to, ours, displaced)
            if seen is None:
                time.sleep(SETTLE)  # a write already under way when the name moved lands now
                seen = self._after_swap(to, ours, displaced)
            if seen is None:
                return SwapOutcome(True)
            return SwapOutcome(True, interference=self._interference(to, displaced, seen))
        finally:
            self.store.discard_temp(tmp)  # the displaced link (exchanged), or a temp never moved

    def _put_in_place(self, tmp: Path) -> tuple[bool, Optional[Path]]:
        """(moved, the temp name that now holds the displaced link, if exchanged)."""
        if self._id is not None:
            try:
                if platform.exchange(tmp, self.current):
                    return True, tmp
            except FileNotFoundError:
                return False, None  # current/link was deleted meanwhile (the tag untagged)
            platform.replace(tmp, self.current)
            return True, None
        try:  # a new tag: never over a current/link another writer just created
            platform.create_new(tmp, self.current)
        except FileExistsError:
            return False, None
        return True, None

    def _changed_entries(self) -> list[str]:
        now = self._index_entries()
        return sorted(name for name, fid in now.items()
                      if name not in self._ignore and (name not in self._entries or self._entries[name] != fid))

    def _after_swap(self, to: Digest, ours: FileId, displaced: Optional[Path]) -> Optional[str]:
        """What another writer did since ``read`` (None: nothing): module docstring, after the swap."""
        with os_errors("checking", self.current):
            if displaced is not None:
                st = os.stat(displaced, follow_symlinks=False)
                if st.st_ino != (self._id.ino if self._id else None):
                    return "current/link had been replaced by another writer just before the swap"
            if self._fd is not None and _read_at_start(self._fd) != self._raw:
                return "the link regpatch replaced was written in place by another writer"
            now = self._path_id()
            if now is None or now.ino != ours.ino or self._read_current() != str(to).encode("ascii"):
                return "current/link was written by another writer after the swap"
            changed = self._changed_entries()
            if changed:
                return f"another writer wrote the tag's index link of sha256:{changed[0][:12]}... meanwhile"
        return None

    def _read_current(self) -> Optional[bytes]:
        try:
            with open(self.current, "rb") as f:
                return f.read(READ_LIMIT + 1)
        except FileNotFoundError:
            return None

    def _settled_holds(self) -> Optional[Digest]:
        """What current/link holds once a write under way has landed."""
        time.sleep(SETTLE)
        with os_errors("reading", self.current):
            return parse_link(self._read_current())

    def _interference(self, to: Digest, displaced: Optional[Path], seen: str) -> Interference:
        """Who wrote what: the digest the tag holds if not ours, what the displaced link and
        the inode read hold if they changed, and the index entries written meanwhile."""
        holds = self._settled_holds()
        before = parse_link(self._raw)
        candidates: list[Optional[Digest]] = [holds]
        with os_errors("checking", self.current):
            if displaced is not None:
                with open(displaced, "rb") as f:
                    raw = f.read(READ_LIMIT + 1)
                candidates.append(parse_link(raw) if raw != self._raw else None)
            if self._fd is not None:
                raw = _read_at_start(self._fd)
                candidates.append(parse_link(raw) if raw != self._raw else None)
            candidates += [parse_link(f"sha256:{h}".encode("ascii", "replace")) for h in self._changed_entries()]
        others: list[Digest] = []
        for d in candidates:
            if d is not None and d != to and d not in others:
                others.append(d)
        if not others and before is not None and holds == before:
            others.append(before)  # the same digest written again over regpatch's move
        return Interference(tuple(others), holds, seen)
