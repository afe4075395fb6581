"""The tag's compare-and-swap (``storage.tagswap`` through ``engine.tags.flip_tag``), on real files:
another writer writes ``current/link`` at each point of the flip (installed at the flip's named hook
points, as a concurrent push would write it) and the flip refuses before writing, or reports the
race (TagRaced, a 'raced' history line) and leaves the tag alone; it never returns as if nothing
happened. The same race against a real registry PUT: tests/e2e/test_tag_race.py."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from conftest import REPO, TAG

from regpatch import engine
from regpatch.cli import main
from regpatch.digest import Digest
from regpatch.engine.tags import flip_tag
from regpatch.errors import TagMoved, TagRaced
from regpatch.hooks import install_hook_point
from regpatch.reference import Repository, Tag
from regpatch.storage import tagswap
from regpatch.storage.history import read_history
from regpatch.storage.store import RegistryStore

R, T = Repository(REPO), Tag(TAG)
OTHER = Digest.of_bytes(b"the other writer's manifest")
OURS = Digest.of_bytes(b"regpatch's manifest")


@pytest.fixture(autouse=True)
def _no_hooks():
    yield
    for name in ("tag-flip:read", "tag-flip:swap", "tag-flip:swapped"):
        install_hook_point(name, None)


def current_path(site):
    return site.layout.tag_current_link(R, T)


def write_in_place(path, digest: Digest) -> None:
    """As registry 2.8 writes a link (PutContent): open the file, truncate it, write, sync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(digest).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_by_rename(path, digest: Digest) -> None:
    """As distribution 3 (or another tool) writes a link: a temp file renamed over it."""
    tmp = path.with_name("link.other.tmp")
    tmp.write_bytes(str(digest).encode())
    os.replace(tmp, path)


def flip(site, to: Digest = OURS):
    return flip_tag(RegistryStore(site.root), R, T, to, expected=site.old, source="test")


def no_temp_files(site) -> bool:
    return not [p for p in site.root.rglob("*") if ".regpatch-tmp-" in p.name]


def test_a_flip_nobody_races_moves_the_tag_and_says_which_links_it_wrote(site):
    result = flip(site)
    assert result.moved and current_path(site).read_bytes() == str(OURS).encode()
    assert [site.layout.relative(p) for p in result.links_written] == [
        site.layout.relative(site.layout.tag_index_link(R, T, OURS)), site.layout.relative(current_path(site))]
    assert stat.S_IMODE(current_path(site).stat().st_mode) == 0o644
    assert no_temp_files(site)
    assert not flip(site).moved  # already there: nothing written


@pytest.mark.parametrize("writer", [write_in_place, write_by_rename])
def test_a_write_between_the_read_and_the_last_check_is_refused_with_nothing_written(site, writer):
    install_hook_point("tag-flip:read", lambda: writer(current_path(site), OTHER))
    with pytest.raises(TagMoved) as e:
        flip(site)
    assert str(site.old) in str(e.value) and str(OTHER) in str(e.value)
    assert "when the patch was planned" in str(e.value)
    assert current_path(site).read_bytes() == str(OTHER).encode()  # left as the other writer set it
    assert [h.action for h in read_history(site.layout, REPO, TAG)] == ["patch"]  # no line: nothing moved
    assert no_temp_files(site)


@pytest.mark.posix_only  # the held current/link and renameat2's exchange: POSIX only (Windows keeps the checks before the move)
@pytest.mark.parametrize("writer", [write_in_place, write_by_rename])
def test_a_write_between_the_last_check_and_the_rename_is_reported_never_lost_silently(site, writer):
    """The window no check can close: the other writer's link is displaced by the rename. The
    flip sees it (the inode it read, held open; the displaced file of the exchange), records the
    race and stops; the tag keeps regpatch's digest and the operator decides."""
    install_hook_point("tag-flip:swap", lambda: writer(current_path(site), OTHER))
    with pytest.raises(TagRaced) as e:
        flip(site)
    assert e.value.others == (OTHER,) and e.value.holds == OURS and e.value.exit_code == 4
    assert str(OURS) in str(e.value) and str(OTHER) in str(e.value) and "did not move it again" in str(e.value)
    assert current_path(site).read_bytes() == str(OURS).encode()
    last = read_history(site.layout, REPO, TAG)[-1]
    assert (last.action, last.old, last.new, last.other) == ("raced", str(site.old), str(OURS), str(OTHER))
    assert no_temp_files(site)


@pytest.mark.posix_only  # the held current/link and renameat2's exchange: POSIX only (Windows keeps the checks before the move)
def test_a_write_into_the_displaced_link_after_the_rename_is_reported(site):
    """Registry 2.8 writes in place: a push that opened current/link before the rename writes
    the old inode after it. regpatch holds that inode open and reads it again."""
    held: dict = {}
    install_hook_point("tag-flip:swap", lambda: held.setdefault("fd", os.open(current_path(site), os.O_WRONLY)))

    def late_write() -> None:
        os.ftruncate(held["fd"], 0)
        os.write(held["fd"], str(OTHER).encode())
        os.close(held["fd"])

    install_hook_point("tag-flip:swapped", late_write)
    with pytest.raises(TagRaced) as e:
        flip(site)
    assert e.value.others == (OTHER,) and e.value.holds == OURS


