"""The patch-registry flow: apply one bundle to one registry, then prove it by pulling."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from regpatch.digest import Digest
from regpatch.errors import RegpatchError
from regpatch.layout import Layout
from regpatch.progress import human
from regpatch.rollback import flip_tag
from regpatch.state import open_journal, read_history, record_history, repository_lock, was_verified
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
    rolled_back: bool = False
    error: Optional[str] = None
    fetches: list[dict] = field(default_factory=list)  # per blob fetched from S3: bytes, seconds

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
    state_dir: Optional[str] = None,
    lock_timeout: float = 300.0,
    rollback_on_failure: bool = True,
    always_verify: bool = False,
    s3_endpoint_url: Optional[str] = None,
    s3_region: Optional[str] = None,
    aws_credentials_block: Optional[str] = None,
    cache_dir: Optional[str] = None,
    s3_retries: int = 5,
    s3_wait_initial: float = 0.5,
    s3_wait_max: float = 20.0,
    s3_concurrency: int = 4,
    s3_part_size_mib: int = 8,
) -> PatchResult:
    """Patch REPOSITORY:TAG in a registry's storage with BUNDLE and verify by pulling.

    (The Args below are the descriptions the Prefect UI shows in the run form.)

    Args:
        bundle: The patch bundle: a staged folder or an OCI layout, a path on the host that
            runs the patch, or s3://bucket/prefix.
        repository: Repository to patch, e.g. servercore or windows/servercore.
        tag: Tag to point at the bundle's image, e.g. ltsc2019.
        storage: The registry's rootdirectory (the folder that holds docker/registry/v2);
            optional when registry_config is given.
        registry_url: Registry API for the verification pull, e.g. http://127.0.0.1:5000;
            without any URL the verification pull is skipped.
        registry_config: The registry's config.yml; storage root and URL are read from it.
        restart: How to restart the registry after writing: none, command:<shell command>,
            or process:pidfile=PATH[,config=PATH][,binary=PATH][,log=PATH].
        image: For an OCI layout holding several images, the one whose ref.name annotation is this.
        verify_command: External puller run after the API pull, {ref} replaced,
            e.g. skopeo inspect --tls-verify=false docker://{ref}.
        dry_run: Plan and hash every blob, write nothing.
        registry_auth_file: A docker config.json with credentials for the registry.
        registry_ca: CA bundle to verify the registry's TLS certificate.
        insecure: Allow plain HTTP and skip TLS verification.
        state_dir: regpatch's journal, history and locks (default <storage>/.regpatch).
        lock_timeout: Seconds to wait for the repository lock held by another patch.
        rollback_on_failure: When the verification pull fails, point the tag back at the old image.
        always_verify: Pull and verify even when nothing changed since a verified patch of this tag.
        s3_endpoint_url: For s3:// bundles, the S3 endpoint (default $AWS_ENDPOINT_URL).
        s3_region: For s3:// bundles, the region.
        aws_credentials_block: For s3:// bundles, a prefect-aws AwsCredentials block name
            (default: boto3's credential chain).
        cache_dir: For s3:// bundles, where fetched blobs are cached.
        s3_retries: For s3:// bundles, retries of each S3 call on transient faults.
        s3_wait_initial: For s3:// bundles, first back-off in seconds.
        s3_wait_max: For s3:// bundles, longest back-off in seconds.
        s3_concurrency: For s3:// bundles, ranged GETs at once for a large blob (1: one stream).
        s3_part_size_mib: For s3:// bundles, size of one ranged GET in MiB.
    """
    logger = get_run_logger()
    clock = _Clock()
    # Everything that can be checked without I/O is checked before any I/O.
    repo, tg, target = RegistryTarget.for_run(
        repository, tag, restart, storage=storage, url=registry_url, config=registry_config,
        auth_file=registry_auth_file, ca_file=registry_ca, insecure=insecure, state_dir=state_dir)
    store = target.store()
    s3 = dict(endpoint_url=s3_endpoint_url, region=s3_region, aws_credentials_block=aws_credentials_block,
              cache_dir=cache_dir, retries=s3_retries, wait_initial=s3_wait_initial, wait_max=s3_wait_max,
              concurrency=s3_concurrency, part_size_mib=s3_part_size_mib)

    if dry_run:  # reads only: no lock, no journal, no history
        with clock.step("fetch bundle"):
            loaded = fetch_bundle(bundle, image, s3)
        with clock.step("plan"):
            plan = plan_patch(loaded, target, repository, tag)
        with clock.step("verify digests"):
            verify_digests(plan, target, True)
        result = _result(plan, target, dry_run=True)
        result.fetches = _fetch_stats(loaded)
        result.blobs_copied = [(str(b.digest), b.size) for b in plan.to_copy]
        result.blobs_skipped = [(str(b.digest), b.size) for b in plan.present]
        result.links_written = [_relative(target, l.path) for l in plan.links_to_write]
        logger.info("dry run: nothing written")
        return _finish(result, clock)

    with repository_lock(store.layout, repo, timeout=lock_timeout,
                         on_wait=lambda holder: logger.warning("waiting for the lock of %s: %s", repo, holder)):
        with clock.step("fetch bundle"):
            loaded = fetch_bundle(bundle, image, s3)
        with clock.step("plan"):
            plan = plan_patch(loaded, target, repository, tag)
        already_verified = plan.is_noop and was_verified(store, repo, tg, plan.new) and not always_verify
        journal, resumed = open_journal(store, repo, tg, plan.new, plan.old, loaded.description)
        if resumed:
            logger.info("resuming the patch of %s:%s to %s started %s (run %d); done before: %s",
                        repo, tg, plan.new, resumed.started, resumed.runs, ", ".join(resumed.steps) or "nothing")
        result = _result(plan, target, dry_run=False)
        try:
            with clock.step("verify digests"):
                verify_digests(plan, target, False)
            result.fetches = _fetch_stats(loaded)
            journal.mark(store, "verify digests")
            with clock.step("copy blobs"):
                report = copy_blobs(plan, target)
            journal.mark(store, "copy blobs")
            with clock.step("write links"):
                report = write_links(plan, target, report)
            journal.mark(store, "write links")
            _record_tag_change(store, repo, tg, plan, journal, loaded.description)
            result.changed = report.changed
            result.blobs_copied = [(str(b.digest), b.size) for b in report.blobs if b.action != "skipped"]
            result.blobs_skipped = [(str(b.digest), b.size) for b in report.blobs if b.action == "skipped"]
            result.links_written = report.links_written
            with clock.step("restart registry"):
                restart_registry(restart, target)
            with clock.step("verify pull"):
                try:
                    if already_verified:  # nothing changed since a run that pulled it completely
                        logger.info("%s:%s unchanged since its verified patch: pull skipped "
                                    "(--always-verify to pull again)", repo, tg)
                        verified = None
                    else:
                        verified = verify_pull(target, repository, tag, str(plan.new),
                                               sum(b.size for b in plan.blobs), verify_command)
                except RegpatchError as e:
                    if rollback_on_failure and plan.old and plan.old != plan.new:
                        flip_tag(store, repo, tg, plan.old)
                        record_history(store, repo, tg, plan.new, plan.old, action="auto-rollback",
                                       source=f"verification failed: {e}")
                        journal.status = "rolled-back"
                        result.rolled_back = True
                        logger.error("verification failed; %s:%s rolled back to %s", repo, tg, plan.old)
                    raise
            result.verified = (verified.summary() if verified else
                               "unchanged since its verified patch" if already_verified else None)
            journal.status = "complete"
            journal.mark(store, "verify pull")
        except BaseException as e:
            if journal.status == "running":
                journal.status = "failed"
            journal.error = str(e) if isinstance(e, RegpatchError) else type(e).__name__
            journal.save(store)
            result.error = journal.error
            _finish(result, clock)  # the artifact tells what happened, then the run fails
            raise
    logger.info("%s:%s %s -> %s: %d blobs copied (%s), %d skipped, %d links written",
                repository, tag, result.old or "(new tag)", result.new, len(result.blobs_copied),
                human(result.bytes_copied), len(result.blobs_skipped), len(result.links_written))
    return _finish(result, clock)


def _record_tag_change(store, repo, tag, plan, journal, source: str) -> None:
    """History gets one entry per tag change, also when a killed run flipped the tag
    before it could record it (the journal's old digest tells what it was)."""
    old = plan.old
    if old == plan.new and journal.old and journal.old != str(plan.new):
        last = read_history(store.layout, repo.name, tag.name)
        if not last or last[-1].new != str(plan.new):
            old = Digest.parse(journal.old)
    if old != plan.new:
        record_history(store, repo, tag, old, plan.new, action="patch", source=source)


def _result(plan, target: RegistryTarget, *, dry_run: bool) -> PatchResult:
    return PatchResult(str(plan.repository), str(plan.tag), str(plan.old) if plan.old else None,
                       str(plan.new), dry_run, changed=False, warnings=list(plan.warnings),
                       plan_text=_plan_text(plan, target))


def _fetch_stats(loaded) -> list[dict]:
    """Bytes and throughput of each blob an S3 source fetched (none for local folders)."""
    stats = getattr(loaded.source, "fetch_stats", None) or {}
    return [dict(name=s.name, digest=s.digest, size=s.size, fetched=s.fetched, resumed=s.resumed,
                 from_cache=s.from_cache, seconds=round(s.seconds, 3), mb_per_s=round(s.mb_per_s, 1))
            for s in stats.values()]


def _finish(result: PatchResult, clock: _Clock) -> PatchResult:
    result.seconds = clock.seconds
    create_markdown_artifact(key=_artifact_key(result.repository, result.tag), markdown=render_markdown(result),
                             description=f"regpatch {result.repository}:{result.tag}")
    # machine-readable summary, read back by the rollout flow from a deployment run
    create_table_artifact(key=_artifact_key(result.repository, result.tag)[:93] + "-result",
                          description="patch result", table=[{
                              "old": result.old, "new": result.new, "changed": result.changed,
                              "dry_run": result.dry_run, "bytes_copied": result.bytes_copied,
                              "error": result.error}])
    return result


def _plan_text(plan, target: RegistryTarget) -> str:
    return plan.render(Layout(Path(target.storage)))


def _relative(target: RegistryTarget, path) -> str:
    return Layout(Path(target.storage)).relative(path)


def _artifact_key(repository: str, tag: str) -> str:
    key = "patch-" + "".join(c if c.isalnum() else "-" for c in f"{repository}-{tag}".lower())
    return key[:100]


def render_markdown(r: PatchResult) -> str:
    title = "Dry run" if r.dry_run else ("Patched" if r.changed else "Already up to date")
    if r.error:
        title = "Rolled back after a failed verification" if r.rolled_back else "Failed"
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
    if r.fetches:
        lines += ["## Fetched from S3", "", "| file | size | fetched | resumed | seconds | MB/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| `{f['name']}` | {f['size']:,} | {'cache' if f['from_cache'] else format(f['fetched'], ',')} "
                  f"| {f['resumed']:,} | {f['seconds']:.3f} | {f['mb_per_s']:.1f} |" for f in r.fetches]
        lines.append("")
    lines += ["## Time per step", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r.seconds.items()]
    if r.error:
        lines += ["", "## Error", "", r.error]
        if r.rolled_back:
            lines += ["", f"The tag was pointed back at `{r.old}`; the new image's blobs and links stay "
                          "in the storage (nothing is deleted)."]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"
