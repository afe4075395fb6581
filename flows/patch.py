"""The patch-registry flow: apply one bundle to one registry, then prove it by pulling."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from regpatch.progress import human
from regpatch.reference import Repository, Tag
from regpatch.service import parse_restart_spec
from regpatch.target import RegistryTarget
from tasks.patch_tasks import (copy_blobs, fetch_bundle, plan_patch, restart_registry,
                               verify_digests, verify_pull, write_links)


@dataclass
class PatchResult:
    repository: str
    tag: str
    old: Optional[str]
    new: str
    dry_run: bool
    changed: bool
    blobs_copied: list[tuple[str, int]] = field(default_factory=list)
    blobs_skipped: list[tuple[str, int]] = field(default_factory=list)
    links_written: list[str] = field(default_factory=list)
    verified: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    plan_text: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bytes_copied(self) -> int:
        return sum(s for _, s in self.blobs_copied)

    def to_dict(self) -> dict:
        return asdict(self)


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - t0, 3)


@flow(name="patch-registry", log_prints=False, persist_result=False)
def patch_registry(
    bundle: str,
    repository: str,
    tag: str,
    storage: Optional[str] = None,
    registry_url: Optional[str] = None,
    registry_config: Optional[str] = None,
    restart: str = "none",
    image: Optional[str] = None,
    verify_command: Optional[str] = None,
    dry_run: bool = False,
    registry_auth_file: Optional[str] = None,
    registry_ca: Optional[str] = None,
    insecure: bool = False,
) -> PatchResult:
    """Patch REPOSITORY:TAG in a registry's storage with BUNDLE and verify by pulling.

    bundle: a staged folder or OCI layout (local path or s3://bucket/prefix).
    storage: the registry's rootdirectory (the folder that holds docker/registry/v2).
    restart: none | command:<shell command> | process:pidfile=PATH[,config=PATH][,binary=PATH].
    """
    logger = get_run_logger()
    clock = _Clock()
    # Everything that can be checked without I/O is checked before any I/O.
    Repository.parse(repository)
    Tag.parse(tag)
    target = RegistryTarget.resolve(storage=storage, url=registry_url, config=registry_config,
                                    auth_file=registry_auth_file, ca_file=registry_ca, insecure=insecure)
    parse_restart_spec(restart, registry_config=Path(registry_config) if registry_config else None)

    with clock.step("fetch bundle"):
        loaded = fetch_bundle(bundle, image)
    with clock.step("plan"):
        plan = plan_patch(loaded, target.storage, repository, tag)
    with clock.step("verify digests"):
        verify_digests(plan, target.storage, dry_run)

    result = PatchResult(repository, tag, str(plan.old) if plan.old else None, str(plan.new), dry_run,
                         changed=False, warnings=list(plan.warnings), plan_text=_plan_text(plan, target))
    if dry_run:
        result.blobs_copied = [(str(b.digest), b.size) for b in plan.to_copy]
        result.blobs_skipped = [(str(b.digest), b.size) for b in plan.present]
        result.links_written = [_relative(target, l.path) for l in plan.links_to_write]
        logger.info("dry run: nothing written")
    else:
        with clock.step("copy blobs"):
            report = copy_blobs(plan, target.storage)
        with clock.step("write links"):
            report = write_links(plan, target.storage, report)
        result.changed = report.changed
        result.blobs_copied = [(str(b.digest), b.size) for b in report.blobs if b.action != "skipped"]
        result.blobs_skipped = [(str(b.digest), b.size) for b in report.blobs if b.action == "skipped"]
        result.links_written = report.links_written
        with clock.step("restart registry"):
            restart_registry(restart, target)
        with clock.step("verify pull"):
            verified = verify_pull(target, repository, tag, str(plan.new),
                                   sum(b.size for b in plan.blobs), verify_command)
        result.verified = verified.summary() if verified else None
        logger.info("%s:%s %s -> %s: %d blobs copied (%s), %d skipped, %d links written",
                    repository, tag, result.old or "(new tag)", result.new, len(result.blobs_copied),
                    human(result.bytes_copied), len(result.blobs_skipped), len(result.links_written))
    result.seconds = clock.seconds
    create_markdown_artifact(key=_artifact_key(repository, tag), markdown=render_markdown(result),
                             description=f"regpatch {repository}:{tag}")
    return result


def _plan_text(plan, target: RegistryTarget) -> str:
    from regpatch.store import RegistryStore
    return plan.render(RegistryStore(target.storage).layout)


def _relative(target: RegistryTarget, path) -> str:
    from regpatch.layout import Layout
    return Layout(Path(target.storage)).relative(path)


def _artifact_key(repository: str, tag: str) -> str:
    key = "patch-" + "".join(c if c.isalnum() else "-" for c in f"{repository}-{tag}".lower())
    return key[:100]


def render_markdown(r: PatchResult) -> str:
    title = "Dry run" if r.dry_run else ("Patched" if r.changed else "Already up to date")
    lines = [f"# {title}: `{r.repository}:{r.tag}`", "",
             "| | |", "|---|---|",
             f"| repository | `{r.repository}` |", f"| tag | `{r.tag}` |",
             f"| old digest | `{r.old or '(new tag)'}` |", f"| new digest | `{r.new}` |",
             f"| blobs {'to copy' if r.dry_run else 'copied'} | {len(r.blobs_copied)} ({human(r.bytes_copied)}) |",
             f"| blobs skipped (in registry) | {len(r.blobs_skipped)} ({human(sum(s for _, s in r.blobs_skipped))}) |",
             f"| links {'to write' if r.dry_run else 'written'} | {len(r.links_written)} |",
             f"| verification | {r.verified or ('not run' if not r.dry_run else 'dry run')} |", ""]
    if r.blobs_copied or r.blobs_skipped:
        lines += ["## Blobs", "", "| digest | size | action |", "|---|---:|---|"]
        lines += [f"| `{d}` | {s:,} | {'to copy' if r.dry_run else 'copied'} |" for d, s in r.blobs_copied]
        lines += [f"| `{d}` | {s:,} | skipped |" for d, s in r.blobs_skipped]
        lines.append("")
    lines += ["## Time per step", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r.seconds.items()]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"
