"""The one maker of markdown tables for artifacts and summaries, readable on a 1,366 px screen.

Prefect's UI never wraps a table cell, and at 1,366 px an artifact's page leaves a table
about 790 px (its navigation and details panels take the rest): a digest is 71 characters,
and two in a row already push a table out of sight. In a cell a digest is compact
(``1a2b3c4d5e6f…``, its first 12 hex digits, as ``docker images`` shows an image id); every
digest a table compacted is written in full once, in a list under it, so nothing is lost and
a full digest can still be copied (``rollback --to``). A long text (a path, an error) is
shortened in its cell to its start and its end around ``…``, and given in full under the
table too. Every cell is escaped: controls shown, pipes and markup as typed.

    table = CompactTable(("time", "old", "new", "source"))
    table.add(cell(entry.time), table.digest(entry.old), table.digest(entry.new), table.text(entry.source))
    lines += table.lines()
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from regpatch.sanitize import escape_controls

ELLIPSIS = "…"
DIGEST_HEX = 12          # hex digits a compact digest keeps
TEXT_WIDTH = 32          # characters of a cell's text before it is shortened
_DIGEST = re.compile(r"^([a-z0-9]+):([0-9a-f]{32,})$")
_MARKUP = re.compile(r"([\\`*_\[\]<>|])")


def short_digest(value: Optional[str]) -> str:
    """``1a2b3c4d5e6f…`` for ``sha256:1a2b3c4d5e6f...``; anything that is not a digest unchanged."""
    m = _DIGEST.match(value or "")
    return f"{m.group(2)[:DIGEST_HEX]}{ELLIPSIS}" if m else (value or "")


def cell(text: object) -> str:
    """Text as one table cell shows it: controls escaped, pipes and markup as typed."""
    return _MARKUP.sub(r"\\\1", escape_controls(str(text)))


def code(text: object) -> str:
    """Text as a cell shows it in code (a name, a reference): controls escaped, pipes escaped."""
    return "`" + escape_controls(str(text)).replace("|", "\\|") + "`"


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    """At most ``width`` characters: the start and the end (a path's file, an error's advice)."""
    if len(text) <= width:
        return text
    head = (width - 1) * 2 // 5
    return text[:head] + ELLIPSIS + text[len(text) - (width - 1 - head):]


class CompactTable:
    """A markdown table whose cells fit a narrow screen, and the full values under it."""

    def __init__(self, columns: Sequence[str], *, right: Sequence[str] = (), width: int = TEXT_WIDTH) -> None:
        self.columns = list(columns)
        self.right = set(right)      # columns aligned right (numbers)
        self.width = width
        self.rows: list[list[str]] = []
        self.digests: dict[str, str] = {}    # full -> compact, in the order met
        self.texts: list[tuple[str, str]] = []  # (what, full text) of every shortened cell

    def digest(self, value: Optional[str], empty: str = "-") -> str:
        """A digest's cell: compact, in code; listed in full under the table."""
        if not value:
            return empty
        compact = short_digest(value)
        if compact == value:
            return code(value)
        self.digests.setdefault(value, compact)
        return code(compact)

    def text(self, value: object, what: str = "", width: Optional[int] = None) -> str:
        """A text's cell: shortened past ``width`` characters (the full text under the table,
        introduced by ``what``)."""
        raw = escape_controls(str(value))
        short = shorten(raw, width or self.width)
        if short != raw:
            self.texts.append((what, raw))
        return cell(short)

    def detail(self, what: str, text: str) -> None:
        """A line under the table that no cell shows (a row's notes)."""
        self.texts.append((what, escape_controls(text)))

    def add(self, *cells: str) -> None:
        """One row of cells already made by ``digest``, ``text`` or ``cell``."""
        self.rows.append(list(cells))

    def lines(self) -> list[str]:
        """The table, then the full digests and texts it shortened (nothing when it has no rows)."""
        if not self.rows:
            return []
        out = ["| " + " | ".join(self.columns) + " |",
               "|" + "".join("---:|" if c in self.right else "---|" for c in self.columns)]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        details = [f"- {code(compact)} = {code(full)}" for full, compact in self.digests.items()]
        details += [f"- {cell(what) + ': ' if what else ''}{cell(full)}" for what, full in self.texts]
        return out + (["", *details] if details else [])
