"""The patch of one registry, step by step (the order is the engine package's docstring): open and
check the bundle, plan against the storage, stage and verify every blob, write blobs and links,
restart, verify by pulling, publish the tag; the journal, the history line and the report."""

from __future__ import annotations

import logging
from typing import Optional

from regpatch import interrupt
from regpatch.bundle.model import PatchBundle
from regpatch.bundle.open import load_bundle, open_source
from regpatch.digest import Digest
from regpatch.engine.apply import ApplyReport, consumable, install_blobs, verify_blobs, write_links
from regpatch.engine.observer import LogObserver, Observer, _Steps
from regpatch.engine.plan import REPAIR, PatchPlan, make_plan
from regpatch.engine.requests import PatchRequest
from regpatch.engine.results import PatchResult, _with_result, _write_report
from regpatch.engine.tags import flip_tag
from regpatch.engine.verify import check_tag_served, restart_registry, verify_new_image
from regpatch.errors import (
    BundleMismatch,
    Interrupted,
    OlderBundle,
    RegpatchError,
    StorageMismatch,
    StorageNotFound,
    TagRaced,
    UsageError,
    VerificationError,
)
from regpatch.options import opt
from regpatch.progress import human
from regpatch.reference import Repository, Tag, normalized_length
from regpatch.registry.config import blob_descriptor_cache
from regpatch.registry.restart import parse_restart_spec
from regpatch.registry.target import RegistryTarget
from regpatch.registry.url_policy import url_policy_from_config
from regpatch.sanitize import SafeText
from regpatch.signing.check import check_bundle
from regpatch.signing.replay import replay_refusal
from regpatch.storage.history import read_history, record_history
from regpatch.storage.journal import Journal, open_journal, was_verified
from regpatch.storage.lock import repository_lock
from regpatch.storage.names import check_names
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")


PATCH_STEPS = ("fetch-bundle", "plan-patch", "verify-digests", "copy-blobs", "write-links",
               "restart-registry", "verify-pull", "publish-tag")


ROLLBACK_STEPS = ("choose-rollback-target", "check-image", "restart-registry", "verify-pull", "flip-tag")


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
    check_names(store.layout, request.repository, request.tag)
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
        steps("verify-digests", lambda: verify_blobs(plan, store, dry_run=True, progress=steps.progress))
        result = with_trust(_new_result(plan, target, store, request, dry_run=True))
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
        result = with_trust(_new_result(plan, target, store, request, dry_run=False))
        try:
            _apply(request, plan, loaded, store, journal, result, steps, skip_pull)
            journal.status = result.status = "complete"
        except BaseException as e:
            journal.status = result.status = "interrupted" if (
                isinstance(e, (Interrupted, KeyboardInterrupt)) or interrupt.stopping()) else "failed"
            journal.error = result.error = str(e) if isinstance(e, RegpatchError) else type(e).__name__
            raise _with_result(e, result)  # noqa: B904  (the same exception, re-raised with its result)
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
    check_names(store.layout, request.repository, request.tag)
    return _plan(request, store, *_open_bundle(request, store))


def check_storage_tree(store: RegistryStore, init: bool) -> None:
    """A storage without ``docker/registry/v2`` is a typo more often than a new registry:
    it is created only when asked (``--init``)."""
    if store.layout.v2.is_dir() or init:
        return
    raise StorageNotFound(f"{store.root} holds no registry storage (no docker/registry/v2): check that it is "
                          f"the registry's rootdirectory; to start a new, empty registry storage there, "
                          f"pass {opt.init}")


def open_bundle(bundle: str, *, image: Optional[str] = None, s3=None) -> PatchBundle:
    """Open a bundle and read its manifests (no blob is hashed)."""
    return load_bundle(open_source(bundle, s3=s3), image=image)


def _open_bundle(request: PatchRequest, store: RegistryStore):
    """(bundle, BundleTrust): the trust check runs on the source before its manifests are used."""
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
    _check_replay(request, store, plan, trust)
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
             f"(storage.cache.blobdescriptor) cannot serve it; give {opt.registry_url} or "
             f"{opt.registry_config} to check")
        plan.warnings.append(w)
        log.warning("%s", w)
    return plan


def _long_name_refused(repo: Repository, why: str) -> str:
    return (f"repository name {repo.name[:40]}... ({len(repo.name)} characters) cannot be served: {why}, "
            f"and registry 2.8.2 then refuses names longer than 255 characters as docker.io/library/NAME "
            f"({normalized_length(repo.name)} here; at most 237 characters without a '/', 245 with one "
            "unless the first component is a host name); nothing was written")


def _check_replay(request: PatchRequest, store: RegistryStore, plan: PatchPlan, trust) -> None:
    """A signed bundle older than the image the tag serves is refused, before any write,
    unless the operator asks for the downgrade (then it is a warning)."""
    why = replay_refusal(trust, store, request.repository, request.tag, plan.old) if trust is not None else None
    if why is None:
        return
    if not request.allow_downgrade:
        raise OlderBundle(why + "; nothing was written")
    w = f"{why.split(': an older signed bundle')[0]}: patched anyway ({opt.allow_downgrade})"
    plan.warnings.append(w)
    log.warning("%s", w)


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
    probe = store.any_tag(prefer=(repo, tag))
    if probe is None:
        log.debug("the storage holds no tag yet: nothing to compare with the registry at %s", client.url)
        return
    prepo, ptag, held = probe
    try:
        served = client.tag_digest(prepo, ptag)
    except VerificationError:
        served = None
    if served != held:
        raise StorageMismatch(
            f"the registry at {client.url} serves {served or 'nothing'} for {prepo}:{ptag}, but the storage "
            f"{store.root} holds {held}: the storage and the URL belong to different registries (check "
            f"{opt.storage} / {opt.registry_url} / {opt.registry_config}); nothing was written")


