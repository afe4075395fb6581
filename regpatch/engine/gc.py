"""The registry's own garbage collection, in a maintenance window, proven before and after.

regpatch never deletes a blob itself: ``prune`` unlinks images, and the registry's own
``garbage-collect`` (``docker-registry`` on Debian, ``registry.exe`` on Windows) frees what no
linked manifest references. That command is dangerous as operators run it: it must run with the
registry stopped, and with ``--delete-untagged`` it deletes the children of a tagged manifest list
(distribution issue 3004). ``regpatch gc`` runs it the safe way:

1. regpatch's own mark: every blob an image the storage keeps needs (every manifest a tag or a
   revision link names, and for an index every child's config and layers, whether the child has
   a revision link of its own or not);
2. the storage's maintenance gate (``storage.lock.maintenance_window``): no patch, rollback or
   prune of this storage runs until the window ends;
3. the registry stopped through its restart strategy's ``stop`` (``process:`` or ``service:``);
4. ``garbage-collect --dry-run``: its list of blobs to delete is checked against the mark, and a
   single kept blob on it refuses the collection (``GcRefused``, exit 4) before anything is
   deleted; never ``--delete-untagged``;
5. ``garbage-collect`` itself, then the registry started again through the strategy (on every
   path: a refusal, a failure, Ctrl-C), then every tag and every kept digest pulled through the
   registry's API, every byte re-hashed; the bytes freed measured on the filesystem.

Without ``apply`` only steps 1 and 4 run, against the running registry (the dry run reads the
storage only), and nothing is written into ``docker/``. A run killed at any step leaves the
storage serving every kept image once the registry runs (the collection deletes only blobs no
kept image needs); the journal (``Layout.gc_journal``) says which step it was in, and a re-run
does every step again (stopping a stopped registry is nothing) and finishes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from regpatch import interrupt
from regpatch.digest import Digest
from regpatch.errors import GcRefused, RegpatchError, RestartError, UsageError
from regpatch.hooks import checkpoint
from regpatch.manifest import ImageIndex
from regpatch.options import opt
from regpatch.params import ChangeParams
from regpatch.platform import children
from regpatch.platform.ownfiles import read_own_file
from regpatch.progress import human
from regpatch.reference import Repository
from regpatch.registry.restart import RestartStrategy
from regpatch.registry.target import RegistryTarget
from regpatch.sanitize import redact
from regpatch.storage.lock import maintenance_window
from regpatch.storage.state import now_iso
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")

MAX_REPOSITORIES = 100_000
MAX_DEPTH = 8                  # an index of indexes of ... (the registry itself nests one level)
OUTPUT_KEPT = 64 << 20         # the tail of garbage-collect's output: ~95 bytes a blob to delete
JOURNAL_LIMIT = 1 << 20
ELIGIBLE = re.compile(r"^blob eligible for deletion: (\S+)$")
SUMMARY = re.compile(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion$")


@dataclass
class KeptImage:
    repository: str
    reference: str               # a tag, or the digest itself
    digest: str
    complete: bool = True        # every blob it needs is in the storage (before the collection)


@dataclass
class GcReport:
    storage: str
    applied: bool = False
    kept_images: list[KeptImage] = field(default_factory=list)
    kept_blobs: int = 0          # regpatch's mark
    eligible_blobs: int = 0      # what the registry's dry run would delete
    eligible_bytes: int = 0
    freed_bytes: Optional[int] = None      # measured on the filesystem (apply)
    blob_bytes_before: Optional[int] = None
    blob_bytes_after: Optional[int] = None
    downtime_seconds: Optional[float] = None  # from the stop to the registry answering again
    proven: list[str] = field(default_factory=list)   # references pulled after the collection
    resumed_from: Optional[str] = None     # the step an earlier, unfinished gc was in
    requested_by: Optional[str] = None     # who asked for the window, and why (ChangeParams; apply)
    reason: Optional[str] = None

    def render(self) -> str:
        lines = []
        if self.resumed_from:
            lines.append(f"an earlier gc did not finish (it was at '{self.resumed_from}'); this run finished it")
        tags = sum(1 for k in self.kept_images if not k.reference.startswith("sha256:"))
        lines.append(f"kept: {len(self.kept_images)} reference(s) ({tags} tag(s)), {self.kept_blobs} blob(s) "
                     "they need (regpatch's mark)")
        for k in self.kept_images:
            if not k.complete:
                lines.append(f"  warning: {k.repository}@{k.digest} was already incomplete before the "
                             "collection (a blob it needs is missing); not pulled")
        verb = "deleted" if self.applied else "would delete"
        lines.append(f"the registry's garbage-collect {verb} {self.eligible_blobs} blob(s), "
                     f"{human(self.eligible_bytes)}; none of them is a kept blob")
        if self.applied:
            lines.append(f"requested by {self.requested_by or 'not given'}, reason: {self.reason or 'not given'}")
            lines.append(f"freed on the filesystem: {human(self.freed_bytes or 0)} "
                         f"(blobs {human(self.blob_bytes_before or 0)} -> {human(self.blob_bytes_after or 0)}); "
                         f"registry down for {self.downtime_seconds or 0:.1f} s")
            lines.append(f"proven after the collection: {len(self.proven)} reference(s) pulled by the API, "
                         "every byte re-hashed")
        else:
            lines.append("nothing was stopped or deleted (--apply to collect in a maintenance window)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- regpatch's mark

def _needs(store: RegistryStore, digest: Digest, out: set[Digest], depth: int = 0) -> bool:
    """Add every blob the image ``digest`` needs to ``out``; False when one is missing."""
    out.add(digest)
    m = store.stored_manifest(digest)
    if m is None or depth > MAX_DEPTH:
        return False
    complete = True
    if isinstance(m, ImageIndex):
        for child in m.manifests:
            complete = _needs(store, child.digest, out, depth + 1) and complete
        return complete
    for d in m.blobs():
        if d.is_foreign:
            continue  # never stored: clients fetch it from its URLs
        out.add(d.digest)
        complete = complete and store.blob_size(d.digest) is not None
    return complete


def kept_mark(store: RegistryStore) -> tuple[set[Digest], list[KeptImage]]:
    """regpatch's mark: the blobs every kept image needs, and the kept images (every tag and every
    manifest with a revision link) with whether each is complete in the storage now."""
    mark: set[Digest] = set()
    kept: list[KeptImage] = []
    for repo in store._repositories(MAX_REPOSITORIES):
        for tag in store.tags(repo):
            current = store.current_tag(repo, tag)
            if current is not None:
                kept.append(KeptImage(repo.name, tag.name, str(current), _needs(store, current, mark)))
        for d in store.linked_revisions(repo):
            kept.append(KeptImage(repo.name, str(d), str(d), _needs(store, d, mark)))
    return mark, kept


# --------------------------------------------------------------------------- the registry's tool

@dataclass(frozen=True)
class Collector:
    """The registry's ``garbage-collect`` command: its binary and the config.yml it reads."""

    binary: str
    config: Path

    def run(self, dry_run: bool) -> list[Digest]:
        """Run it (never with ``--delete-untagged``); the blobs it lists as eligible for deletion."""
        args = [self.binary, "garbage-collect", *(["--dry-run"] if dry_run else []), str(self.config)]
        shown = " ".join(args)
        done = children.run_or_raise(args, what=f"'{shown}'", error=RestartError, show=redact,
                                     stdout=children.Capture(OUTPUT_KEPT, "tail"),
                                     stderr=children.Capture(64 << 10, "tail"))
        return _eligible(done.stdout, shown)


