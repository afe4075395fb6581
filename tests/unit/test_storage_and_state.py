"""The storage and regpatch's own state on real folders: what is refused before any
write, what is re-checked at every run, how temp files, locks, journals and history
behave, and the hash-while-copy every blob goes through."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, TAG

from regpatch import engine, platform
from regpatch.digest import Digest
from regpatch.errors import (
    DigestMismatch,
    InvalidReference,
    LockTimeout,
    MalformedLink,
    NoSpace,
    SizeMismatch,
    StorageError,
    StorageNotFound,
    UnsafePath,
    os_error,
)
from regpatch.hashing import copy_and_hash, hash_file, kernel_copy_and_hash
from regpatch.reference import Repository, Tag
from regpatch.storage.history import previous_digest, read_history, record_history, render_history
from regpatch.storage.journal import Journal, open_journal, was_verified
from regpatch.storage.layout import Layout
from regpatch.storage.lock import repository_lock
from regpatch.storage.state import actor
from regpatch.storage.store import TMP_MARK, RegistryStore, sweep_temp_files

R, T = Repository(REPO), Tag(TAG)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- the storage root

def test_the_storage_root_must_be_the_registrys_rootdirectory(site, tmp_path):
    with pytest.raises(StorageNotFound, match="is not a directory; pass the 'rootdirectory'"):
        RegistryStore(tmp_path / "absent")
    with pytest.raises(StorageNotFound, match="looks like docker/registry/v2 itself"):
        RegistryStore(site.v2)
    with pytest.raises(StorageNotFound, match="looks like the 'docker' folder; pass its parent"):
        RegistryStore(site.root / "docker")
    assert RegistryStore(site.root).root == site.root


def test_a_symlink_leading_out_of_the_storage_is_refused_before_any_write(site, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (site.v2 / "repositories" / "evil").symlink_to(outside, target_is_directory=True)
    before = site.docker_hash()
    with pytest.raises(UnsafePath, match="resolves to .*outside, outside the registry storage"):
        engine.patch(site.request(repository="evil"))
    assert site.docker_hash() == before and list(outside.iterdir()) == []
    with pytest.raises(UnsafePath, match="outside the registry storage"):
        RegistryStore(site.root).write_file(tmp_path / "elsewhere.txt", b"x")
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_utf16_tag_link_written_by_powershell_is_replaced_by_the_patch(site, caplog):
    link = site.layout.tag_current_link(R, T)
    link.write_text(str(site.old), encoding="utf-16")  # what Out-File writes on Windows PowerShell 5
    with pytest.raises(StorageError, match="does not hold 'sha256:<hex>' .*a UTF-16 or newline-terminated link"):
        RegistryStore(site.root).read_link(link)
    with caplog.at_level(logging.WARNING, logger="regpatch.store"):
        result = engine.patch(site.request())
    assert "regpatch replaces it when it moves the tag" in caplog.text
    assert result.tag_moved and link.read_bytes() == str(site.new).encode("ascii")


# --------------------------------------------------------------------------- blobs are re-checked

def test_verified_markers_only_skip_files_that_did_not_change(site):
    store = RegistryStore(site.root)
    layer = site.scenario["old"].layers[0]
    seen = []
    assert store.verify_blob(layer.digest, layer.size, progress=seen.append) is True
    assert seen == []  # unchanged since it was installed and verified: not hashed again
    data = site.layout.blob_data(layer.digest)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert store.verify_blob(layer.digest, layer.size, progress=seen.append) is True
    assert sum(seen) == layer.size  # touched: hashed again, every byte
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch, match=f"registry blob blobs/sha256/{layer.digest.hex[:2]}"):
        store.verify_blob(layer.digest, layer.size)
    assert store.verify_blob(Digest.of_bytes(b"absent"), 6) is False


def test_reads_and_writes_of_the_storage_are_bounded_and_idempotent(site):
    store = RegistryStore(site.root)
    old = site.scenario["old"]
    with pytest.raises(StorageError, match=f"blob {old.manifest_digest} in the registry is larger than 10 bytes"):
        store.read_blob(old.manifest_digest, 10)
    with pytest.raises(StorageError, match="internal: manifest bytes do not hash to"):
        store.write_manifest_blob(old.manifest_digest, b"other bytes")
    assert store.write_manifest_blob(old.manifest_digest, old.manifest_bytes) is False
    assert store.write_link(site.layout.tag_current_link(R, T), site.old) is False
    assert store.current_tag(R, Tag("never-pushed")) is None


def test_a_stream_that_is_no_file_is_staged_while_hashed(site):
    store = RegistryStore(site.root)
    data = os.urandom(100_000)
    digest = Digest.of_bytes(data)
    staged = store.stage_blob(digest, len(data), lambda: io.BytesIO(data), what="stream")
    assert staged.read_bytes() == data and store.staged_path(digest) == staged
    other = Digest.of_bytes(b"something else")
    with pytest.raises(DigestMismatch, match="digest mismatch for stream"):
        store.stage_blob(other, len(data), lambda: io.BytesIO(data), what="stream")
    assert store.staged_path(other) is None
    assert not [p for p in site.layout.staging.iterdir() if p.name.startswith(TMP_MARK)]


def test_a_staged_blob_that_vanished_is_an_error_unless_the_blob_is_in_place(site, tmp_path):
    store = RegistryStore(site.root)
    missing = Digest.of_bytes(b"never staged")
    with pytest.raises(StorageError, match="disappeared before it could be installed.*run the patch again"):
        store.install_staged(missing, tmp_path / "gone", size=12)
    assert store.blob_size(missing) is None


def test_a_state_folder_on_another_filesystem_still_installs_blobs(site):
    """--state-dir elsewhere (here tmpfs): staged blobs cannot be renamed into the storage,
    they are copied (and hashed again) instead; the lock stays with the storage."""
    if os.stat("/dev/shm").st_dev == os.stat(site.root).st_dev:
        pytest.fail("/dev/shm and the test's tmp folder are one filesystem: the copy path is not exercised")
    state = Path(tempfile.mkdtemp(prefix="regpatch-state-", dir="/dev/shm"))
    try:
        result = engine.patch(site.request(state_dir=str(state)))
        assert result.tag_moved and len(result.blobs_copied) == 3
        for b in site.scenario["new"].blobs:
            assert site.layout.blob_data(b.digest).read_bytes() == b.path.read_bytes()
        assert not [p for p in (state / "staging").iterdir() if not p.name.endswith(".json")]
        assert (state / "history.jsonl").is_file() and (site.root / ".regpatch/locks").is_dir()
    finally:
        shutil.rmtree(state)


def test_temp_files_of_dead_runs_are_swept_and_live_ones_kept(site):
    folder = site.v2 / "repositories" / REPO
    dead = folder / f"{TMP_MARK}{dead_pid()}-abc"
    live = folder / f"{TMP_MARK}{os.getpid()}-def"
    odd = folder / f"{TMP_MARK}notapid-ghi"
    for p in (dead, live, odd):
        p.write_bytes(b"half a link")
    RegistryStore(site.root).write_file(folder / "note", b"x")
    assert not dead.exists() and live.exists() and odd.exists()
    assert sweep_temp_files(site.root / "absent") == 0
    live.unlink()
    odd.unlink()
    (folder / "note").unlink()


def test_write_errors_name_the_path_and_what_to_do():
    """(Every errno is mapped, see test_hardening_storage.py.)"""
    path = Path("/srv/registry/docker/registry/v2/blobs/sha256/ab/abcd/data")
    for code in (errno.ENOSPC, errno.EDQUOT):
        err = os_error(OSError(code, os.strerror(code)), doing="writing", path=path)
        assert isinstance(err, NoSpace) and f"writing {path} failed" in str(err) and "free space" in str(err)
        assert err.exit_code == 4
    err = os_error(OSError(errno.EROFS, "Read-only file system"), doing="writing", path=path)
    assert type(err) is StorageError and str(err).startswith(f"writing {path} failed: [EROFS] Read-only")
    err = os_error(OSError(errno.EIO, "Input/output error"), doing="writing", path=path)
    assert type(err) is StorageError and "[EIO]" in str(err) and err.exit_code == 4


# --------------------------------------------------------------------------- locks, journal, history

def test_a_waiting_run_says_who_holds_the_lock(site):
    messages = []
    with repository_lock(site.layout, R, timeout=5):
        holder = site.layout.lock(R).read_text()
        assert f"pid {os.getpid()} since " in holder
        with pytest.raises(LockTimeout) as e:
            with repository_lock(site.layout, R, timeout=0.3, on_wait=messages.append):
                pass
    assert messages == [holder] and f"being patched by another run ({holder}); waited 0s" in str(e.value)
    released = threading.Event()
    with repository_lock(site.layout, R, timeout=1):  # free again once the holder left
        released.set()
    assert released.is_set()


def test_a_lock_that_cannot_be_created_is_a_storage_error(tmp_path):
    (tmp_path / ".regpatch").write_text("a file where regpatch keeps its state")
    with pytest.raises(StorageError, match=r"creating the (repository|storage.s maintenance) lock .* failed .*\[ENOTDIR\] Not a directory"):
        with repository_lock(Layout(tmp_path), R):
            pass


def test_the_journal_resumes_only_the_same_unfinished_patch(site):
    store = RegistryStore(site.root)
    path = site.layout.journal(R, T)
    path.write_text("{not json")
    assert Journal.load(path) is None
    assert not path.exists() and len(list(path.parent.glob(f"{path.name}.bad-*"))) == 1  # set aside
    target = Digest.of_bytes(b"target")
    j, resumed = open_journal(store, R, T, target, site.old, "bundle")
    assert resumed is None and j.runs == 1
    j.status, j.error = "interrupted", "stopped"
    j.save(store)
    j2, resumed = open_journal(store, R, T, target, site.old, "bundle")
    assert resumed is j2 and (j2.runs, j2.status, j2.error) == (2, "running", None)
    other, resumed = open_journal(store, R, T, Digest.of_bytes(b"another"), site.old, "bundle")
    assert resumed is None and other.runs == 1


def test_only_a_complete_pull_through_the_same_url_counts_as_verified(site):
    store = RegistryStore(site.root)
    url = "http://127.0.0.1:5000"
    j = Journal(REPO, TAG, str(site.new), str(site.old), "bundle", status="complete", verified_url=url)
    j.save(store)
    assert was_verified(store, R, T, site.new, url)
    assert not was_verified(store, R, T, site.new, None)  # no URL: never verified
    assert not was_verified(store, R, T, site.new, "http://127.0.0.1:5001")
    assert not was_verified(store, R, T, site.old, url)
    j.status = "failed"
    j.save(store)
    assert not was_verified(store, R, T, site.new, url)


def test_history_is_read_strictly_and_rendered_for_people(site):
    layout = site.layout
    entries = read_history(layout, REPO, TAG)
    assert [e.action for e in entries] == ["patch"] and entries[0].old is None
    assert read_history(layout, "other") == [] and read_history(Layout(site.root / "nowhere")) == []
    store = RegistryStore(site.root)
    record_history(store, R, T, site.old, site.new, action="patch", source="bundle-2")
    with open(layout.history, "a") as f:
        f.write("\n")
    assert previous_digest(layout, R, T, site.new) == site.old
    assert previous_digest(layout, R, T, None) is None
    table = render_history(read_history(layout))
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "REPOSITORY:TAG", "ACTION", "OLD", "NEW", "SOURCE", "BY"]
    assert "(new tag)" in lines[1] and str(site.old)[:19] in lines[2] and "bundle-2" in lines[2]
    assert render_history([]) == "no tag changes recorded"
    with open(layout.history, "a") as f:
        f.write('{"time": "now"}\n{"time": "2026-11-29T01:')  # a bad line, then one torn by a crash
    assert len(read_history(layout)) == 2  # both skipped (with a warning), the others still count
    record_history(store, R, T, site.new, site.old, action="rollback", source="after a torn line")
    assert [e.action for e in read_history(layout)] == ["patch", "patch", "rollback"]  # not glued to it
    assert previous_digest(layout, R, T, site.old) == site.new
    # lines of the right shape but the wrong types or digests are skipped too, never a crash
    good = read_history(layout)
    with open(layout.history, "a") as f:
        f.write('{"time": 1, "repository": "servercore", "tag": "ltsc2019", "old": null, "new": 5, '
                '"action": "patch", "source": "x", "actor": "y"}\n')
        f.write('{"time": "t", "repository": "servercore", "tag": "ltsc2019", "old": "sha256:nothex", '
                f'"new": "{site.new}", "action": "patch", "source": "x", "actor": "y"}}\n[1, 2]\n')
    assert read_history(layout) == good
    render_history(read_history(layout))


def test_a_history_value_cannot_forge_a_line_or_drive_the_terminal(site):
    store = RegistryStore(site.root)
    forged = "evil\n2099-01-01T00:00:00+00:00  servercore:ltsc2019  rollback  FORGED\x1b[31m"
    record_history(store, R, T, site.new, site.old, action="patch", source=forged)
    table = render_history(read_history(site.layout))
    assert len(table.splitlines()) == 1 + len(read_history(site.layout))
    assert "\x1b" not in table and "evil\\n2099" in table and "FORGED\\x1b[31m" in table


def test_the_actor_names_the_user_host_pid_and_flow_run(monkeypatch):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b1c")
    assert actor().endswith(f"pid {os.getpid()} flow-run 0b1c")

    def no_passwd_entry():
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr("getpass.getuser", no_passwd_entry)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
    assert actor().startswith("unknown@" if platform.is_windows() else f"{os.getuid()}@")


# --------------------------------------------------------------------------- digests and copies

def test_digests_are_parsed_whole():
    d = Digest.parse("sha256:" + "a" * 64)
    assert (d.short, str(d)) == ("a" * 12, "sha256:" + "a" * 64)
    for bad, why in ((None, "expected a string"), ("a" * 64, "expected 'sha256:<64 lowercase hex>'"),
                     ("sha512:" + "a" * 128, "only sha256 digests are supported"),
                     ("sha256:" + "A" * 64, "64 lowercase hex"), ("sha256:" + "a" * 64 + "\n", "64 lowercase hex")):
        with pytest.raises(InvalidReference, match=why):
            Digest.parse(bad)


def test_copies_stop_at_the_first_wrong_byte_count_or_hash(tmp_path):
    data = os.urandom(3 << 20)
    digest = Digest.of_bytes(data)
    with pytest.raises(SizeMismatch, match=r"size mismatch for f: expected 1000 bytes, got \d+"):
        copy_and_hash(io.BytesIO(data), None, what="f", expected_size=1000)
    with pytest.raises(SizeMismatch, match=f"expected {len(data) + 1} bytes, got {len(data)}"):
        copy_and_hash(io.BytesIO(data), io.BytesIO(), what="f", expected_size=len(data) + 1)
    with pytest.raises(DigestMismatch, match=f"expected {Digest.of_bytes(b'x')}, got {digest} after {len(data)}"):
        copy_and_hash(io.BytesIO(data), None, what="f", expected=Digest.of_bytes(b"x"))

    class ReadOnly:  # a source with read() only, like some network bodies
        def __init__(self):
            self.f = io.BytesIO(data)

        def read(self, n):
            return self.f.read(n)

    assert copy_and_hash(ReadOnly(), None, what="f") == (digest, len(data))
    src = tmp_path / "src"
    src.write_bytes(data)
    assert hash_file(src, expected=digest, expected_size=len(data)) == (digest, len(data))


def test_a_failing_end_of_a_pipelined_copy_ends_it_with_that_error(tmp_path):
    data = os.urandom(9 << 20)
    readonly = tmp_path / "readonly"
    readonly.write_bytes(b"")
    with open(readonly, "rb") as dst:
        with pytest.raises(io.UnsupportedOperation):
            copy_and_hash(io.BytesIO(data), dst, what="f")

    class FailingDisk(io.RawIOBase):
        def __init__(self):
            self.calls = 0

        def readable(self):
            return True

        def readinto(self, b):
            self.calls += 1
            if self.calls == 2:
                raise OSError(errno.EIO, "Input/output error")
            b[:1024] = b"x" * 1024
            return 1024

    with pytest.raises(OSError, match="Input/output error"):
        copy_and_hash(FailingDisk(), io.BytesIO(), what="f")


@pytest.mark.posix_only  # Linux's copy_file_range (Windows copies through Python: test_platform_windows)
def test_the_kernel_copy_checks_what_landed(tmp_path):
    data = os.urandom(1 << 20)
    src = tmp_path / "src"
    src.write_bytes(data)
    digest = Digest.of_bytes(data)
    with open(src, "rb") as s, open(tmp_path / "dst", "w+b") as d:
        assert kernel_copy_and_hash(s.fileno(), d.fileno(), what="f", expected=digest,
                                    expected_size=len(data)) == (digest, len(data))
    with open(src, "rb") as s, open(tmp_path / "dst2", "w+b") as d:
        with pytest.raises(SizeMismatch, match=f"expected {len(data) - 10} bytes, got {len(data)}"):
            kernel_copy_and_hash(s.fileno(), d.fileno(), what="f", expected=None, expected_size=len(data) - 10)
    with open(src, "rb") as s, open(tmp_path / "dst3", "w+b") as d:
        with pytest.raises(DigestMismatch):
            kernel_copy_and_hash(s.fileno(), d.fileno(), what="f", expected=Digest.of_bytes(b"x"),
                                 expected_size=len(data))
    r, w = os.pipe()  # the kernel cannot copy from a pipe: the caller falls back
    try:
        os.write(w, b"abc")
        with open(tmp_path / "dst4", "w+b") as d:
            assert kernel_copy_and_hash(r, d.fileno(), what="f", expected=None, expected_size=3) is None
    finally:
        os.close(r)
        os.close(w)


def test_bytes_read_before_a_source_fails_are_all_written(tmp_path):
    """A download cut short keeps every byte that arrived (what a resume starts from),
    even when the destination is slower than the source."""
    chunk = os.urandom(1024)

    class CutShort(io.RawIOBase):
        def __init__(self):
            self.reads = 0

        def readable(self):
            return True

        def readinto(self, b):
            self.reads += 1
            if self.reads > 3:
                raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            b[:len(chunk)] = chunk
            return len(chunk)

    class SlowDisk(io.BytesIO):
        def write(self, b):
            time.sleep(0.1)
            return super().write(b)

    dst = SlowDisk()
    with pytest.raises(ConnectionResetError):
        copy_and_hash(CutShort(), dst, what="layer")
    assert dst.getvalue() == chunk * 3


def test_a_staged_blob_another_run_installed_at_once_does_not_fail_this_run(site):
    """Two patches of different repositories stage the same blob: the other run may rename
    this run's staged file into blobs/ right after it was written, before its verified
    marker is recorded. The marker is only a speed-up: its absence must not fail the run,
    and the install finds the blob in place and verifies it."""
    blob = site.scenario["new"].layers[0]
    first, second = RegistryStore(site.root), RegistryStore(site.root)
    staged = first.stage_blob(blob.digest, blob.size, lambda: open(blob.path, "rb"), what="base")
    assert second.install_staged(blob.digest, staged, size=blob.size) is True  # the other run was quicker
    first._remember_verified(blob.digest, staged)  # what stage_blob does right after its rename
    assert first.install_staged(blob.digest, staged, size=blob.size) is False
    assert site.layout.blob_data(blob.digest).read_bytes() == blob.path.read_bytes()


def test_the_tag_compared_with_the_registry_is_found_in_the_storage(site):
    """Before the first write a patch compares one tag the storage holds with what the
    registry serves for it: the patched tag, else another tag of the repository, else
    the first tagged repository (names that fail the grammar are passed over)."""
    store = RegistryStore(site.root)
    assert store.any_tag(prefer=(R, T)) == (R, T, site.old)
    assert store.tags(R) == [T] and store.tags(Repository("absent")) == []
    assert store.any_tag(prefer=(R, Tag("new-tag"))) == (R, T, site.old)
    assert store.any_tag(prefer=(Repository("other"), Tag("x"))) == (R, T, site.old)
    assert store.any_tag() == (R, T, site.old)
    (site.layout.tags_dir(R) / "Not a tag!").mkdir()
    (site.layout.tags_dir(R) / "no-current-link").mkdir()
    assert store.tags(R) == [T]
    (site.v2 / "repositories" / "Bad_Name" / "_manifests").mkdir(parents=True)
    shutil.move(str(site.layout.repository(R)), str(site.v2 / "repositories" / "windows" / REPO))
    assert store.any_tag() == (Repository(f"windows/{REPO}"), T, site.old)
    assert store.any_tag(max_dirs=1) is None  # the walk is bounded
    empty = site.root.parent / "empty"
    (empty / "docker/registry/v2").mkdir(parents=True)
    assert RegistryStore(empty).any_tag(prefer=(R, T)) is None


def test_the_tag_compared_with_the_registry_is_one_it_can_serve(site):
    """A tag whose revision link or manifest blob is gone (the registry answers
    MANIFEST_UNKNOWN for it) is never the one compared: another tag is, and a patch can
    repair the storage instead of calling it another registry's."""
    store = RegistryStore(site.root)
    other = Tag("other")
    store.write_link(site.layout.tag_current_link(R, other), site.old)
    revision = site.layout.revision_link(R, site.old)
    revision.unlink()
    assert store.any_tag(prefer=(R, T)) is None  # both tags name site.old: neither is servable
    store.write_link(revision, site.old)
    site.layout.tag_current_link(R, T).write_bytes(b"sha256:" + b"0" * 64 + b"\r\n")  # malformed
    assert store.any_tag(prefer=(R, T)) == (R, other, site.old)


