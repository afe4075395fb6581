"""The rollback of one registry: choose the image (the undo of the last patch in the history, or
``--to``), check it is complete, pull it by digest, then move the tag back if nobody moved it
meanwhile, and record it once.

Resumable and idempotent like the patch: the storage and the history decide. The tag holds the
image already and the history's last line is this rollback: nothing to do, said so. The tag
holds it and the rollback's journal says a rollback to it was under way (killed after its move,
before its history line): the same command finishes it, the history line written once.
"""

from __future__ import annotations

import logging
from typing import Optional

from regpatch import interrupt
from regpatch.digest import Digest
from regpatch.engine.observer import LogObserver, Observer, _Steps
from regpatch.engine.requests import RollbackRequest
from regpatch.engine.results import RollbackResult, _write_report
from regpatch.engine.tags import RollbackChoice, check_complete_image, choose_rollback, flip_tag
from regpatch.engine.verify import check_tag_served, restart_registry, verify_new_image
from regpatch.errors import Interrupted, RegpatchError
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.storage.history import record_history
from regpatch.storage.journal import Journal
from regpatch.storage.lock import repository_lock
from regpatch.storage.names import check_names
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.engine")


def rollback(request: RollbackRequest, observer: Optional[Observer] = None) -> RollbackResult:
    """Point the tag back at an earlier image: the one before the last patch (history) or
    ``request.to``. The image is checked complete in the storage and pulled by digest
    before the tag moves; the tag moves only if nobody moved it meanwhile."""
    request.check()
    observer = observer or LogObserver()
    steps = _Steps(observer)
    target, repo, tag = request.target, request.repository, request.tag
    store = target.store()
    check_names(store.layout, repo, tag)
    if target.url:
        with target.client() as client:
            client.check()
    store.claim_state_dir()
    with repository_lock(store.layout, repo, timeout=request.lock_timeout):
        previous = _previous_journal(store, repo, tag)
        choice = steps("choose-rollback-target", lambda: choose_rollback(store, repo, tag, request.to, previous))
        if choice.done:
            log.info("%s", choice.done)
            _close_finished(store, previous, choice)
            result = _result(request, choice, changed=False, note=choice.done, seconds=steps.seconds)
        else:
            result = _roll_back(request, store, choice, previous, steps)
    _write_report(store, repo, tag, result)
    log.info("%s", result.summary_line())
    return result


def _roll_back(request: RollbackRequest, store: RegistryStore, choice: RollbackChoice, previous: Optional[Journal],
               steps: _Steps) -> RollbackResult:
    target, repo, tag, dest = request.target, request.repository, request.tag, choice.dest
    source = f"regpatch rollback{f' {opt.to} {request.to}' if request.to else ''}"
    journal = _open_journal(store, repo, tag, choice, previous, source)
    log.info("%s:%s: %s -> %s%s", repo, tag, choice.old or "(no tag)", dest,
             " (finishing a rollback that moved the tag and was stopped before its history line)"
             if choice.finish else "")
    try:
        top = steps("check-image", lambda: check_complete_image(store, repo, dest))
        log.info("%s@%s is complete (%s)", repo, dest, top.media_type)
        journal.mark(store, "check image")
        steps("restart-registry", lambda: restart_registry(request.restart, target))
        verified = steps("verify-pull", lambda: verify_new_image(store, target, repo, dest, 0,
                                                                 request.verify_command, steps.progress))
        journal.mark(store, "verify pull")

        def flip() -> bool:
            moved = not choice.finish and flip_tag(store, repo, tag, dest, expected=choice.current,
                                                   doing="rollback", source=source).moved
            if moved or choice.finish:
                record_history(store, repo, tag, choice.old, dest, action="rollback", source=source,
                               requested_by=request.requested_by, reason=request.reason)
            check_tag_served(target, repo, tag, dest)
            return moved or choice.finish

        changed = steps("flip-tag", flip)
        journal.status = "complete"
    except BaseException as e:
        journal.status = "interrupted" if (isinstance(e, (Interrupted, KeyboardInterrupt))
                                           or interrupt.stopping()) else "failed"
        journal.error = str(e) if isinstance(e, RegpatchError) else type(e).__name__
        raise
    finally:
        journal.save(store)
    return _result(request, choice, changed=changed, verified=verified.summary() if verified else None,
                   seconds=steps.seconds)


def _open_journal(store: RegistryStore, repo: Repository, tag: Tag, choice: RollbackChoice,
                  previous: Optional[Journal], source: str) -> Journal:
    """The rollback's journal: the unfinished one of the same rollback, resumed, or a new one.
    Saved before the tag moves, so that a run killed after the move can be finished."""
    if previous is not None and previous.target == str(choice.dest) and previous.status != "complete" \
            and previous.old == (str(choice.old) if choice.old else None):
        previous.runs += 1
        previous.status, previous.error = "running", None
        log.info("resuming the rollback of %s:%s to %s started %s (run %d)", repo, tag, choice.dest,
                 previous.started, previous.runs)
        previous.save(store)
        return previous
    journal = Journal(repo.name, tag.name, str(choice.dest), str(choice.old) if choice.old else None, source,
                      kind="rollback")
    journal.save(store)
    return journal


def _previous_journal(store: RegistryStore, repo: Repository, tag: Tag) -> Optional[Journal]:
    """The tag's last rollback journal, if it is one regpatch wrote (every field of its kind);
    else None, with a warning: the storage and the history decide without it."""
    path = store.layout.rollback_journal(repo, tag)
    j = Journal.load(path)
    if j is None:
        return None
    texts = all(isinstance(v, str) for v in (j.repository, j.tag, j.target, j.source, j.status))
    ok = texts and isinstance(j.runs, int) and isinstance(j.steps, list) and isinstance(j.old, (str, type(None)))
    try:
        ok = ok and Digest.parse(j.target) is not None and (j.old is None or Digest.parse(j.old) is not None)
    except RegpatchError:
        ok = False
    if not ok:
        log.warning("%s is not a rollback journal as regpatch writes it (a field of the wrong kind): ignored, the "
                    "storage and the history decide", path)
        return None
    return j


def _close_finished(store: RegistryStore, previous: Optional[Journal], choice: RollbackChoice) -> None:
    """A rollback killed after its history line left its journal 'running': it is done (the
    storage and the history say so), and the journal says so now."""
    if choice.recorded and previous is not None and previous.target == str(choice.dest) \
            and previous.status != "complete":
        previous.status, previous.error = "complete", None
        previous.save(store)


def _result(request: RollbackRequest, choice: RollbackChoice, *, changed: bool, verified: Optional[str] = None,
            note: Optional[str] = None, seconds: Optional[dict] = None) -> RollbackResult:
    return RollbackResult(str(request.repository), str(request.tag), str(choice.old) if choice.old else None,
                          str(choice.dest), changed, registry=request.target.describe(), verified=verified,
                          note=note, seconds=seconds or {}, requested_by=request.requested_by,
                          reason=request.reason)
