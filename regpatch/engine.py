"""The patch and the rollback of one registry, whole, in plain Python.

``patch(request, observer)`` and ``rollback(request, observer)`` are the only
places that decide the order of a run (docs/architecture.md, "The engine"):

    fetch-bundle     open the bundle; with trust keys (or a regpatch-bundle.json) check
                     its signature, listing and base blobs (``signing.check_bundle``)
                     before anything is staged; read its manifests
    plan-patch       resolve every descriptor against bundle and storage; probe the
                     registry API (credentials, TLS) when one is given
    verify-digests   hash every blob; bundle blobs are staged while hashed
    copy-blobs       1. blob data                          (write order of DESIGN.md)
    write-links      2. _layers  3. revisions  4. tag index link
    restart-registry only when a restart strategy is given
    verify-pull      the new image by digest through the registry API, every byte
                     re-hashed, then the operator's --verify-command on repo@digest
    publish-tag      5. current/link, only if the tag still holds what was planned;
                     then the registry must serve the new digest for the tag

The storage is the only source of truth: every run plans against what the storage
holds now, and skips only what it finds there (verified-blob markers speed up the
hashing of unchanged files, they never stand in for a missing one). The journal
says what a run did for the operator and for ``resume`` messages; it never makes a
step skip work. The one shortcut: the verification pull is not repeated when the
storage already holds the whole patch, the tag points at it, and the last complete
run of this tag proved that digest through the same registry URL.

The caller's ``Observer`` sees every step (Prefect turns them into task runs, the
command line into log lines); the engine works the same with any observer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol, TypeVar

from . import interrupt
from .apply import ApplyReport, install_blobs, verify_blobs, write_links
from .bundle.formats import PatchBundle, load_bundle
from .bundle.source import open_source
from .digest import Digest
from .errors import (Interrupted, RegpatchError, StorageMismatch, StorageNotFound, UsageError,
                     VerificationError)
from .plan import REPAIR, PatchPlan, make_plan
from .progress import Progress, human
from .reference import Repository, Tag, normalized_length
from .registry_api import VerifyReport, run_verify_command
from .sanitize import SafeText
from .registry_config import blob_descriptor_cache, url_policy_from_config
from .rollback import check_complete_image, flip_tag, rollback_target
from .service import parse_restart_spec
from .state import Journal, open_journal, read_history, record_history, repository_lock, was_verified
from .store import RegistryStore
from .target import RegistryTarget

log = logging.getLogger("regpatch.engine")

T = TypeVar("T")
ProgressFactory = Callable[[str, int], Callable[[int], None]]

PATCH_STEPS = ("fetch-bundle", "plan-patch", "verify-digests", "copy-blobs", "write-links",
               "restart-registry", "verify-pull", "publish-tag")
ROLLBACK_STEPS = ("choose-rollback-target", "check-image", "restart-registry", "verify-pull", "flip-tag")


# --------------------------------------------------------------------------- observer

class Observer(Protocol):
    """What a caller sees of a run. ``run`` must call ``fn`` exactly once and return
    its result (or raise what it raised); it may wrap it (a Prefect task run)."""

    def run(self, step: str, fn: Callable[[], T]) -> T: ...

    def progress(self, label: str, total: int) -> Callable[[int], None]: ...


class LogObserver:
    """Steps as log lines; progress as a bar on a terminal, else periodic log lines."""

    def __init__(self, progress: Optional[ProgressFactory] = None):
        self._progress = progress or Progress()

    def run(self, step: str, fn: Callable[[], T]) -> T:
        t0 = time.monotonic()
        result = fn()
        log.debug("step %s done in %.2fs", step, time.monotonic() - t0)
        return result

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        return self._progress(label, total)


class _Steps:
    """Runs the steps of one run through the observer, timing each, checking for a
    stop request between steps."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str, fn: Callable[[], T]) -> T:
        interrupt.check()
        t0 = time.monotonic()
        try:
            return self.observer.run(step, fn)
        finally:
            self.seconds[step] = round(time.monotonic() - t0, 3)


# --------------------------------------------------------------------------- requests