def test_long_files_are_hashed_with_a_reader_thread_and_a_short_read_is_an_error(tmp_path):
    from regpatch.digest import CHUNK
    from regpatch.hashing import hash_fd

    data = os.urandom(3 * CHUNK + 12345)  # past the threshold: the pipelined reader
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen = []
    with open(path, "rb") as f:
        assert hash_fd(f.fileno(), what="blob", expected=Digest.of_bytes(data), expected_size=len(data),
                       progress=seen.append) == (Digest.of_bytes(data), len(data))
    assert sum(seen) == len(data) and max(seen) <= CHUNK
    from regpatch.digest import new_hasher
    from regpatch.hashing import _hash_range

    with open(path, "rb") as f:  # the file is shorter than the range asked: EIO from the reader thread
        with pytest.raises(OSError, match="short read of blob"):
            _hash_range(f.fileno(), new_hasher(), 0, len(data) + CHUNK, "blob", None, read_ahead=True)
    with open(path, "rb") as f:
        with pytest.raises(DigestMismatch):
            hash_fd(f.fileno(), what="blob", expected=Digest.of_bytes(b"x"), expected_size=len(data))
    assert not [t for t in threading.enumerate() if t.name == "hash-reader"]  # no reader left behind


def test_a_file_written_to_while_it_is_hashed_is_refused(tmp_path):
    """What was hashed must be what is there: a file that grew meanwhile is a size mismatch."""
    from regpatch.hashing import hash_fd

    path = tmp_path / "blob"
    data = os.urandom(3 << 20)
    path.write_bytes(data)

    def grow(n: int) -> None:
        if not grow.done:
            grow.done = True
            with open(path, "ab") as f:
                f.write(b"more")
    grow.done = False
    with open(path, "rb") as f:
        with pytest.raises(SizeMismatch):
            hash_fd(f.fileno(), what="blob", expected=Digest.of_bytes(data), expected_size=len(data), progress=grow)


