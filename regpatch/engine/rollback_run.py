"""The rollback of one registry: choose the image (history or ``--to``), check it is complete, pull it
by digest, then move the tag back if nobody moved it meanwhile."""

from __future__ import annotations

import logging
from typing import Optional

from regpatch.engine.observer import LogObserver, Observer, _Steps
from regpatch.engine.requests import RollbackRequest
from regpatch.engine.results import RollbackResult, _write_report
from regpatch.engine.tags import check_complete_image, flip_tag, rollback_target
from regpatch.engine.verify import check_tag_served, restart_registry, verify_new_image
from regpatch.storage.history import record_history
from regpatch.storage.lock import repository_lock

log = logging.getLogger("regpatch.engine")


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
                               source=f"regpatch rollback{' {opt.to} ' + str(request.to) if request.to else ''}",
                               requested_by=request.requested_by, reason=request.reason)
            check_tag_served(target, repo, tag, dest)
            return changed

        changed = steps("flip-tag", flip)
    result = RollbackResult(str(repo), str(tag), str(current) if current else None, str(dest), changed,
                            registry=target.describe(), verified=verified.summary() if verified else None,
                            seconds=steps.seconds, requested_by=request.requested_by, reason=request.reason)
    _write_report(store, repo, tag, result)
    log.info("%s:%s rolled back: %s -> %s", repo, tag, result.old, result.new)
    return result