def _check_lock_timeout(value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise UsageError(f"lock timeout must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def check_verify_command(command: Optional[str], target: RegistryTarget) -> None:
    if command is None:
        return
    if "{ref}" not in command:
        raise UsageError("the verify command must contain {ref}, where the image reference goes "
                         "(host/repository@digest), e.g. 'skopeo inspect docker://{ref}'")
    if not target.url:
        raise UsageError("a verify command needs the registry's URL (--registry-url or "
                         "--registry-config) to name the image it pulls")


def check_trust_options(trust_keys, allow_unsigned: bool) -> None:
    """Every trust key is a readable Ed25519 / P-256 public key; --allow-unsigned needs keys."""
    if allow_unsigned and not trust_keys:
        raise UsageError("--allow-unsigned only relaxes --trust-key: give the trust keys too, or "
                         "leave both out (bundles are then not signature-checked)")
    from .signing import load_public_key

    for key in trust_keys:
        load_public_key(key)


@dataclass(frozen=True)
class PatchRequest:
    """Everything a patch needs; ``check`` validates it without touching the storage.

    ``s3`` is a ``regpatch.bundle.s3.S3Options`` for s3:// bundles (it may hold
    credentials: a request is never logged, persisted or passed to a task).
    """

    bundle: str
    repository: Repository
    tag: Tag
    target: RegistryTarget
    restart: str = "none"
    image: Optional[str] = None
    verify_command: Optional[str] = None
    always_verify: bool = False
    dry_run: bool = False
    lock_timeout: float = 300.0
    s3: object = None
    init: bool = False               # create docker/registry/v2 when the storage has none
    consume: bool = False            # rename the bundle's layer files into the storage instead of copying
    ignore_url_policy: bool = False  # patch a manifest the registry's validation.manifests.urls would refuse
    allow_cross_repository: bool = False  # link blobs other repositories hold without the bundle carrying them
    trust_keys: tuple[str, ...] = ()  # PEM public keys: the bundle must be signed by one of them
    allow_unsigned: bool = False      # with trust_keys: accept a bundle without a signature

    def check(self) -> None:
        """Every check that needs no storage, bundle or network: bad arguments fail here."""
        if not isinstance(self.repository, Repository) or not isinstance(self.tag, Tag):
            raise UsageError("internal: repository and tag must be parsed values")
        if not self.bundle or not str(self.bundle).strip():
            raise UsageError("no bundle given")
        _check_lock_timeout(self.lock_timeout)
        check_verify_command(self.verify_command, self.target)
        parse_restart_spec(self.restart, registry_config=self.target.config_path)
        self.target.check()
        if self.s3 is not None:
            self.s3.check()
        check_trust_options(self.trust_keys, self.allow_unsigned)


@dataclass(frozen=True)
class RollbackRequest:
    repository: Repository
    tag: Tag
    target: RegistryTarget
    to: Optional[Digest] = None
    restart: str = "none"
    verify_command: Optional[str] = None
    lock_timeout: float = 300.0

    def check(self) -> None:
        _check_lock_timeout(self.lock_timeout)
        check_verify_command(self.verify_command, self.target)
        parse_restart_spec(self.restart, registry_config=self.target.config_path)
        self.target.check()


# --------------------------------------------------------------------------- results

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

    @property
    def bytes_copied(self) -> int:
        return sum(s for _, s in self.blobs_copied)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        if self.dry_run:
            return "dry run: nothing was written"
        if self.error:
            return f"failed: {self.repository}:{self.tag}: {self.error}"
        if not self.changed:
            return f"{self.repository}:{self.tag} already at {self.new}: nothing to do"
        return (f"patched {self.repository}:{self.tag}: {self.old or '(new tag)'} -> {self.new}; "
                f"{len(self.blobs_copied)} blobs copied ({self.bytes_copied:,} B), "
                f"{len(self.blobs_skipped)} skipped, {len(self.links_written)} links written")

    def markdown(self) -> str:
        return render_patch_markdown(self)


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

    def summary_line(self) -> str:
        verb = "rolled back" if self.changed else "already at"
        return f"{verb} {self.repository}:{self.tag}: {self.old or '(no tag)'} -> {self.new}"

    def markdown(self) -> str:
        return (f"# Rollback `{self.repository}:{self.tag}`\n\n| | |\n|---|---|\n"
                f"| registry | `{self.registry}` |\n| from | `{self.old or '(no tag)'}` |\n"
                f"| to | `{self.new}` |\n| changed | {self.changed} |\n"
                f"| verification | {self.verified or 'not run (no registry URL)'} |\n")


# --------------------------------------------------------------------------- patch

def patch(request: PatchRequest, observer: Optional[Observer] = None) -> PatchResult:
    """Apply the bundle to ``repository:tag`` of one registry (see the module docstring).

    Raises a ``RegpatchError`` (``Interrupted`` on a stop request); the result of a
    failed run is attached to the exception as ``.result`` (the summary to show).
    """
    request.check()
    opened: list[PatchBundle] = []
    try:
        return _patch(request, observer or LogObserver(), opened)
    finally:
        for loaded in opened:  # scratch files of a converted archive go, the staged blobs stay
            loaded.close()


def _patch(request: PatchRequest, observer: Observer, opened: list) -> PatchResult:
    steps = _Steps(observer)
    target, repo, tag = request.target, request.repository, request.tag
    store = target.store()
    check_storage_tree(store, request.init)
    trusts: list = []

    def open_bundle() -> PatchBundle:
        loaded, trust = _open_bundle(request, store)
        opened.append(loaded)
        trusts.append(trust)
        return loaded

    def with_trust(result: PatchResult) -> PatchResult:
        trust = trusts[-1]
        result.bundle_trust = trust.summary()
        for w in list(trust.warnings) + trust.target_warnings(repo.name, tag.name):
            log.warning("%s", w)
            result.warnings.append(w)
        result.notes = list(opened[-1].notes)
        return result

    def plan_it(loaded: PatchBundle) -> PatchPlan:
        return _plan(request, store, loaded, trusts[-1])

    if request.dry_run:  # reads only: no lock, no journal, no history
        loaded = steps("fetch-bundle", open_bundle)
        plan = steps("plan-patch", lambda: plan_it(loaded))
        steps("verify-digests", lambda: verify_blobs(plan, store, dry_run=True, progress=observer.progress))
        result = with_trust(_new_result(plan, target, store, dry_run=True))
        result.blobs_copied = [(str(b.digest), b.size) for b in plan.to_copy]
        result.blobs_skipped = [(str(b.digest), b.size) for b in plan.present]
        result.links_written = [store.layout.relative(l.path) for l in plan.links_to_write]
        result.fetches = _fetch_stats(loaded)
        result.status, result.seconds = "dry-run", steps.seconds
        log.info("dry run: nothing written")
        return result

    store.claim_state_dir()
    with repository_lock(store.layout, repo, timeout=request.lock_timeout,
                         on_wait=lambda holder: log.warning("waiting for the lock of %s: %s", repo, holder)):
        loaded = steps("fetch-bundle", open_bundle)
        plan = steps("plan-patch", lambda: plan_it(loaded))
        # decided before the journal is reopened: the storage holds the whole patch already
        # and the last complete run proved this digest through the same registry URL
        skip_pull = (plan.is_noop and not request.always_verify
                     and was_verified(store, repo, tag, plan.new, target.url))
        journal, resumed = open_journal(store, repo, tag, plan.new, plan.old, loaded.description)
        if skip_pull:
            journal.verified_url = target.url
        if resumed:
            log.info("resuming the patch of %s:%s to %s started %s (run %d); done before: %s",
                     repo, tag, plan.new, resumed.started, resumed.runs, ", ".join(resumed.steps) or "nothing")
        result = with_trust(_new_result(plan, target, store, dry_run=False))
        try:
            _apply(request, plan, loaded, store, journal, result, steps, observer, skip_pull)
            journal.status = result.status = "complete"
        except BaseException as e:
            journal.status = result.status = "interrupted" if (
                isinstance(e, (Interrupted, KeyboardInterrupt)) or interrupt.stopping()) else "failed"
            journal.error = result.error = str(e) if isinstance(e, RegpatchError) else type(e).__name__
            raise _with_result(e, result)
        finally:
            result.seconds = steps.seconds
            journal.save(store)
            _write_report(store, repo, tag, result)
    log.info("%s:%s %s -> %s: %d blobs copied (%s), %d skipped, %d links written",
             repo, tag, result.old or "(new tag)", result.new, len(result.blobs_copied),
             human(result.bytes_copied), len(result.blobs_skipped), len(result.links_written))
    return result


def preflight(request: PatchRequest) -> PatchPlan:
    """Check a patch without writing anything: arguments, bundle, plan, registry API
    (credentials, TLS). What a caller runs before handing the patch to an orchestrator."""
    request.check()
    store = request.target.store()
    check_storage_tree(store, request.init)
    return _plan(request, store, *_open_bundle(request, store))


def check_storage_tree(store: RegistryStore, init: bool) -> None:
    """A storage without ``docker/registry/v2`` is a typo more often than a new registry:
    it is created only when asked (``--init``)."""
    if store.layout.v2.is_dir() or init:
        return
    raise StorageNotFound(f"{store.root} holds no registry storage (no docker/registry/v2): check that it is "
                          "the registry's rootdirectory; to start a new, empty registry storage there, pass --init")


def open_bundle(bundle: str, *, image: Optional[str] = None, s3=None) -> PatchBundle:
    """Open a bundle and read its manifests (no blob is hashed)."""
    return load_bundle(open_source(bundle, s3=s3), image=image)


def _open_bundle(request: PatchRequest, store: RegistryStore):
    """(bundle, BundleTrust): the trust check runs on the source before its manifests are used."""
    from .errors import BundleMismatch
    from .signing import check_bundle

    source = open_source(request.bundle, s3=request.s3)
    trust = check_bundle(source, request.trust_keys, request.allow_unsigned, store)
    # a docker save archive's layers are compressed once, into the state folder (same filesystem)
    loaded = load_bundle(source, image=request.image, scratch=None if request.dry_run else store.layout.scratch)
    for note in loaded.notes:
        log.info("%s", note)
    if trust.descriptor is not None and loaded.top.digest != trust.descriptor.image.digest:
        raise BundleMismatch(f"bundle {loaded.description}: the image read ({loaded.top.digest}) is not the "
                             f"one regpatch-bundle.json describes ({trust.descriptor.image.digest})")
    log.info("bundle %s: %s format, top manifest %s (%s)", loaded.description, loaded.format,
             loaded.top.digest, loaded.top.media_type)
    return loaded, trust


def _plan(request: PatchRequest, store: RegistryStore, loaded: PatchBundle, trust=None) -> PatchPlan:
    config = request.target.config
    # blobs a bundle signed by a trust key lists (carried, or assumed present at the site) may
    # come from any repository of this registry: the signer vouches for the image; any other
    # blob of another repository must be carried by the bundle, which proves it has the bytes
    trusted = frozenset([b.digest for b in trust.descriptor.assumed] + [b.digest for b in trust.descriptor.blobs]) \
        if trust is not None and trust.signed and trust.descriptor is not None else frozenset()
    plan = make_plan(loaded, store, request.repository, request.tag,
                     url_policy=url_policy_from_config(config) if config else None,
                     ignore_url_policy=request.ignore_url_policy,
                     allow_cross_repository=request.allow_cross_repository, trusted_blobs=trusted)
    for w in _downgrade_warnings(store, request.repository, request.tag, plan):
        plan.warnings.append(w)
        log.warning("%s", w)
    log.info(SafeText("plan:\n%s"), plan.render(store.layout))  # names escaped in render
    _check_repairs(request, plan)
    if request.consume:
        _check_consumable(store, plan)
    long_name = normalized_length(request.repository.name) > 255
    if long_name and config and blob_descriptor_cache(config):
        raise UsageError(_long_name_refused(request.repository, f"the registry's {config} sets "
                                                                "storage.cache.blobdescriptor"))
    if request.target.url:  # credentials, TLS and "same registry" are proved before the first write
        with request.target.client() as client:
            client.check()
            check_same_registry(store, client, request.repository, request.tag)
            if long_name and not client.name_accepted(request.repository):
                raise UsageError(_long_name_refused(request.repository, f"the registry at {client.url} "
                                                                        "answers HTTP 500 for it"))
    elif long_name and not config:
        w = (f"repository name {request.repository.name[:40]}... is {normalized_length(request.repository.name)} "
             "characters as docker.io/library/NAME: a registry with a blob descriptor cache "
             "(storage.cache.blobdescriptor) cannot serve it; give --registry-url or --registry-config to check")
        plan.warnings.append(w)
        log.warning("%s", w)
    return plan


def _long_name_refused(repo: Repository, why: str) -> str:
    return (f"repository name {repo.name[:40]}... ({len(repo.name)} characters) cannot be served: {why}, "
            f"and registry 2.8.2 then refuses names longer than 255 characters as docker.io/library/NAME "
            f"({normalized_length(repo.name)} here; at most 237 characters without a '/', 245 with one "
            "unless the first component is a host name); nothing was written")


def _downgrade_warnings(store: RegistryStore, repo: Repository, tag: Tag, plan: PatchPlan) -> list[str]:
    """The image this patch would publish was replaced earlier on this tag: a downgrade
    (a replayed older bundle, or a mix-up) is said plainly, not refused (a rollback by bundle
    is legitimate)."""
    if plan.old is None or plan.old == plan.new:
        return []
    for e in reversed(read_history(store.layout, repo.name, tag.name)):
        if e.old == str(plan.new) and e.new != str(plan.new):
            if e.action == "rollback":
                return [f"{repo}:{tag} was rolled back from {plan.new} to {e.new} on {e.time}: this patch "
                        "applies the rolled-back image again"]
            return [f"{repo}:{tag} held {plan.new} before and was moved off it on {e.time} ({e.action} to "
                    f"{e.new}): this patch goes back to an older image"]
    return []


def check_same_registry(store: RegistryStore, client, repo: Repository, tag: Tag) -> None:
    """The registry behind the URL must serve what the storage holds: the tag's digest
    (or, for a new tag, another tag of the repository, or of any repository). A
    storage path and a URL that name two different registries are refused here."""
    from .errors import VerificationError as _Mismatch

    probe = store.any_tag(prefer=(repo, tag))
    if probe is None:
        log.debug("the storage holds no tag yet: nothing to compare with the registry at %s", client.url)
        return
    prepo, ptag, held = probe
    try:
        served = client.tag_digest(prepo, ptag)
    except _Mismatch:
        served = None
    if served != held:
        raise StorageMismatch(
            f"the registry at {client.url} serves {served or 'nothing'} for {prepo}:{ptag}, but the storage "
            f"{store.root} holds {held}: the storage and the URL belong to different registries (check "
            "--storage / --registry-url / --registry-config); nothing was written")


def _check_consumable(store: RegistryStore, plan: PatchPlan) -> None:
    """--consume renames bundle files into the storage: they must be local files on the
    storage's filesystem. Refused before any write otherwise."""
    from .apply import consumable

    for b in plan.to_copy:
        if b.source is None or consumable(plan, b) or plan.source.local_path(b.source.name) is not None:
            continue
        raise UsageError("--consume takes the files of a local bundle folder; this bundle is not one "
                         "(drop --consume)")
    for b in plan.to_copy:
        if consumable(plan, b):
            path = plan.source.local_path(b.source.name)
            if not store.same_filesystem(path):
                raise UsageError(f"--consume: {path} is not on the filesystem of the storage {store.root}, so "
                                 "it cannot be renamed into it; drop --consume to copy it")


def _check_repairs(request: PatchRequest, plan: PatchPlan) -> None:
    """A blob replaced in place (the registry held it with a wrong size) is served with the
    old size by a running registry that caches blob descriptors, until it restarts."""
    repairs = [b for b in plan.blobs if b.action == REPAIR]
    if not repairs:
        return
    strategy = parse_restart_spec(request.restart, registry_config=request.target.config_path)
    cache = blob_descriptor_cache(request.target.config) if request.target.config else "inmemory"
    if strategy.needed or not request.target.url or cache not in ("inmemory", "redis"):
        if repairs:
            log.warning("%d blob(s) are repaired in place (%s): %s", len(repairs),
                        ", ".join(str(b.digest.short) for b in repairs),
                        "the registry is restarted before the verification pull" if strategy.needed
                        else "restart the registry if it runs with a blob descriptor cache")
        return
    raise UsageError(
        f"blob {repairs[0].digest} is held by the storage with the wrong size and will be replaced in place; "
        "a running registry caches blob sizes (storage.cache.blobdescriptor) and would keep serving the old "
        "one until it restarts: give --restart (command:... or process:...) so regpatch restarts it before "
        "the verification pull")


def _apply(request: PatchRequest, plan: PatchPlan, loaded: PatchBundle, store: RegistryStore,
           journal: Journal, result: PatchResult, steps: _Steps, observer: Observer, skip_pull: bool) -> None:
    target, repo, tag = request.target, request.repository, request.tag

    steps("verify-digests", lambda: verify_blobs(plan, store, consume=request.consume, progress=observer.progress))
    result.fetches = _fetch_stats(loaded)
    journal.mark(store, "verify digests")
    report: ApplyReport = steps("copy-blobs", lambda: install_blobs(plan, store, progress=observer.progress))
    journal.mark(store, "copy blobs")
    report = steps("write-links", lambda: write_links(plan, store, report))
    journal.mark(store, "write links")
    result.blobs_copied = [(str(b.digest), b.size) for b in report.blobs if b.action != "skipped"]
    result.blobs_skipped = [(str(b.digest), b.size) for b in report.blobs if b.action == "skipped"]
    result.links_written = list(report.links_written)
    result.changed = report.changed

    steps("restart-registry", lambda: restart_registry(request.restart, target))
    if skip_pull:
        log.info("%s:%s unchanged since the verified patch to %s through %s: pull skipped "
                 "(--always-verify to pull again)", repo, tag, plan.new, target.url)
        result.verified = f"unchanged since a pull through {target.url} proved {plan.new}"
    else:
        report_v = steps("verify-pull", lambda: verify_new_image(
            store, target, repo, plan.new, sum(b.size for b in plan.blobs), request.verify_command,
            observer.progress))
        result.verified = report_v.summary() if report_v else None
        journal.verified_url = target.url if report_v else None
    journal.mark(store, "verify pull")

    def publish_step() -> bool:
        moved = flip_tag(store, repo, tag, plan.new, expected=plan.old)
        result.tag_moved = True
        _record_tag_change(store, repo, tag, plan, journal, loaded.description)
        try:
            check_tag_served(target, repo, tag, plan.new)
        except VerificationError as e:
            if moved and plan.old is not None:  # our own move, undone (only if nobody moved it since)
                flip_tag(store, repo, tag, plan.old, expected=plan.new)
                record_history(store, repo, tag, plan.new, plan.old, action="restore",
                               source="the registry did not serve the new digest after the move")
                result.tag_moved = False
                raise VerificationError(f"{e}; the tag was put back on {plan.old}") from e
            raise
        return moved

    moved = steps("publish-tag", publish_step)
    result.changed = result.changed or moved
    journal.mark(store, "publish tag")


def verify_new_image(store: RegistryStore, target: RegistryTarget, repo: Repository, digest: Digest,
                     total_bytes: int, verify_command: Optional[str],
                     progress: ProgressFactory) -> Optional[VerifyReport]:
    """Prove the image before any tag points at it: complete in the storage, then pulled
    by digest through the registry API (every byte re-hashed), then the operator's
    command with ``{ref}`` = ``host/repository@digest``."""
    check_complete_image(store, repo, digest)
    if not target.url:
        log.warning("no registry URL: the new image was checked in the storage only, not pulled "
                    "(give --registry-url or --registry-config to pull it before the tag moves)")
        return None
    with target.client() as client:
        bar = progress(f"pull {repo}@{digest.short}", total_bytes) if total_bytes else None
        report = client.verify_image(repo, digest, digest, progress=bar)
    if verify_command:
        ref = f"{target.host}/{repo}@{digest}"
        run_verify_command(verify_command, ref)
        log.info("external verification of %s passed", ref)
    return report


def check_tag_served(target: RegistryTarget, repo: Repository, tag: Tag, digest: Digest) -> None:
    """After the tag moved: the registry must serve ``digest`` for it (when it has a URL)."""
    if not target.url:
        return
    with target.client() as client:
        served = client.tag_digest(repo, tag)
    if served != digest:
        raise VerificationError(f"after the tag moved, the registry at {target.url} serves {served} "
                                f"for {repo}:{tag}, not {digest}; is this registry's storage the one "
                                "that was patched?")


def _record_tag_change(store: RegistryStore, repo: Repository, tag: Tag, plan: PatchPlan,
                       journal: Journal, source: str) -> None:
    """History gets one entry per tag change, also when a killed run moved the tag
    before it could record it (the journal's old digest tells what it was)."""
    old = plan.old
    if old == plan.new and journal.old and journal.old != str(plan.new):
        last = read_history(store.layout, repo.name, tag.name)
        if not last or last[-1].new != str(plan.new):
            old = Digest.parse(journal.old)
    if old != plan.new:
        record_history(store, repo, tag, old, plan.new, action="patch", source=source)


def restart_registry(spec: str, target: RegistryTarget) -> float:
    """Run the restart strategy (if any) and wait until the registry answers."""
    strategy = parse_restart_spec(spec, registry_config=target.config_path)
    if not strategy.needed:
        log.info("no restart (additions are visible to the registry at once)")
        return 0.0
    from .service import http_probe, wait_until_ready

    t0 = time.monotonic()
    log.info("restarting the registry: %s", strategy.describe())
    strategy.restart()
    if target.url:
        waited = wait_until_ready(lambda: http_probe(target.url, verify=target.tls_verify()))
        log.info("registry at %s answers /v2/ after %.2fs", target.url, waited)
    return time.monotonic() - t0


def _new_result(plan: PatchPlan, target: RegistryTarget, store: RegistryStore, *, dry_run: bool) -> PatchResult:
    return PatchResult(str(plan.repository), str(plan.tag), str(plan.old) if plan.old else None,
                       str(plan.new), dry_run, registry=target.describe(), warnings=list(plan.warnings),
                       plan_text=plan.render(store.layout))


def _fetch_stats(loaded: PatchBundle) -> list[dict]:
    """Bytes and throughput of each blob an S3 source fetched (none for local folders)."""
    stats = getattr(loaded.source, "fetch_stats", None) or {}
    return [dict(name=s.name, digest=s.digest, size=s.size, fetched=s.fetched, resumed=s.resumed,
                 from_cache=s.from_cache, seconds=round(s.seconds, 3), mb_per_s=round(s.mb_per_s, 1))
            for s in stats.values()]


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


# --------------------------------------------------------------------------- rollback

def rollback(request: RollbackRequest, observer: Optional[Observer] = None) -> RollbackResult:
    """Point the tag back at an earlier image: the one before the last change (history)
    or ``request.to``. The image is checked complete in the storage and pulled by digest
    before the tag moves; the tag moves only if nobody moved it meanwhile."""
    request.check()
    observer = observer or LogObserver()
    steps = _Steps(observer)
    target, repo, tag = request.target, request.repository, request.tag
    store = target.store()
    if target.url:
        with target.client() as client:
            client.check()
    with repository_lock(store.layout, repo, timeout=request.lock_timeout):
        current, dest = steps("choose-rollback-target", lambda: rollback_target(store, repo, tag, request.to))
        log.info("%s:%s: %s -> %s", repo, tag, current or "(no tag)", dest)
        top = steps("check-image", lambda: check_complete_image(store, repo, dest))
        log.info("%s@%s is complete (%s)", repo, dest, top.media_type)
        steps("restart-registry", lambda: restart_registry(request.restart, target))
        verified = steps("verify-pull", lambda: verify_new_image(store, target, repo, dest, 0,
                                                                 request.verify_command, observer.progress))

        def flip() -> bool:
            changed = flip_tag(store, repo, tag, dest, expected=current)
            if changed:
                record_history(store, repo, tag, current, dest, action="rollback",
                               source=f"regpatch rollback{' --to ' + str(request.to) if request.to else ''}")
            check_tag_served(target, repo, tag, dest)
            return changed

        changed = steps("flip-tag", flip)
    result = RollbackResult(str(repo), str(tag), str(current) if current else None, str(dest), changed,
                            registry=target.describe(), verified=verified.summary() if verified else None,
                            seconds=steps.seconds)
    _write_report(store, repo, tag, result)
    log.info("%s:%s rolled back: %s -> %s", repo, tag, result.old, result.new)
    return result


# --------------------------------------------------------------------------- rendering

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
             f"| bundle trust | {r.bundle_trust or 'not checked'} |", ""]
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