def test_only_a_link_is_removed_and_never_through_a_planted_symlink(site, tmp_path):
    """``remove_link`` (prune's only delete): a link file inside the storage, its emptied folders
    with it; a blob, a malformed link or a path through a planted symlink is refused untouched."""
    store = RegistryStore(site.root)
    d = Digest.of_bytes(b"x")
    link = store.layout.revision_link(R, d)
    store.write_link(link, d)
    assert store.remove_link(link) is True and not link.parent.exists()
    assert (store.layout.repository(R) / "_manifests").is_dir()
    assert store.remove_link(link) is False  # gone already: a re-run has nothing to do
    with pytest.raises(StorageError, match="is not a link file"):
        store.remove_link(store.layout.blob_data(d))
    store.write_file(link, b"sha256:" + b"A" * 64)
    with pytest.raises(MalformedLink):
        store.remove_link(link)
    assert link.read_bytes() == b"sha256:" + b"A" * 64
    outside = tmp_path / "outside"
    (outside / "sha256" / d.hex).mkdir(parents=True)
    (outside / "sha256" / d.hex / "link").write_bytes(str(d).encode())
    evil = store.layout.repository(Repository("evil")) / "_manifests"
    evil.mkdir(parents=True)
    (evil / "revisions").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath):
        store.remove_link(store.layout.revision_link(Repository("evil"), d))
    assert (outside / "sha256" / d.hex / "link").exists()