def _eligible(out: children.Output, shown: str) -> list[Digest]:
    lines = out.lines()
    summary = next((SUMMARY.match(line) for line in lines if SUMMARY.match(line)), None)
    if summary is None:
        raise GcRefused(f"'{shown}' printed no '... eligible for deletion' summary"
                        + (" (its output was longer than regpatch keeps)" if out.truncated else "")
                        + ": not a garbage-collect regpatch can check; nothing was deleted by regpatch")
    blobs, manifests = int(summary.group(2)), int(summary.group(3))
    found: list[Digest] = []
    for line in lines:
        m = ELIGIBLE.match(line)
        if m:
            try:
                found.append(Digest.parse(m.group(1)))
            except RegpatchError:
                raise GcRefused(f"'{shown}' listed {m.group(1)[:80]!r}, not a digest; refused") from None
    if len(found) != blobs or manifests:
        raise GcRefused(f"'{shown}' said {blobs} blob(s) and {manifests} manifest(s) are eligible and listed "
                        f"{len(found)}: regpatch cannot check that list against what it keeps; refused")
    return found


def _refuse_kept(eligible: Iterable[Digest], mark: set[Digest], kept: list[KeptImage], store: RegistryStore,
                 when: str) -> None:
    hit = sorted(str(d) for d in eligible if d in mark)
    if not hit:
        return
    first = Digest.parse(hit[0])
    who = "a kept image"
    for k in kept:
        blobs: set[Digest] = set()
        _needs(store, Digest.parse(k.digest), blobs)
        if first in blobs:
            who = f"{k.repository}:{k.reference}" if k.reference != k.digest else f"{k.repository}@{k.digest}"
            break
    raise GcRefused(f"the registry's garbage-collect would delete {len(hit)} blob(s) a kept image needs "
                    f"({hit[0]}, needed by {who}){when}: an index's child without a revision link of its own? "
                    f"nothing was deleted; link it (regpatch patch the image again) or prune the image first")


