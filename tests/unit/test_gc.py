"""regpatch gc's pieces that need no registry: the maintenance gate against the repository locks,
and the reading of garbage-collect's output (a helper's output is untrusted input)."""

from __future__ import annotations

import threading

import pytest

from regpatch.engine.gc import _eligible
from regpatch.errors import GcRefused, LockTimeout
from regpatch.platform.children import Output
from regpatch.reference import Repository
from regpatch.storage.layout import Layout
from regpatch.storage.lock import maintenance_window, repository_lock

R = Repository.parse("servercore")
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _out(*lines: str) -> Output:
    data = "\n".join(lines).encode()
    return Output(data, len(data))


def test_no_repository_lock_is_taken_while_a_maintenance_window_is_open(tmp_path):
    layout = Layout(tmp_path)
    with maintenance_window(layout, timeout=1):
        with pytest.raises(LockTimeout, match="maintenance window"):
            with repository_lock(layout, R, timeout=0.3):
                pass
    with repository_lock(layout, R, timeout=1):  # the window closed: the gate is open again
        pass


def test_a_maintenance_window_waits_for_the_run_that_holds_a_repository(tmp_path):
    layout = Layout(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def patch() -> None:
        with repository_lock(layout, R, timeout=1):
            holding.set()
            release.wait(5)

    t = threading.Thread(target=patch)
    t.start()
    holding.wait(5)
    try:
        with pytest.raises(LockTimeout, match="before the maintenance window"):
            with maintenance_window(layout, timeout=0.3):
                pass
    finally:
        release.set()
        t.join()
    with maintenance_window(layout, timeout=1):
        pass


def test_garbage_collects_list_is_read_exactly_and_checked_against_its_own_count():
    summary = "3 blobs marked, 2 blobs and 0 manifests eligible for deletion"
    ok = _out("servercore", "servercore: marking manifest " + D1, summary,
              "blob eligible for deletion: " + D1, "blob eligible for deletion: " + D2)
    assert [str(d) for d in _eligible(ok, "gc")] == [D1, D2]
    with pytest.raises(GcRefused, match="said 2 blob.* listed 1"):
        _eligible(_out(summary, "blob eligible for deletion: " + D1), "gc")
    with pytest.raises(GcRefused, match="not a digest"):
        _eligible(_out(summary.replace("2 blobs and", "1 blobs and"), "blob eligible for deletion: ../../x"), "gc")
    with pytest.raises(GcRefused, match="no '... eligible for deletion' summary"):
        _eligible(_out("blob eligible for deletion: " + D1), "gc")
    with pytest.raises(GcRefused, match="1 manifest"):  # only --delete-untagged deletes manifests
        _eligible(_out("1 blobs marked, 0 blobs and 1 manifests eligible for deletion"), "gc")