@pytest.mark.posix_only  # (a FIFO)
def test_bad_own_files_are_set_aside_with_a_warning_and_the_run_goes_on(site, caplog):
    """issue 20 item 6: a journal with a field of the wrong type, a FIFO as journal or history:
    each renamed aside (never deleted) with one warning; the patch goes on, deciding from the storage."""
    import logging

    store = RegistryStore(site.root)
    path = site.layout.journal(R, T)
    good = Journal(REPO, TAG, str(site.new), str(site.old), "bundle")
    for bad, why in (({**good.__dict__, "steps": 5}, "its field 'steps' is not a list of strings"),
                     ({**good.__dict__, "runs": "2"}, "its field 'runs' is not a positive number"),
                     ({**good.__dict__, "target": "sha256:zz"}, "its digests are not sha256:<64 hex>"),
                     ([1, 2], "not a JSON object"),
                     ({"repository": REPO}, "not a journal: ")):
        for old in path.parent.glob("*.bad-*"):
            old.unlink()
        path.write_text(json.dumps(bad))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="regpatch.ownfiles"):
            assert Journal.load(path) is None
        assert f"journal {path} is not one regpatch wrote ({why}" in caplog.text and "set aside as" in caplog.text
        (aside,) = path.parent.glob(f"{path.name}.bad-*")
        assert json.loads(aside.read_text()) == bad and not path.exists()
    os.mkfifo(path)
    history = site.layout.history
    history.rename(history.with_name("history.kept"))
    os.mkfifo(history)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="regpatch.ownfiles"):
        j, resumed = open_journal(store, R, T, site.new, site.old, "bundle")  # never blocks on the FIFO
        assert resumed is None and path.is_file()
        assert read_history(site.layout) == []
    assert f"journal {path} is not one regpatch wrote (a FIFO, not a regular file): set aside as" in caplog.text
    assert f"history file {history} is not one regpatch wrote (a FIFO, not a regular file): set aside as" in caplog.text
    assert len(list(history.parent.glob("history.jsonl.bad-*"))) == 1 and not history.exists()


def test_a_lock_whose_file_vanished_is_not_a_free_lock(site):
    """issue 20 item 6: the lock file removed during a run: the holder never passes its commit
    point (the tag flip) and says why; a second run takes its lock on the file now at the path."""
    from regpatch.engine.tags import flip_tag
    from regpatch.errors import LockLost
    from regpatch.storage.lock import check_lock_held

    store = RegistryStore(site.root)
    path = site.layout.lock(R)
    with repository_lock(site.layout, R, timeout=1):
        check_lock_held(site.layout, R)  # its own file: held
        path.unlink()  # removed by hand during the run
        with pytest.raises(LockLost, match=f"the lock file {path} of repository {REPO} was removed or replaced during "
                                           "this run: another run may be writing .*nothing was moved") as e:
            flip_tag(store, R, T, site.new, site.old)
        assert "\n" not in str(e.value)
    assert site.current() == str(site.old).encode()  # the tag did not move
    with repository_lock(site.layout, R, timeout=1):  # the next run locks the file now at the path
        check_lock_held(site.layout, R)
        assert path.is_file()