def collector_for(store: RegistryStore, target: RegistryTarget, binary: str) -> Collector:
    """The registry's garbage-collect: the operator's config.yml when given (read, never edited),
    else a minimal one in regpatch's state folder naming the storage."""
    found = shutil.which(binary)
    if not found:
        raise UsageError(f"the registry's binary {binary!r} was not found (not a file, not on PATH); "
                         f"give {opt.registry_binary} PATH (docker-registry on Debian, registry.exe on Windows)")
    if target.config_path is not None:
        return Collector(found, target.config_path)
    root = Path(store.layout.root).resolve()
    text = ("# written by regpatch gc: what the registry's garbage-collect needs to find the storage\n"
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {json.dumps(str(root))}\n")
    store.claim_state_dir()
    store.ensure_state_dir(store.layout.gc_config.parent)
    store.write_file(store.layout.gc_config, text.encode())
    return Collector(found, store.layout.gc_config)


# --------------------------------------------------------------------------- the journal

@dataclass
class GcJournal:
    storage: str
    started: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    step: str = "planned"        # stopping | stopped | collecting | collected | starting | started | proven
    status: str = "running"      # running | complete | failed
    error: Optional[str] = None
    requested_by: Optional[str] = None  # who asked for this window, and why
    reason: Optional[str] = None

    @classmethod
    def load(cls, store: RegistryStore) -> Optional["GcJournal"]:
        """The last gc's journal; None when there is none or it is not one regpatch wrote (it tells,
        it never decides)."""
        try:
            data = read_own_file(store.layout.gc_journal, JOURNAL_LIMIT, what="gc journal")
            return cls(**json.loads(data)) if data is not None else None
        except (RegpatchError, ValueError, TypeError):
            return None

    def mark(self, store: RegistryStore, step: str, status: str = "running") -> None:
        self.step, self.status, self.updated = step, status, now_iso()
        store.write_file(store.layout.gc_journal, json.dumps(asdict(self), indent=1).encode())
        checkpoint(f"gc:{step}")


# --------------------------------------------------------------------------- the run

def blob_bytes(store: RegistryStore) -> int:
    """What the blobs take on the filesystem: the sizes of every blob's data file."""
    total = 0
    for dirpath, _, files in os.walk(store.layout.v2 / "blobs"):
        for name in files:
            if name == "data":
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def _sizes(store: RegistryStore, digests: Iterable[Digest]) -> int:
    return sum(store.blob_size(d) or 0 for d in digests)


def _start_again(strategy: RestartStrategy) -> None:
    """Start the registry even while a stop was requested (Ctrl-C after it was stopped): the
    request is held back for the start and raised again afterwards."""
    signum = interrupt.signal_number() if interrupt.stopping() else None
    interrupt.reset()
    try:
        strategy.start()
    finally:
        if signum is not None:
            interrupt.request_stop(signum)


def check_gc(store: RegistryStore, collector: Collector) -> GcReport:
    """The dry run: regpatch's mark against the registry's own dry run. Reads only."""
    mark, kept = kept_mark(store)
    eligible = collector.run(dry_run=True)
    _refuse_kept(eligible, mark, kept, store, "")
    return GcReport(storage=str(store.layout.root), kept_images=kept, kept_blobs=len(mark),
                    eligible_blobs=len(eligible), eligible_bytes=_sizes(store, eligible))


def run_gc(store: RegistryStore, target: RegistryTarget, strategy: RestartStrategy, collector: Collector, *,
           lock_timeout: float = 300.0, prove: Optional[Callable[[list[KeptImage]], list[str]]] = None,
           change: Optional[ChangeParams] = None) -> GcReport:
    """The maintenance window (module docstring): returns what was freed and proven; who asked
    for it and why (``change``) are in its journal and its report."""
    if not strategy.can_stop:
        raise UsageError(f"regpatch gc stops the registry through its restart strategy, and "
                         f"'{strategy.describe()}' cannot stop it on its own: give {opt.restart} "
                         "process:pidfile=PATH,... or service:NAME")
    if not target.url:
        raise UsageError(f"regpatch gc proves every kept image by pulling it afterwards: give {opt.registry_url} "
                         f"or {opt.registry_config}")
    store.claim_state_dir()
    earlier = GcJournal.load(store)
    who = redact(change.requested_by) if change and change.requested_by else None
    why = redact(change.reason) if change and change.reason else None
    journal = GcJournal(storage=str(store.layout.root), requested_by=who, reason=why)
    report = GcReport(storage=str(store.layout.root), applied=True, requested_by=who, reason=why)
    if earlier is not None and earlier.status == "running":  # killed: the registry may still be stopped
        report.resumed_from = earlier.step
        log.warning("an earlier gc of this storage did not finish (it was at '%s', %s): finishing it",
                    earlier.step, earlier.updated)
    elif earlier is not None and earlier.status == "failed":
        log.info("the last gc of this storage failed (%s, the registry was started again): %s", earlier.updated,
                 earlier.error)
    with maintenance_window(store.layout, timeout=lock_timeout):
        mark, kept = kept_mark(store)
        report.kept_images, report.kept_blobs = kept, len(mark)
        report.blob_bytes_before = blob_bytes(store)
        journal.mark(store, "stopping")
        stopped_at = time.monotonic()
        try:
            strategy.stop()
            journal.mark(store, "stopped")
            eligible = collector.run(dry_run=True)  # the storage as the collection will see it
            _refuse_kept(eligible, mark, kept, store, " with the registry stopped")
            report.eligible_blobs, report.eligible_bytes = len(eligible), _sizes(store, eligible)
            journal.mark(store, "collecting")
            log.info("garbage-collect: deleting %d blob(s), %s, none of them kept", len(eligible),
                     human(report.eligible_bytes))
            collector.run(dry_run=False)
            journal.mark(store, "collected")
        except BaseException as e:
            journal.error = redact(str(e))[:500] or type(e).__name__
            log.warning("starting the registry again after: %s", journal.error)
            journal.mark(store, "starting")
            try:
                _start_again(strategy)
            except RegpatchError as start_error:  # the registry is down: that is what the operator must read
                raise RestartError(f"the registry could not be started again ({start_error}); the gc had stopped "
                                   f"because: {journal.error}; start it, then run regpatch gc again") from e
            journal.mark(store, "started", status="failed")
            raise
        journal.mark(store, "starting")
        _start_again(strategy)
        report.downtime_seconds = round(time.monotonic() - stopped_at, 2)
        journal.mark(store, "started")
        report.blob_bytes_after = blob_bytes(store)
        report.freed_bytes = report.blob_bytes_before - report.blob_bytes_after
        report.proven = (prove or _prover(target))([k for k in kept if k.complete])
        journal.mark(store, "proven", status="complete")
    log.info("gc: freed %s; %d reference(s) proven", human(report.freed_bytes), len(report.proven))
    return report


def _prover(target: RegistryTarget) -> Callable[[list[KeptImage]], list[str]]:
    def prove(kept: list[KeptImage]) -> list[str]:
        seen: set[tuple[Repository, Digest]] = set()
        proven = []
        with target.client() as client:
            for k in kept:
                ref = k.reference if k.reference != k.digest else Digest.parse(k.digest)
                client.verify_image(k.repository, ref, Digest.parse(k.digest), seen=seen)
                proven.append(f"{k.repository}:{k.reference}" if k.reference != k.digest
                              else f"{k.repository}@{k.digest}")
        return proven
    return prove
