"""What a run did: ``PatchResult`` and ``RollbackResult``, their one-line summary and their markdown
report (the same text on the command line, in the state folder and as the Prefect artifact)."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

from regpatch.errors import RegpatchError
from regpatch.progress import human
from regpatch.reference import Repository, Tag
from regpatch.sanitize import redact
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")


@dataclass
class PatchResult:
    repository: str
    tag: str
    old: Optional[str]
    new: str
    dry_run: bool
    changed: bool = False
    registry: str = ""                # the storage root (and URL) the run patched
    blobs_copied: list[tuple[str, int]] = field(default_factory=list)
    blobs_skipped: list[tuple[str, int]] = field(default_factory=list)
    links_written: list[str] = field(default_factory=list)
    verified: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    plan_text: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    status: str = "running"           # complete | failed | interrupted | dry-run
    tag_moved: bool = False           # current/link now names ``new`` (set by publish-tag)
    notes: list[str] = field(default_factory=list)  # what the bundle reader says (a conversion: the new digest)
    report_path: Optional[str] = None
    fetches: list[dict] = field(default_factory=list)  # per blob fetched from S3
    bundle_trust: Optional[str] = None  # what check_bundle established (signature, listing, base)
    requested_by: Optional[str] = None  # who asked for the change, and why (ChangeParams)
    reason: Optional[str] = None

    @property
    def bytes_copied(self) -> int:
        return sum(s for _, s in self.blobs_copied)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        if self.dry_run:
            return "dry run: nothing was written"
        if self.error:
            return redact(f"failed: {self.repository}:{self.tag}: {self.error}")
        if not self.changed:
            return f"{self.repository}:{self.tag} already at {self.new}: nothing to do"
        return (f"patched {self.repository}:{self.tag}: {self.old or '(new tag)'} -> {self.new}; "
                f"{len(self.blobs_copied)} blobs copied ({self.bytes_copied:,} B), "
                f"{len(self.blobs_skipped)} skipped, {len(self.links_written)} links written")

    def markdown(self) -> str:
        return redact(render_patch_markdown(self))


@dataclass
class RollbackResult:
    repository: str
    tag: str
    old: Optional[str]
    new: str
    changed: bool
    registry: str = ""
    verified: Optional[str] = None
    seconds: dict[str, float] = field(default_factory=dict)
    note: Optional[str] = None        # why nothing was done (the tag already holds the image)
    report_path: Optional[str] = None
    requested_by: Optional[str] = None
    reason: Optional[str] = None

    def summary_line(self) -> str:
        if self.note:
            return redact(self.note)
        verb = "rolled back" if self.changed else "already at"
        return f"{verb} {self.repository}:{self.tag}: {self.old or '(no tag)'} -> {self.new}"

    def markdown(self) -> str:
        verification = self.verified or ("not needed" if self.note else "not run (no registry URL)")
        return redact(f"# Rollback `{self.repository}:{self.tag}`\n\n| | |\n|---|---|\n"
                      f"| registry | `{self.registry}` |\n| from | `{self.old or '(no tag)'}` |\n"
                      f"| to | `{self.new}` |\n| changed | {self.changed} |\n"
                      f"| verification | {verification} |\n" + change_rows(self)
                      + (f"\n{self.note}\n" if self.note else ""))


def change_rows(result) -> str:
    """The summary's rows naming who asked for the change and why (``not given``: the command
    line was run without them)."""
    return "".join(f"| {label} | {_cell(getattr(result, name, None)) or 'not given'} |\n"
                   for label, name in (("requested by", "requested_by"), ("reason", "reason")))


def _cell(text: Optional[str]) -> str:
    """A free text in a markdown table cell: its pipes escaped, its markup shown as typed."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", text) if text else ""


def _with_result(e: BaseException, result) -> BaseException:
    try:
        e.result = result  # type: ignore[attr-defined]
    except AttributeError:  # some built-in exceptions refuse attributes
        pass
    return e


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _write_report(store: RegistryStore, repo: Repository, tag: Tag, result) -> None:
    """The run's markdown summary in the state folder; never fails the run."""
    path = store.layout.report(repo, tag, _stamp())
    try:
        store.write_file(path, result.markdown().encode(), durable=False)
        result.report_path = str(path)
    except (RegpatchError, OSError) as e:
        log.warning("could not write the run report %s: %s", path, e)


