"""The rollback decided from the storage and the history (a journal only says what a killed run was
doing), and the one versioned format of history.jsonl. Kill points against a real registry:
tests/e2e/test_rollback_resume.py."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import REPO, TAG

from regpatch import engine
from regpatch.digest import Digest
from regpatch.errors import UsageError
from regpatch.hooks import install_checkpoint_hook
from regpatch.reference import Repository, Tag
from regpatch.storage.history import ACTIONS, HISTORY_VERSION, HistoryEntry, read_history, render_history
from regpatch.storage.journal import Journal

R, T = Repository(REPO), Tag(TAG)


def rollback(site, to=None) -> engine.RollbackResult:
    return engine.rollback(engine.RollbackRequest(R, T, site.request().target, to=to))


def actions(site) -> list[tuple]:
    return [(e.action, e.old, e.new) for e in read_history(site.layout, REPO, TAG)]


def test_a_second_rollback_is_a_no_op_that_says_so_and_going_further_back_needs_to(site):
    engine.patch(site.request())
    first = rollback(site)
    assert first.changed and site.current() == str(site.old).encode()
    again = rollback(site)
    assert not again.changed and again.note and "nothing to do" in again.summary_line()
    assert f"the patch to {site.new} was undone" in again.summary_line() and "--to" in again.summary_line()
    assert site.current() == str(site.old).encode()
    assert actions(site)[-2:] == [("patch", str(site.old), str(site.new)), ("rollback", str(site.new), str(site.old))]
    assert len(actions(site)) == 3  # the site's first patch, the patch, one rollback
    # a patch that created its tag has nothing before it: refused, --to named
    engine.patch(site.request(tag="fresh"))
    with pytest.raises(UsageError, match="created the tag: there is no earlier image to go back to; name one with"):
        engine.rollback(engine.RollbackRequest(R, Tag("fresh"), site.request(tag="fresh").target))


def test_a_plain_rollback_undoes_the_last_patch_not_the_last_change(site, tmp_path):
    engine.patch(site.request())                           # old -> new
    rollback(site)                                         # new -> old
    engine.patch(site.request())                           # old -> new again (the rolled-back image)
    result = rollback(site)
    assert result.changed and (result.old, result.new) == (str(site.new), str(site.old))
    assert not rollback(site).changed                      # and not back to new


def test_a_tag_another_writer_moved_is_not_guessed_at(site):
    engine.patch(site.request())
    site.layout.tag_current_link(R, T).write_bytes(str(Digest.of_bytes(b"pushed by someone")).encode())
    with pytest.raises(UsageError, match="did not set: another writer moved it; name the image to go back to"):
        rollback(site)


def test_to_names_any_image_and_its_second_run_says_there_is_nothing_to_do(site):
    engine.patch(site.request())
    assert rollback(site, to=site.old).changed
    again = rollback(site, to=site.old)
    assert not again.changed and "rolled back to it on" in again.summary_line()
    assert [a for a, _, _ in actions(site)].count("rollback") == 1


class Killed(BaseException):
    """Stands for a SIGKILL in-process (the e2e test kills the process for real)."""


def test_a_rollback_stopped_after_its_move_is_finished_and_recorded_once(site):
    engine.patch(site.request())

    def kill_after_the_move(label: str) -> None:
        if label == "wrote link":
            raise Killed()

    install_checkpoint_hook(kill_after_the_move)
    try:
        with pytest.raises(Killed):
            rollback(site)
    finally:
        install_checkpoint_hook(None)
    assert site.current() == str(site.old).encode()          # moved
    assert actions(site)[-1][0] == "patch"                  # not recorded
    journal = Journal.load(site.layout.rollback_journal(R, T))
    assert journal is not None and journal.kind == "rollback" and journal.status != "complete"
    assert journal.target == str(site.old) and journal.old == str(site.new)
    assert Journal.load(site.layout.journal(R, T)).kind == "patch"  # the patch's journal is its own
    finished = rollback(site)
    assert finished.changed and (finished.old, finished.new) == (str(site.new), str(site.old))
    assert actions(site)[-1] == ("rollback", str(site.new), str(site.old))
    assert Journal.load(site.layout.rollback_journal(R, T)).status == "complete"
    assert not rollback(site).changed
    assert [a for a, _, _ in actions(site)].count("rollback") == 1


def test_without_its_journal_a_tag_already_back_is_not_recorded_as_a_rollback(site):
    """The storage decides, the journal only says what was under way: the tag holds the image
    before the patch and no rollback says why (another writer?): nothing is done or recorded."""
    engine.patch(site.request())
    site.layout.tag_current_link(R, T).write_bytes(str(site.old).encode())
    result = rollback(site)
    assert not result.changed and "no rollback of that patch is recorded" in result.summary_line()
    assert actions(site)[-1][0] == "patch"


# --------------------------------------------------------------------------- the history's format

def line(**fields) -> str:
    return json.dumps(fields)


def test_history_lines_carry_a_version_and_old_lines_still_read(site, caplog):
    engine.patch(site.request())
    written = site.layout.history.read_text().splitlines()
    assert all(json.loads(l)["v"] == HISTORY_VERSION for l in written)
    assert list(json.loads(written[-1]))[:1] == ["v"]
    base = dict(time="2025-01-01T00:00:00+00:00", repository=REPO, tag=TAG, old=None, new=str(site.new),
                action="patch", source="0.1", actor="me")
    with open(site.layout.history, "a") as f:
        f.write(line(**base) + "\n")                                           # regpatch 0.1: no v
        f.write(line(**{**base, "v": 7, "action": "retagged", "requested_by": "ops"}) + "\n")  # a newer one
        f.write(line(**{**base, "v": 1, "action": "retagged"}) + "\n")          # unknown in this version
        f.write(line(**{**base, "v": 1, "other": 5}) + "\n")                   # wrong type
        f.write(line(**{**base, "v": "1"}) + "\n")                             # wrong type
        f.write(line(**{**base, "v": 1, "action": "raced", "other": "sha256:nope"}) + "\n")  # bad digest
    with caplog.at_level(logging.WARNING, logger="regpatch.state"):
        entries = read_history(site.layout, REPO, TAG)
    tail = entries[-2:]
    assert (tail[0].v, tail[0].action, tail[0].other) == (0, "patch", None)
    assert (tail[1].v, tail[1].action) == (7, "retagged")  # a newer version's action, its unknown field ignored
    warned = [r.getMessage() for r in caplog.records if "is not a history entry" in r.getMessage()]
    assert len(warned) == 4 and any("unknown action 'retagged'" in w for w in warned)
    assert any("'other' is not a string" in w for w in warned) and any("'v' is not a version" in w for w in warned)
    render_history(entries)


def test_a_raced_line_shows_the_other_writer(site):
    other = Digest.of_bytes(b"theirs")
    e = HistoryEntry("t", REPO, TAG, str(site.old), str(site.new), "raced", "bundle", "me", other=str(other))
    assert e.notes() == f"other writer {other}"
    assert f"(other writer {other})" in render_history([e])
    assert "raced" in ACTIONS and json.loads(e.to_json())["other"] == str(other)


def test_a_credential_never_reaches_a_history_line(site):
    from regpatch.storage.history import record_history
    from regpatch.storage.store import RegistryStore

    record_history(RegistryStore(site.root), R, T, site.old, site.new, action="patch",
                   source="https://alice:s3cretpw@reg.example/bundle")
    assert "s3cretpw" not in site.layout.history.read_text()
    assert "https://alice:***@reg.example/bundle" in render_history(read_history(site.layout))


def test_a_rollback_journal_of_the_wrong_kind_is_ignored_not_fatal(site, caplog):
    engine.patch(site.request())
    path = site.layout.rollback_journal(R, T)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"repository": REPO, "tag": TAG, "target": 5, "old": ["x"], "source": "s",
                                "runs": "many", "kind": "rollback"}))
    with caplog.at_level(logging.WARNING):
        assert rollback(site).changed
    assert f"journal {path} is not one regpatch wrote (its field 'target' is not a string): set aside as {path}.bad-" in caplog.text
    assert Journal.load(path).status == "complete"
    aside = list(path.parent.glob(f"{path.name}.bad-*"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["runs"] == "many"  # kept, never deleted
