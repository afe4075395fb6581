"""The patch and the rollback of one registry, whole, in plain Python.

``patch(request, observer)`` and ``rollback(request, observer)`` are the only
places that decide the order of a run (docs/architecture.md, "The engine"):

    fetch-bundle     open the bundle; with trust keys (or a regpatch-bundle.json) check
                     its signature, listing and base blobs (``signing.check_bundle``)
                     before anything is staged; read its manifests
    plan-patch       resolve every descriptor against bundle and storage; probe the
                     registry API (credentials, TLS) when one is given
    verify-digests   hash every blob; bundle blobs are staged while hashed
    copy-blobs       1. blob data                          (the write order of docs/architecture.md)
    write-links      2. _layers  3. revisions (children of an index first)
    restart-registry only when a restart strategy is given
    verify-pull      the new image by digest through the registry API, every byte
                     re-hashed, then the operator's --verify-command on repo@digest
    publish-tag      4. the tag index link  5. current/link, only if the tag still holds
                     what was planned (``tags.flip_tag``: a compare-and-swap that sees
                     another writer's push and reports it, never overwrites it
                     silently); then the registry must serve the new digest for the tag

The storage is the only source of truth: every run plans against what the storage
holds now, and skips only what it finds there (verified-blob markers speed up the
hashing of unchanged files, they never stand in for a missing one). The journal
says what a run did for the operator and for ``resume`` messages; it never makes a
step skip work. The one shortcut: the verification pull is not repeated when the
storage already holds the whole patch, the tag points at it, and the last complete
run of this tag proved that digest through the same registry URL.

``rollback(request, observer)`` undoes the last patch the history records (or moves the tag
to ``--to``): it is decided from the storage and the history, so a second run is a no-op
that says so, and a run killed after its move is finished by the same command, which
records it once (its journal only says what a killed run was doing).

The caller's ``Observer`` sees every step (Prefect turns them into task runs, the
command line into log lines); the engine works the same with any observer.
"""

from regpatch.engine.observer import LogObserver, Observer
from regpatch.engine.patch_run import PATCH_STEPS, ROLLBACK_STEPS, open_bundle, patch, preflight
from regpatch.engine.requests import PatchRequest, RollbackRequest
from regpatch.engine.results import PatchResult, RollbackResult
from regpatch.engine.rollback_run import rollback

__all__ = ["LogObserver", "Observer", "PATCH_STEPS", "ROLLBACK_STEPS", "PatchRequest", "PatchResult",
           "RollbackRequest", "RollbackResult", "open_bundle", "patch", "preflight", "rollback"]