def test_a_write_over_the_new_link_after_the_rename_is_reported(site):
    install_hook_point("tag-flip:swapped", lambda: write_in_place(current_path(site), OTHER))
    with pytest.raises(TagRaced) as e:
        flip(site)
    assert e.value.holds == OTHER and e.value.others == (OTHER,)
    assert f"holds {OTHER} now" in str(e.value)


def test_a_push_whose_index_link_lands_in_the_window_is_reported(site):
    """A registry push writes the tag's index link first: one written while the tag moves is a
    push whose current/link write may have gone to the displaced link."""
    index = site.layout.tag_index_link(R, T, OTHER)

    def index_write() -> None:
        index.parent.mkdir(parents=True)
        index.write_bytes(str(OTHER).encode())

    install_hook_point("tag-flip:swapped", index_write)
    with pytest.raises(TagRaced) as e:
        flip(site)
    assert e.value.others == (OTHER,)


def test_a_push_in_flight_is_waited_for_then_refused(site):
    """An index link newer than current/link is a push between its two writes: the flip waits
    for its current/link write and then refuses, nothing written."""
    index = site.layout.tag_index_link(R, T, OTHER)
    index.parent.mkdir(parents=True)
    time.sleep(0.02)
    index.write_bytes(str(OTHER).encode())
    writer = threading.Timer(0.2, lambda: write_in_place(current_path(site), OTHER))
    writer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TagMoved):
            flip(site)
    finally:
        writer.join()
    assert 0.15 < time.monotonic() - t0 < tagswap.PENDING_WINDOW
    assert current_path(site).read_bytes() == str(OTHER).encode()


def test_a_push_that_died_between_its_two_writes_delays_the_flip_only_for_a_while(site, monkeypatch):
    monkeypatch.setattr(tagswap, "PENDING_WINDOW", 0.3)
    index = site.layout.tag_index_link(R, T, OTHER)
    index.parent.mkdir(parents=True)
    time.sleep(0.02)
    index.write_bytes(str(OTHER).encode())
    t0 = time.monotonic()
    assert flip(site).moved
    assert 0.2 < time.monotonic() - t0 < 2
    assert current_path(site).read_bytes() == str(OURS).encode()


@pytest.mark.posix_only  # the held current/link and renameat2's exchange: POSIX only (Windows keeps the checks before the move)
def test_a_new_tag_is_never_created_over_one_another_writer_just_created(site):
    new = Tag("brand-new")
    path = site.layout.tag_current_link(R, new)
    install_hook_point("tag-flip:swap", lambda: (path.parent.mkdir(parents=True, exist_ok=True),
                                                 path.write_bytes(str(OTHER).encode())))
    with pytest.raises(TagMoved) as e:
        flip_tag(RegistryStore(site.root), R, new, OURS, expected=None)
    assert e.value.found == OTHER and path.read_bytes() == str(OTHER).encode()


@pytest.mark.posix_only  # the held current/link and renameat2's exchange: POSIX only (Windows keeps the checks before the move)
def test_without_renameat2_an_in_place_write_is_still_reported(site, monkeypatch):
    """Where the exchange is not available (another kernel, NFS), os.replace moves the link and the
    held inode still shows an in-place write (the registry's way)."""
    from regpatch.platform import _posix

    monkeypatch.setattr(_posix, "_renameat2", False)
    install_hook_point("tag-flip:swap", lambda: write_in_place(current_path(site), OTHER))
    with pytest.raises(TagRaced) as e:
        flip(site)
    assert e.value.others == (OTHER,)
    assert no_temp_files(site)


def test_the_messages_say_what_was_moving_the_tag(site):
    rollback = str(TagMoved(R, T, site.old, OTHER, doing="rollback", to=OURS))
    assert "during this rollback" in rollback and "when the rollback chose its image" in rollback
    assert "patch" not in rollback
    restore = str(TagMoved(R, T, OURS, OTHER, doing="restore", to=site.old))
    assert f"put it back on {site.old}" in restore and f"did not serve {OURS}" in restore
    assert "when the patch was planned" not in restore


@pytest.mark.posix_only  # the held current/link and renameat2's exchange: POSIX only (Windows keeps the checks before the move)
def test_a_raced_patch_exits_4_naming_both_digests_and_a_rerun_does_not_move_the_tag(site, capsys):
    """Through the command line: the race is an error (exit 4, one line, both digests), the
    history says 'raced', and the tag is left as found."""
    install_hook_point("tag-flip:swap", lambda: write_in_place(current_path(site), OTHER))
    code = main(["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO,
                 "--tag", TAG])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 4 and str(site.new) in err and str(OTHER) in err and "raced" in err
    assert read_history(site.layout, REPO, TAG)[-1].action == "raced"
    assert current_path(site).read_bytes() == str(site.new).encode()
    install_hook_point("tag-flip:swap", None)
    # a plain rollback does not choose between the two writers
    with pytest.raises(Exception, match="race with another writer"):
        engine.rollback(engine.RollbackRequest(R, T, site.request().target))
