"""The fleet at a glance: is every registry of the inventory on this month's image?

``fleet_status`` reads, for each registry of an inventory and a repository:tag: the
digest the tag has in the storage (readable from here), the digest the registry's API
serves, the digest of the latest rollout of that tag (the rollout state folder beside
the inventory), the last change the storage's history records, whether the last patch of
that digest was verified by a pull, and the disk used and free under the storage. Each
registry gets one state:

    current      storage and API serve the latest rollout's image (or agree, without one)
    behind       the tag serves another image than the latest rollout's
    drift        the storage and the API disagree (another storage, a push, a stale cache)
    unreadable   neither the storage nor the API could be read from here

Reads only. ``regpatch status`` prints the table and exits non-zero when a registry is
not ``current``; the ``fleet-status`` flow publishes the same table as an artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import FleetDrift, RegpatchError, UsageError
from regpatch.fleet.inventory import RegistryEntry, load_inventory
from regpatch.fleet.rollout import RolloutState
from regpatch.options import opt
from regpatch.progress import human
from regpatch.reference import Repository, Tag
from regpatch.sanitize import shown
from regpatch.storage.history import read_history
from regpatch.storage.journal import was_verified
from regpatch.storage.store import RegistryStore
from regpatch.tables import CompactTable, cell, code, shorten

log = logging.getLogger("regpatch.fleet")

CURRENT, BEHIND, DRIFT, UNREADABLE = "current", "behind", "drift", "unreadable"


@dataclass
class RegistryStatus:
    name: str
    group: str
    where: str
    repository: str
    tag: str
    state: str = UNREADABLE
    storage_digest: Optional[str] = None
    served_digest: Optional[str] = None
    rollout_digest: Optional[str] = None
    last_change: Optional[str] = None      # "TIME ACTION by ACTOR"
    verified: Optional[bool] = None
    disk_used: Optional[int] = None
    disk_free: Optional[int] = None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def latest_rollout_digest(state_dir: Path, repository: str, tag: str) -> Optional[str]:
    """The digest of the newest rollout of ``repository:tag`` whose state file is in
    ``state_dir`` (files of other tags, unreadable or not regpatch's are passed over)."""
    newest: tuple[float, Optional[str]] = (-1.0, None)
    try:
        candidates = [p for p in Path(state_dir).glob("rollout-*.json") if p.is_file() and not p.is_symlink()]
    except OSError:
        return None
    for path in candidates:
        doc = RolloutState.load_doc(path)
        if not doc or doc.get("repository") != repository or doc.get("tag") != tag:
            continue
        mtime = path.stat().st_mtime
        if mtime > newest[0] and isinstance(doc.get("digest"), str):
            newest = (mtime, doc["digest"])
    return newest[1]


def _storage_part(status: RegistryStatus, entry: RegistryEntry, repo: Repository, tag: Tag,
                  url: Optional[str]) -> None:
    try:
        store = RegistryStore(entry.storage)
        if not store.layout.v2.is_dir():
            status.problems += (f"storage {shown(entry.storage)} not readable here" +
                                (f" (on work pool {entry.work_pool})" if entry.work_pool else ""),)
            return
        held = store.current_tag(repo, tag)
        status.storage_digest = str(held) if held else None
        history = read_history(store.layout, repo.name, tag.name)
        if history:
            last = history[-1]
            status.last_change = f"{last.time} {last.action} by {last.actor}"
        status.verified = bool(held and was_verified(store, repo, tag, held, url))
        usage = shutil.disk_usage(entry.storage)
        status.disk_used, status.disk_free = usage.used, usage.free
    except (RegpatchError, OSError) as e:
        status.problems += (f"storage: {shown(str(e), 300)}",)


def _api_part(status: RegistryStatus, entry: RegistryEntry, repo: Repository, tag: Tag) -> None:
    try:
        target = entry.registry_params().target()
        if not target.url:
            return
        with target.client() as client:
            status.served_digest = str(client.tag_digest(repo, tag))
    except RegpatchError as e:
        status.problems += (f"API: {shown(str(e), 300)}",)


def _state(status: RegistryStatus) -> str:
    seen = [d for d in (status.storage_digest, status.served_digest) if d]
    if not seen:
        return UNREADABLE
    if status.storage_digest and status.served_digest and status.storage_digest != status.served_digest:
        return DRIFT
    if status.rollout_digest and seen[0] != status.rollout_digest:
        return BEHIND
    return CURRENT


def registry_status(entry: RegistryEntry, repository: str, tag: str, rollout_digest: Optional[str]) -> RegistryStatus:
    repo, tg = Repository.parse(repository), Tag.parse(tag)
    status = RegistryStatus(entry.name, entry.wave, entry.where, repository, tag, rollout_digest=rollout_digest)
    url = entry.registry_url
    _storage_part(status, entry, repo, tg, url)
    _api_part(status, entry, repo, tg)
    status.state = _state(status)
    return status


def fleet_status(entries: list[RegistryEntry], repository: str, tag: str,
                 state_dir: Path) -> list[RegistryStatus]:
    """One row per registry, in inventory order."""
    rollout = latest_rollout_digest(state_dir, repository, tag)
    return [registry_status(e, repository, tag, rollout) for e in entries]


def _short(digest: Optional[str]) -> str:
    return Digest.parse(digest).short if digest else "-"


def render_table(rows: list[RegistryStatus]) -> str:
    head = ("registry", "state", "storage", "API", "rollout", "verified", "disk used/free", "last change")
    lines = [head]
    for r in rows:
        disk = f"{human(r.disk_used)}/{human(r.disk_free)}" if r.disk_used is not None and r.disk_free is not None \
            else "-"
        verified = "-" if r.verified is None else ("yes" if r.verified else "no")
        lines.append((r.name, r.state, _short(r.storage_digest), _short(r.served_digest), _short(r.rollout_digest),
                      verified, disk, shown(r.last_change or "-", 80)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    for r in rows:
        out += [f"{r.name}: {p}" for p in r.problems]
    return "\n".join(out) + "\n"


def render_markdown(rows: list[RegistryStatus], title: str) -> str:
    """The fleet-status artifact: a table per repository:tag, one row per registry (``regpatch.tables``:
    compact digests, the full ones and each registry's last change under the table), then every
    problem."""
    lines = [f"# {title}"]
    for ref in dict.fromkeys(f"{r.repository}:{r.tag}" for r in rows):
        table = CompactTable(("registry", "state", "storage", "API", "rollout", "verified", "disk used / free"))
        for r in rows:
            if f"{r.repository}:{r.tag}" != ref:
                continue
            disk = f"{human(r.disk_used)} / {human(r.disk_free)}" if r.disk_used is not None \
                and r.disk_free is not None else "-"
            verified = "-" if r.verified is None else ("yes" if r.verified else "no")
            table.add(cell(shorten(r.name, 24)), f"**{r.state}**", table.digest(r.storage_digest),
                      table.digest(r.served_digest), table.digest(r.rollout_digest), verified, disk)
            if r.last_change:
                table.detail(f"{r.name} last change", r.last_change)
        lines += ["", f"## {code(ref)}", "", *table.lines()]
    problems = [f"- {cell(r.name)}: {cell(p)}" for r in rows for p in r.problems]
    return "\n".join(lines + ([""] + problems if problems else [])) + "\n"


def to_json(rows: list[RegistryStatus]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)


def healthy(rows: list[RegistryStatus]) -> bool:
    return all(r.state == CURRENT for r in rows)


def default_tags(state_dir: Path) -> list[tuple[str, str]]:
    """The repository:tag pairs the rollouts of this inventory wrote state for (newest first)."""
    found: dict[tuple[str, str], float] = {}
    try:
        paths = [p for p in Path(state_dir).glob("rollout-*.json") if p.is_file() and not p.is_symlink()]
    except OSError:
        return []
    for path in paths:
        doc = RolloutState.load_doc(path)
        if doc and isinstance(doc.get("repository"), str) and isinstance(doc.get("tag"), str):
            key = (doc["repository"], doc["tag"])
            found[key] = max(found.get(key, -1.0), os.path.getmtime(path))
    return [k for k, _ in sorted(found.items(), key=lambda kv: -kv[1])]


def status_rows(inventory: Optional[str], only: Optional[list[str]], state_dir: Optional[str],
                repository: Optional[str], tag: Optional[str]) -> list[RegistryStatus]:
    """The rows of ``regpatch status`` and of the fleet-status flow: every selected registry for
    ``repository:tag``, or for every repository:tag the rollouts wrote state for."""
    if not inventory:
        raise UsageError(f"the fleet's status reads an inventory file: give {opt.inventory}")
    entries = load_inventory(inventory).select(only)
    folder = Path(state_dir) if state_dir else RolloutState.default_dir(Path(inventory))
    if bool(repository) != bool(tag):
        raise UsageError("give the repository and the tag together (or neither: the tags the rollouts wrote "
                         "state for)")
    if repository and tag:
        Repository.parse(repository), Tag.parse(tag)
        pairs = [(repository, tag)]
    else:
        pairs = default_tags(folder)
        if not pairs:
            raise UsageError(f"no rollout state in {folder}: give the repository and the tag")
    return [row for repo, tg in pairs for row in fleet_status(entries, repo, tg, folder)]


def drift(rows: list[RegistryStatus]) -> Optional[FleetDrift]:
    """The error of a fleet that is not current (exit 7), or None."""
    bad = [r for r in rows if r.state != CURRENT]
    if not bad:
        return None
    return FleetDrift(f"{len(bad)} of {len(rows)} registries are not current: "
                      + ", ".join(f"{r.name} ({r.repository}:{r.tag} {r.state})" for r in bad))
