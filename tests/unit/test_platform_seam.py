"""The platform seam's runner and reader on real processes and files (both implementations:
under ``--windows-api`` these run the Windows one)."""

from __future__ import annotations

import os
import signal
import threading
import time
import tracemalloc

import pytest

from regpatch import interrupt, platform
from regpatch.errors import Interrupted, StorageError, UsageError
from regpatch.platform import children
from regpatch.platform.ownfiles import read_own_file


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while platform.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not platform.pid_alive(pid)


# -- the runner ------------------------------------------------------------------------------------

def test_a_child_printing_512_mib_costs_a_few_chunks_of_memory():
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        done = children.run(["head", "-c", str(512 << 20), "/dev/zero"], stdout=children.Capture(1 << 20),
                            stderr=children.Capture(4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.returncode == 0 and done.stdout.total == 512 << 20 and len(done.stdout.data) == 1 << 20
    assert done.stdout.truncated and done.stdout.data == b"\0" * (1 << 20)
    assert peak < 4 << 20, f"peak {peak:,} B"
    assert time.monotonic() - t0 < 30


def test_the_tail_of_a_stream_is_kept_and_stdin_is_fed():
    done = children.run(["sh", "-c", "cat; seq 1 100000 >&2; exit 4"], input=b"host:5000",
                        stdout=children.Capture(100), stderr=children.Capture(30, "tail"))
    assert done.returncode == 4 and done.status() == "exited with code 4"
    assert done.stdout.data == b"host:5000" and not done.stdout.truncated
    assert done.stderr.lines()[-1] == "100000" and len(done.stderr.data) == 30 and done.stderr.truncated


def test_a_timeout_kills_the_tree_and_says_so(tmp_path):
    pids = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(children.ChildTimeout, match="did not finish within 0.5 s"):
        children.run(f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait", shell=True, timeout=0.5,
                     kill_grace=1)
    assert time.monotonic() - t0 < 5
    assert all(_gone(int(p)) for p in pids.read_text().split())


def test_what_a_child_leaves_running_is_killed_or_kept(tmp_path):
    pidfile = tmp_path / "pid"
    children.run(f"sleep 300 > /dev/null 2>&1 & echo $! > {pidfile}", shell=True)
    assert _gone(int(pidfile.read_text()))
    children.run(f"sleep 300 > /dev/null 2>&1 & echo $! > {pidfile}", shell=True, leftovers="keep")
    kept = int(pidfile.read_text())
    try:
        time.sleep(0.3)
        assert platform.pid_alive(kept)
    finally:
        platform.kill_process(kept)


def test_a_leftover_holding_the_pipe_does_not_hold_the_run(tmp_path):
    t0 = time.monotonic()
    done = children.run("echo started >&2; sleep 30 & true", shell=True, stderr=children.Capture(100, "tail"),
                        leftovers="kill")
    assert done.returncode == 0 and done.stderr.lines() == ["started"]
    assert time.monotonic() - t0 < children.DRAIN_GRACE + 3


def test_a_stop_request_interrupts_the_wait(tmp_path):
    threading.Timer(0.3, interrupt.request_stop, args=(signal.SIGTERM,)).start()
    try:
        with pytest.raises(Interrupted) as e:
            children.run(["sleep", "300"])
        assert e.value.exit_code == 143
    finally:
        interrupt.reset()


def test_a_missing_program_is_the_os_error_of_the_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        children.run([str(tmp_path / "no-such-program")])


# -- the reader of regpatch's own files ----------------------------------------------------------------

def test_an_own_file_is_read_whole_and_a_missing_one_is_none(tmp_path):
    path = tmp_path / "journal.json"
    path.write_bytes(b'{"a": 1}')
    assert read_own_file(path, 100) == b'{"a": 1}'
    assert read_own_file(tmp_path / "missing", 100) is None
    assert read_own_file(path, 8) == b'{"a": 1}'


def test_an_own_file_larger_than_its_limit_is_refused_with_the_callers_error(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"x" * 101)
    with pytest.raises(StorageError, match=r"history file .* is larger than 100 bytes"):
        read_own_file(path, 100, what="history file")
    with pytest.raises(UsageError, match="signing key"):
        read_own_file(path, 100, what="signing key", error=UsageError)


def test_a_folder_or_a_link_in_place_of_an_own_file_is_refused(tmp_path):
    (tmp_path / "marker").mkdir()
    with pytest.raises(StorageError, match="is a folder, not a regular file"):
        read_own_file(tmp_path / "marker", 100, what="verified-blob marker")
    (tmp_path / "secret").write_text("not regpatch's")
    (tmp_path / "journal.json").symlink_to(tmp_path / "secret")
    with pytest.raises(StorageError, match="is a symbolic link; regpatch never follows"):
        read_own_file(tmp_path / "journal.json", 100, what="journal")


@pytest.mark.posix_only  # a FIFO
def test_a_fifo_in_place_of_an_own_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "registry.pid"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="is a FIFO, not a regular file"):
        read_own_file(fifo, 64, what="pidfile")
    assert time.monotonic() - t0 < 2


def test_positional_reads_read_where_they_are_told(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 16)
    fd = platform.open_file(path, os.O_RDONLY)
    try:
        assert platform.pread(fd, 4, 300) == bytes([44, 45, 46, 47])
        view = memoryview(bytearray(10))
        assert platform.pread_into(fd, view, 4090) == 6 and bytes(view[:6]) == bytes(range(250, 256))
        assert platform.pread(fd, 10, 5000) == b""
    finally:
        os.close(fd)
