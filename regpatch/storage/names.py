"""Names as the storage's filesystem will take them: NTFS and other case-insensitive
filesystems, and the Win32 rules for names.

A repository's components and a tag are folder names of the storage. On a
case-insensitive filesystem (NTFS, exFAT, FAT — or a case-insensitive mount anywhere)
``LTSC2019`` and ``ltsc2019`` are one folder, for regpatch and for the registry alike:
patching one would move the other's tag. On a Windows host, Win32 also drops a trailing
``.`` or space from a path component (``v1.`` is ``v1``) and refuses device names
(``CON``, ``NUL``, ``COM1``... even with an extension: ``nul.txt``). So, before any
write, a name that would land in an existing folder of another spelling is refused,
naming both, and a name Windows cannot create is refused with why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from regpatch import platform
from regpatch.errors import UsageError
from regpatch.reference import Repository, Tag
from regpatch.storage.files import TMP_MARK
from regpatch.storage.layout import Layout

_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in "123456789¹²³"}
_CASE_PROBE = re.compile(r"[A-Za-z]")


def reserved_on_windows(component: str) -> bool:
    """A device name of Windows, whatever the extension or trailing spaces (``nul.txt``)."""
    return component.split(".", 1)[0].rstrip(" ").upper() in _DEVICES


def win32_name(component: str) -> str:
    """What Win32 makes of a path component: trailing dots and spaces dropped."""
    return component.rstrip(". ")


def case_insensitive(folder: Path) -> bool:
    """Whether the filesystem holding ``folder`` (an existing folder with a letter in its
    name) matches names without regard to case: the same name in another case is found,
    and the folder's listing does not hold that other spelling."""
    name = folder.name
    if not _CASE_PROBE.search(name):
        return False
    other = folder.with_name(name.swapcase())
    try:
        return other.exists() and other.name not in os.listdir(folder.parent)
    except OSError:
        return False


def _fold(name: str, *, windows: bool, insensitive: bool) -> str:
    folded = win32_name(name) if windows else name
    return folded.casefold() if insensitive else folded


def _collision(parent: Path, name: str, *, windows: bool, insensitive: bool) -> Optional[str]:
    """An entry of ``parent`` that is the folder ``name`` will land in, under another spelling."""
    if not (windows or insensitive):
        return None
    try:
        entries = os.listdir(parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    want = _fold(name, windows=windows, insensitive=insensitive)
    for entry in sorted(entries):
        if entry != name and _fold(entry, windows=windows, insensitive=insensitive) == want:
            return entry
    return None


def _windows_name_problem(component: str) -> Optional[str]:
    if reserved_on_windows(component):
        return "a device name Windows does not let a folder take"
    if win32_name(component) != component:
        return "Windows drops its trailing dot or space, so it would name another folder"
    return None


MAX_PATH_CHARS = 259  # Win32's MAX_PATH (260) less its terminating NUL
TEMP_NAME_CHARS = len(TMP_MARK) + 10 + 1 + 12  # a temp file beside a link: TMP_MARK, pid, '-', 12 hex


def longest_path(layout: Layout, repo: Repository, tag: Optional[Tag]) -> int:
    """The length of the longest path a patch or rollback of ``repo:tag`` writes: a temp file
    beside the tag's index link (``_manifests/tags/<tag>/index/sha256/<64 hex>/``), or beside a
    revision or layer link of the repository."""
    hexes = "0" * 64
    folders = [layout.repository(repo) / "_manifests" / "revisions" / "sha256" / hexes,
               layout.repository(repo) / "_layers" / "sha256" / hexes]
    if tag is not None:
        folders.append(layout.tags_dir(repo) / tag.name / "index" / "sha256" / hexes)
    return max(len(os.path.abspath(folder)) for folder in folders) + 1 + TEMP_NAME_CHARS


def check_path_length(layout: Layout, repo: Repository, tag: Optional[Tag]) -> None:
    """On a Windows host without long paths (``platform.long_paths()``: the LongPathsEnabled
    policy), refuse before any write a repository and tag whose storage paths would pass
    MAX_PATH: in one line, with the way to enable them."""
    if platform.long_paths():
        return
    longest = longest_path(layout, repo, tag)
    if longest > MAX_PATH_CHARS:
        raise UsageError(f"{repo}{':' + str(tag) if tag else ''} needs storage paths of {longest} characters under "
                         f"{layout.root}, beyond the {MAX_PATH_CHARS} Windows allows while long paths are off: "
                         "enable LongPathsEnabled (docs/windows.md, 'Long paths') or use a shorter name or storage "
                         "root; nothing was written")


def check_names(layout: Layout, repo: Repository, tag: Optional[Tag], *, windows: Optional[bool] = None) -> None:
    """Refuse, before any write, a repository or tag the storage's filesystem would take
    for another one (case-insensitive filesystem, Win32 trailing dots), cannot create
    (Windows device names), or cannot reach (paths beyond MAX_PATH on a Windows host without
    long paths). ``windows``: the host is Windows (default: this host)."""
    windows = platform.is_windows() if windows is None else windows
    check_path_length(layout, repo, tag)
    probe = layout.v2 / "repositories"
    insensitive = probe.is_dir() and case_insensitive(probe)
    parent = layout.v2 / "repositories"
    parts: list[tuple[str, str, Path]] = []
    for component in repo.parts:
        parts.append(("repository", component, parent))
        parent = parent / component
    if tag is not None:
        parts.append(("tag", tag.name, layout.tags_dir(repo)))
    for kind, name, where in parts:
        if windows:
            problem = _windows_name_problem(name)
            if problem:
                raise UsageError(f"{kind} name {name!r} ({repo}{':' + str(tag) if tag else ''}) cannot be "
                                 f"written to this storage: {problem}; choose another name")
        other = _collision(where, name, windows=windows, insensitive=insensitive)
        if other is not None:
            raise UsageError(f"{kind} {name!r} would land in the existing folder {where / other} of the "
                             f"{kind} {other!r}: this storage's filesystem takes them for one name "
                             f"({'case-insensitive' if insensitive else 'Windows drops trailing dots'}); "
                             f"patching {name!r} would move {other!r}: use {other!r} or another name; "
                             "nothing was written")