def _check_consumable(store: RegistryStore, plan: PatchPlan) -> None:
    """--consume renames bundle files into the storage: they must be local files on the
    storage's filesystem. Refused before any write otherwise."""
    for b in plan.to_copy:
        if b.source is None or consumable(plan, b) or plan.source.local_path(b.source.name) is not None:
            continue
        raise UsageError(f"{opt.consume} takes the files of a local bundle folder; this bundle is not one "
                         f"(drop {opt.consume})")
    for b in plan.to_copy:
        if consumable(plan, b):
            assert b.source is not None  # consumable() checked it is a local bundle file
            path = plan.source.local_path(b.source.name)
            assert path is not None
            if not store.same_filesystem(path):
                raise UsageError(f"{opt.consume}: {path} is not on the filesystem of the storage {store.root}, so "
                                 f"it cannot be renamed into it; drop {opt.consume} to copy it")


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
        f"one until it restarts: give {opt.restart} (command:... or process:...) so regpatch restarts it before "
        "the verification pull")


def _apply(request: PatchRequest, plan: PatchPlan, loaded: PatchBundle, store: RegistryStore,
           journal: Journal, result: PatchResult, steps: _Steps, skip_pull: bool) -> None:
    target, repo, tag = request.target, request.repository, request.tag

    steps("verify-digests", lambda: verify_blobs(plan, store, consume=request.consume, progress=steps.progress))
    result.fetches = _fetch_stats(loaded)
    journal.mark(store, "verify digests")
    report: ApplyReport = steps("copy-blobs", lambda: install_blobs(plan, store, progress=steps.progress))
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
                 f"({opt.always_verify} to pull again)", repo, tag, plan.new, target.url)
        result.verified = f"unchanged since a pull through {target.url} proved {plan.new}"
    else:
        stages: list[str] = []
        try:
            report_v = steps("verify-pull", lambda: verify_new_image(
                store, target, repo, plan.new, sum(b.size for b in plan.blobs), request.verify_command,
                steps.progress, stages))
        except RegpatchError as e:  # said where it failed: the summary never claims 'not run' for a run check
            result.verified = f"failed at the {stages[-1] if stages else 'storage check'}: {e}"
            raise
        result.verified = report_v.summary() if report_v else None
        journal.verified_url = target.url if report_v else None
    journal.mark(store, "verify pull")

    def publish_step() -> bool:
        try:
            flip = flip_tag(store, repo, tag, plan.new, expected=plan.old, source=loaded.description)
        except TagRaced as e:
            result.tag_moved = e.holds == plan.new
            raise
        result.links_written += [store.layout.relative(p) for p in flip.links_written]
        result.tag_moved = True
        _record_tag_change(store, repo, tag, plan, journal, loaded.description, request)
        try:
            check_tag_served(target, repo, tag, plan.new)
        except VerificationError as e:
            if flip.moved and plan.old is not None:  # our own move, undone (only if nobody moved it since)
                why = "the registry did not serve the new digest after the move"
                flip_tag(store, repo, tag, plan.old, expected=plan.new, doing="restore", source=why)
                record_history(store, repo, tag, plan.new, plan.old, action="restore", source=why,
                               requested_by=request.requested_by, reason=request.reason)
                result.tag_moved = False
                raise VerificationError(f"{e}; the tag was put back on {plan.old}") from e
            raise
        return flip.moved

    moved = steps("publish-tag", publish_step)
    result.changed = result.changed or moved
    journal.mark(store, "publish tag")


def _record_tag_change(store: RegistryStore, repo: Repository, tag: Tag, plan: PatchPlan,
                       journal: Journal, source: str, request: PatchRequest) -> None:
    """History gets one entry per tag change, also when a killed run moved the tag
    before it could record it (the journal's old digest tells what it was)."""
    old = plan.old
    if old == plan.new and journal.old and journal.old != str(plan.new):
        last = read_history(store.layout, repo.name, tag.name)
        if not last or last[-1].new != str(plan.new):
            old = Digest.parse(journal.old)
    if old != plan.new:
        record_history(store, repo, tag, old, plan.new, action="patch", source=source,
                       requested_by=request.requested_by, reason=request.reason)



def _new_result(plan: PatchPlan, target: RegistryTarget, store: RegistryStore, request: PatchRequest, *,
                dry_run: bool) -> PatchResult:
    return PatchResult(str(plan.repository), str(plan.tag), str(plan.old) if plan.old else None,
                       str(plan.new), dry_run, registry=target.describe(), warnings=list(plan.warnings),
                       plan_text=plan.render(store.layout), requested_by=request.requested_by,
                       reason=request.reason)


def _fetch_stats(loaded: PatchBundle) -> list[dict]:
    """Bytes and throughput of each blob an S3 source fetched (none for local folders)."""
    stats = getattr(loaded.source, "fetch_stats", None) or {}
    return [dict(name=s.name, digest=s.digest, size=s.size, fetched=s.fetched, resumed=s.resumed,
                 from_cache=s.from_cache, seconds=round(s.seconds, 3), mb_per_s=round(s.mb_per_s, 1))
            for s in stats.values()]