def render_patch_markdown(r: PatchResult) -> str:
    title = "Dry run" if r.dry_run else ("Patched" if r.changed else "Already up to date")
    if r.error:
        title = "Interrupted" if r.status == "interrupted" else "Failed"
    lines = [f"# {title}: `{r.repository}:{r.tag}`", "",
             "| | |", "|---|---|",
             f"| registry | `{r.registry}` |",
             f"| repository | `{r.repository}` |", f"| tag | `{r.tag}` |",
             f"| old digest | `{r.old or '(new tag)'}` |", f"| new digest | `{r.new}` |",
             f"| blobs {'to copy' if r.dry_run else 'copied'} | {len(r.blobs_copied)} ({human(r.bytes_copied)}) |",
             f"| blobs skipped (in registry) | {len(r.blobs_skipped)} "
             f"({human(sum(s for _, s in r.blobs_skipped))}) |",
             f"| links {'to write' if r.dry_run else 'written'} | {len(r.links_written)} |",
             f"| verification | {r.verified or ('dry run' if r.dry_run else 'not run')} |",
             f"| bundle trust | {r.bundle_trust or 'not checked'} |"]
    lines += change_rows(r).splitlines() + [""]
    if r.blobs_copied or r.blobs_skipped:
        lines += ["## Blobs", "", "| digest | size | action |", "|---|---:|---|"]
        lines += [f"| `{d}` | {s:,} | {'to copy' if r.dry_run else 'copied'} |" for d, s in r.blobs_copied]
        lines += [f"| `{d}` | {s:,} | skipped |" for d, s in r.blobs_skipped]
        lines.append("")
    if r.fetches:
        lines += ["## Fetched from S3", "", "| file | size | fetched | resumed | seconds | MB/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| `{f['name']}` | {f['size']:,} | {'cache' if f['from_cache'] else format(f['fetched'], ',')} "
                  f"| {f['resumed']:,} | {f['seconds']:.3f} | {f['mb_per_s']:.1f} |" for f in r.fetches]
        lines.append("")
    lines += ["## Time per step", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r.seconds.items()]
    if r.error:
        where = (f"The tag points at the new image `{r.new}` (it was proven before the tag moved)."
                 if r.tag_moved else
                 f"The tag was not moved: it still points at `{r.old or '(nothing)'}`. Blobs and "
                 "links already written stay (nothing is deleted); the same command resumes.")
        lines += ["", "## Error", "", r.error, "", where]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"



def tag_position(target, repository: str, tag: str) -> str:
    """Where the tag stands, read in the storage now (for a run that failed before it had a
    result): never raises."""
    if target is None:
        return "The tag was not moved: the run stopped before it opened the storage; nothing was written."
    try:
        current = target.store().current_tag(Repository.parse(repository), Tag.parse(tag))
    except Exception as e:  # noqa: BLE001 - a summary must not fail on an unreadable storage
        return f"Where the tag stands could not be read ({type(e).__name__}): see regpatch history."
    return (f"The tag points at `{current}` (read in the storage after the failure)." if current else
            "The tag does not exist in the storage (read after the failure).")


def render_failure_markdown(kind: str, repository: str, tag: str, error: str, where: str, *, name: str = "",
                            registry: str = "", change=None, interrupted: bool = False) -> str:
    """The summary of a run that failed before the engine had a result (a bad parameter, a
    missing bundle, a permission error), in the shape of the others."""
    on = f" on `{name}`" if name else ""
    lines = [f"# {'Interrupted' if interrupted else 'Failed'}: `{repository}:{tag}`{on} ({kind})", "",
             "| | |", "|---|---|"]
    if registry:
        lines.append(f"| registry | `{registry}` |")
    lines += [f"| repository | `{repository}` |", f"| tag | `{tag}` |", "| verification | not run |"]
    lines += change_rows(change).splitlines() if change is not None else []
    return "\n".join(lines + ["", "## Error", "", error, "", where]) + "\n"
