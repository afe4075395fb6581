"""The Windows rules of the platform seam, on any machine: the Windows implementation over the
test kit's recording doubles of the Win32 calls (``support.win32double``), and the Win32
code itself (``regpatch.platform._win32``) over doubles of kernel32 and advapi32."""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import signal
import sys
import threading
import time

import pytest
from support.win32double import RecordingWin32, fake_win32, pointee

from regpatch import interrupt, platform
from regpatch.cli.console import fit, survive_any_code_page
from regpatch.errors import FileInUse, Interrupted, RestartError, UsageError, VerificationError
from regpatch.hashing import kernel_copy_and_hash
from regpatch.params import has_inline_credentials, refuse_inline_credentials
from regpatch.platform import _win32, children
from regpatch.platform._windows import (
    CLOSE_GRACE,
    CREATE_BREAKAWAY_FROM_JOB,
    CREATE_NEW_PROCESS_GROUP,
    CREATE_SUSPENDED,
    CTRL_BREAK_EVENT,
    CTRL_C_EVENT,
    CTRL_CLOSE_EVENT,
    CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
    DETACHED_PROCESS,
    LOCK_OFFSET,
    SIGBREAK,
    WindowsPlatform,
    cmd_quote,
)
from regpatch.platform.ownfiles import read_own_file
from regpatch.platform.stopflag import mark_finished
from regpatch.registry.credentials import load_credentials
from regpatch.registry.processes import looks_like_registry, read_pidfile, start_detached
from regpatch.registry.restart import ProcessRestart
from regpatch.registry.verify_command import run_verify_command
from regpatch.signing.keys import generate_keypair, load_private_key
from regpatch.storage.files import TMP_MARK, sweep_temp_files


# the doubles emulate Win32 with Linux calls (also under --windows-api); a Windows runner makes the real calls
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Win32 emulated with Linux calls")


@pytest.fixture
def win():
    """The Windows implementation over a fresh recording double, for one test."""
    native = RecordingWin32()
    before = platform.use(WindowsPlatform(native))
    try:
        yield native
    finally:
        platform.use(before)
        interrupt.reset()


# -- replacing a file another program holds open ------------------------------------------------

def test_a_sharing_violation_is_retried_until_the_file_is_free(win, tmp_path):
    src, dst = tmp_path / "new", tmp_path / "link"
    src.write_bytes(b"sha256:new")
    dst.write_bytes(b"sha256:old")
    win.fail_replace(32, 32, 5)  # the registry (Go: no FILE_SHARE_DELETE), then a scanner
    platform.replace(src, dst, timeout=5)
    assert dst.read_bytes() == b"sha256:new" and not src.exists()
    assert len(win.called("replace")) == 4


@pytest.mark.parametrize("winerror", [32, 5])
def test_a_file_that_stays_in_use_is_named_in_use_not_unix_permissions(win, tmp_path, winerror):
    src, dst = tmp_path / "new", tmp_path / "link"
    src.write_bytes(b"x")
    win.fail_replace(*[winerror] * 1000)
    t0 = time.monotonic()
    with pytest.raises(FileInUse) as e:
        platform.replace(src, dst, timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 3
    message = str(e.value)
    assert e.value.exit_code == 4 and "\n" not in message
    assert f"replacing {dst} failed: another program holds it open" in message and f"WinError {winerror}" in message
    assert "chmod" not in message and "permission denied" not in message.lower()
    assert src.exists()  # nothing lost: the same command runs again


def test_a_stop_request_ends_the_retries(win, tmp_path):
    src, dst = tmp_path / "new", tmp_path / "link"
    src.write_bytes(b"x")
    win.fail_replace(*[32] * 1000)
    threading.Timer(0.3, interrupt.request_stop, args=(signal.SIGTERM,)).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        platform.replace(src, dst, timeout=30)
    assert time.monotonic() - t0 < 3


def test_other_permission_errors_are_not_retried(win, tmp_path):
    with pytest.raises(FileNotFoundError):
        platform.replace(tmp_path / "missing", tmp_path / "dst", timeout=30)
    assert len(win.called("replace")) == 1


# -- cmd.exe and environment references -----------------------------------------------------------

def test_cmd_quoting_of_a_reference():
    ref = "127.0.0.1:5000/servercore@sha256:" + "a" * 64
    assert cmd_quote(ref) == f'"{ref}"'
    assert cmd_quote("a b&c|d<e>f(g)^h") == '"a b&c|d<e>f(g)^h"'  # literal inside quotes for cmd.exe
    assert cmd_quote("C:\\dir\\") == '"C:\\dir\\\\"'  # a trailing backslash would escape the quote
    assert cmd_quote("") == '""'
    for bad in ('a"b', "%PATH%", "a!b", "a\nb"):
        with pytest.raises(ValueError, match="cmd.exe cannot take"):
            cmd_quote(bad)


def test_the_verify_command_gets_the_reference_quoted_for_cmd(win, tmp_path):
    out = tmp_path / "args"
    run_verify_command(f"printf '%s\\n' {{ref}} > {out}", "127.0.0.1:5000/r@sha256:" + "0" * 64)
    popen = win.called("popen")[0]
    assert '"127.0.0.1:5000/r@sha256:' in popen.args[0]  # cmd.exe quoting, not shlex's single quotes
    assert out.read_text() == "127.0.0.1:5000/r@sha256:" + "0" * 64 + "\n"
    with pytest.raises(VerificationError, match="cannot be given to the verify command"):
        run_verify_command("x {ref}", "a%PATH%b")


def test_percent_names_are_environment_references_like_dollar_names():
    for text in ("skopeo inspect --creds %REG_USER%:%REG_PASS% docker://{ref}",
                 "docker login -p %REG_PASS% host", "curl --password=%PW% x", "REGISTRY_PASSWORD=%PW% cmd {ref}",
                 "skopeo inspect --creds $U:$P docker://{ref}"):
        assert not has_inline_credentials(text), text
        refuse_inline_credentials("--verify-command", text)
    for text in ("skopeo inspect --creds user:s3cret docker://{ref}", "docker login -p s3cret host",
                 "REGISTRY_PASSWORD=s3cret cmd", "curl --password=%notaname x"):
        assert has_inline_credentials(text), text
    with pytest.raises(UsageError, match=r"write \$NAME \(or %NAME% for cmd.exe\)"):
        refuse_inline_credentials("--verify-command", "docker login -p s3cret host")


# -- children: a Job Object per child ----------------------------------------------------------------

def test_a_child_runs_in_a_job_created_suspended_and_closed(win):
    done = children.run(["sh", "-c", "echo out; exit 3"], stdout=children.Capture(100))
    assert done.returncode == 3 and done.stdout.data == b"out\n"
    names = [c.name for c in win.calls]
    assert names[:4] == ["create_job", "popen", "assign_to_job", "resume"]
    job = win.called("create_job")[0].args[0]
    flags = win.called("popen")[0].kwargs["creationflags"]
    assert flags & CREATE_SUSPENDED and flags & CREATE_NEW_PROCESS_GROUP
    assert [c.args for c in win.called("close_handle")] == [(job,)]  # closed: what is left in it ends
    assert win.called("terminate_job")  # leftovers="kill": the job is ended after the child


def test_a_stop_ends_the_whole_job_and_raises_interrupted(win, tmp_path):
    pids = tmp_path / "pids"
    threading.Timer(0.5, interrupt.request_stop, args=(signal.SIGINT,)).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e:
        children.run(f"sh -c 'sleep 300 & echo $! >> {pids}; sleep 300' & echo $! >> {pids}; wait", shell=True)
    assert e.value.exit_code == 130 and time.monotonic() - t0 < 5
    assert win.called("terminate_job")
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while win.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not win.process_alive(pid), f"{pid} outlived the stop"


def test_a_restart_command_keeps_what_it_started(win, tmp_path):
    done = children.run("true", shell=True, leftovers="keep")
    assert done.returncode == 0
    job = win.called("create_job")[0].args[0]
    assert [c.args for c in win.called("release_job")] == [(job,)] and not win.called("terminate_job")


def test_the_registry_is_started_out_of_the_job_and_without_a_console(win, tmp_path):
    pid = start_detached(["sleep", "30"], log_path=tmp_path / "registry.log")
    try:
        flags = win.called("popen")[0].kwargs["creationflags"]
        assert flags == CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS | CREATE_BREAKAWAY_FROM_JOB
        assert not win.called("create_job")
    finally:
        platform.kill_process(pid)


def test_a_job_that_forbids_breakaway_starts_the_registry_in_it_with_a_warning(win, tmp_path, caplog):
    real = win.popen
    seen = []

    def popen(args, *, creationflags, **kwargs):
        seen.append(creationflags)
        if creationflags & CREATE_BREAKAWAY_FROM_JOB:
            e = PermissionError(13, "Access is denied")
            e.winerror = 5
            raise e
        return real(args, creationflags=creationflags, **kwargs)

    win.popen = popen
    pid = start_detached(["sleep", "30"], log_path=tmp_path / "registry.log")
    platform.kill_process(pid)
    assert seen == [CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS | CREATE_BREAKAWAY_FROM_JOB,
                    CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS]
    assert "ends when that job does" in caplog.text


def test_a_pid_is_the_registry_only_when_its_image_is_the_binary(win):
    win.images[4242] = "C:\\Program Files\\registry\\registry.exe"
    assert looks_like_registry(4242) and looks_like_registry(4242, "C:\\registry\\REGISTRY.EXE")
    assert looks_like_registry(4242, "registry")
    assert not looks_like_registry(4242, "docker-registry")
    win.images[4243] = "C:\\Windows\\notepad.exe"
    win.images[4244] = None  # not ours to ask: never stopped
    assert not looks_like_registry(4243) and not looks_like_registry(4244)


def test_temp_files_of_a_killed_run_are_swept_by_the_process_check(win, tmp_path):
    gone = children.run(["sh", "-c", "echo $$"], stdout=children.Capture(32))
    dead = int(gone.stdout.data)
    (tmp_path / f"{TMP_MARK}{dead}-abc").write_bytes(b"x")
    (tmp_path / f"{TMP_MARK}{os.getpid()}-abc").write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"{TMP_MARK}{os.getpid()}-abc"]
    assert {c.args[0] for c in win.called("process_alive")} == {dead, os.getpid()}


# -- files: locks, markers, keys, positional reads ----------------------------------------------------

def test_the_lock_is_far_beyond_the_holders_text_which_stays_readable(win, tmp_path):
    path = tmp_path / "repo.lock"
    fd = platform.open_nofollow(path, os.O_RDWR | os.O_CREAT)
    other = platform.open_nofollow(path, os.O_RDWR)
    try:
        assert platform.try_lock(fd)
        os.lseek(fd, 0, os.SEEK_SET)  # (as storage.lock writes the holder)
        os.write(fd, b"root@host pid 1 since now")
        assert not platform.try_lock(other)  # per handle, as on Windows
        assert read_own_file(path, 4096) == b"root@host pid 1 since now"
        platform.unlock(fd)
        assert platform.try_lock(other)
    finally:
        os.close(fd)
        os.close(other)
    offsets = {c.kwargs["offset"] for c in win.called("locking")}
    assert offsets == {LOCK_OFFSET} and LOCK_OFFSET > 1 << 20


def test_a_marker_is_not_trusted_where_nothing_proves_the_file_unchanged(win, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"data")
    ident = platform.file_identity(path, os.stat(path))
    assert ident is not None and "change" in ident and "ctime_ns" not in ident  # st_ctime: a creation time
    win.change_times = False  # FAT, exFAT, some shares: no change time
    assert platform.file_identity(path, os.stat(path)) is None


def test_keygen_writes_the_private_key_owner_only_before_any_byte(win, tmp_path):
    key, pub = generate_keypair(tmp_path / "site")
    acl = win.called("set_owner_only")
    assert [c.args[0] for c in acl] == [str(key)] and acl[0].kwargs["size"] == 0
    assert load_private_key(key) is not None and pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")


def test_positional_reads_match_and_never_mix_between_threads(win, tmp_path):
    data = os.urandom(1 << 20)
    path = tmp_path / "archive"
    path.write_bytes(data)
    fd = platform.open_file(path, os.O_RDONLY)
    errors = []

    def reader(seed: int) -> None:
        for i in range(200):
            offset = (seed * 7919 + i * 4099) % (len(data) - 512)
            if platform.pread(fd, 512, offset) != data[offset:offset + 512]:
                errors.append(offset)

    try:
        threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert platform.pread(fd, 100, len(data) - 10) == data[-10:]
    finally:
        os.close(fd)
    assert errors == []


def test_a_link_planted_at_an_own_file_is_refused(win, tmp_path):
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / "journal.json").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as e:
        platform.open_nofollow(tmp_path / "journal.json", os.O_RDONLY)
    assert e.value.errno == errno.ELOOP


# -- the user's folders, the console ------------------------------------------------------------------

def test_docker_credentials_are_found_in_the_user_profile(win, tmp_path):
    profile = tmp_path / "Users" / "operator"
    (profile / ".docker").mkdir(parents=True)
    (profile / ".docker" / "config.json").write_text(json.dumps({"auths": {"reg:5000": {"auth": "dTpwdw=="}}}))
    creds = load_credentials("reg:5000", env={"USERPROFILE": str(profile), "HOME": str(tmp_path / "nothing")})
    assert creds is not None and (creds.username, creds.password) == ("u", "pw")


def test_ctrl_break_and_the_consoles_close_stop_the_run(win):
    got = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        platform.install_stop_handlers(got.append)
        assert win.called("on_break") and win.called("on_console_event")
        win.break_handler(SIGBREAK, None)
        assert got == [signal.SIGINT]  # Ctrl-Break: as Ctrl-C (exit 130)
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_console_close_handler_waits_for_the_run_to_unwind(win):
    stops = []
    handler = platform.current().console_handler(stops.append)
    assert handler(CTRL_C_EVENT) is False and handler(CTRL_BREAK_EVENT) is False and stops == []
    threading.Timer(0.3, mark_finished).start()
    t0 = time.monotonic()
    assert handler(CTRL_CLOSE_EVENT) is True
    assert stops == [signal.SIGTERM] and 0.2 < time.monotonic() - t0 < CLOSE_GRACE
    assert handler(CTRL_SHUTDOWN_EVENT) is True  # (already finished: at once)
    win.console_window = False  # a service: another user's logoff is not ours
    assert handler(CTRL_LOGOFF_EVENT) is False and stops == [signal.SIGTERM, signal.SIGTERM]


def test_output_fits_any_console_code_page():
    table = "old → new\n"
    cp1252 = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    assert fit(table, cp1252) == "old -> new\n"
    assert fit(table, io.TextIOWrapper(io.BytesIO(), encoding="utf-8")) == table


def test_stdout_survives_a_code_page_that_cannot_write_a_name(monkeypatch):
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp437")
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", io.TextIOWrapper(io.BytesIO(), encoding="cp437"))
    survive_any_code_page()
    out.write("rollout of репо → ok\n")
    out.flush()
    assert out.buffer.getvalue() == "rollout of ???? ? ok\n".encode("cp437")


# -- the Win32 code itself, over doubles of kernel32 and advapi32 ---------------------------------------

def test_a_job_kills_its_processes_when_closed_and_can_let_them_go():
    win32, k32, _, _ = fake_win32()
    k32.CreateJobObjectW.result = 0x100
    limits = []
    k32.SetInformationJobObject.effect = lambda job, cls, info, size: limits.append(
        (job, cls, pointee(info).BasicLimitInformation.LimitFlags, size)) or 1
    assert win32.create_job() == 0x100
    win32.release_job(0x100)
    size = ctypes.sizeof(_win32.JOBOBJECT_EXTENDED_LIMIT_INFORMATION)
    assert limits == [(0x100, 9, 0x2000, size), (0x100, 9, 0, size)]
    assert k32.CreateJobObjectW.restype is ctypes.c_void_p  # a HANDLE is never cut to 32 bits
    k32.OpenProcess.result = 0x200
    win32.assign_to_job(0x100, 4242)
    assert k32.calls("OpenProcess")[-1] == (0x0100 | 0x0001, False, 4242)
    assert k32.calls("AssignProcessToJobObject") == [(0x100, 0x200)] and (0x200,) in k32.calls("CloseHandle")
    win32.terminate_job(0x100, 1)
    assert k32.calls("TerminateJobObject") == [(0x100, 1)]


def test_a_suspended_child_is_resumed_by_its_own_thread_only():
    win32, k32, _, _ = fake_win32()
    k32.CreateToolhelp32Snapshot.result = 0x300
    threads = iter([(1, 11), (4242, 7), (4242, 8)])

    def next_thread(snapshot, entry):
        try:
            owner, tid = next(threads)
        except StopIteration:
            return 0
        pointee(entry).th32OwnerProcessID, pointee(entry).th32ThreadID = owner, tid
        return 1

    k32.Thread32First.effect = k32.Thread32Next.effect = next_thread
    k32.OpenThread.effect = lambda access, inherit, tid: 0x400 + tid
    win32.resume(4242)
    assert k32.calls("ResumeThread") == [(0x407,), (0x408,)]
    assert {(0x407,), (0x408,), (0x300,)} <= set(k32.calls("CloseHandle"))


def test_the_private_key_acl_grants_the_current_user_alone():
    win32, k32, adv, _ = fake_win32()
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"

    def token_info(token, cls, buf, size, needed):
        if buf is None:
            pointee(needed).value = 16
            return 0
        ctypes.c_void_p.from_buffer(buf).value = 0xABC
        return 1

    def sid_text(psid, out):
        assert psid.value == 0xABC
        pointee(out).value = sid
        return 1

    def descriptor(sddl, revision, out, size):
        pointee(out).value = 0x5000
        return 1

    adv.GetTokenInformation.effect = token_info
    adv.ConvertSidToStringSidW.effect = sid_text
    adv.ConvertStringSecurityDescriptorToSecurityDescriptorW.effect = descriptor
    adv.GetSecurityDescriptorDacl.effect = lambda sd, present, dacl, defaulted: setattr(pointee(dacl), "value",
                                                                                      0x6000) or 1
    adv.SetNamedSecurityInfoW.result = 0
    win32.set_owner_only("C:\\keys\\site.key")
    assert adv.calls("ConvertStringSecurityDescriptorToSecurityDescriptorW")[0][:2] == (f"D:P(A;;FA;;;{sid})", 1)
    path, kind, flags, owner, group, dacl, sacl = adv.calls("SetNamedSecurityInfoW")[0]
    assert (path, kind, flags, owner, group, sacl) == ("C:\\keys\\site.key", 1, 0x80000004, None, None, None)
    assert dacl.value == 0x6000
    assert len(k32.calls("LocalFree")) == 2  # the SID's text and the descriptor
    adv.SetNamedSecurityInfoW.result = 5
    with pytest.raises(OSError) as e:
        win32.set_owner_only("C:\\keys\\site.key")
    assert e.value.winerror == 5 and "owner-only ACL" in str(e.value.strerror)


def test_process_queries_tell_gone_from_not_ours():
    win32, k32, _, state = fake_win32()
    k32.OpenProcess.result = None
    state["last_error"] = 87  # ERROR_INVALID_PARAMETER: no such process
    assert win32.process_alive(4242) is False and win32.process_image(4242) is None
    with pytest.raises(ProcessLookupError):
        win32.terminate_process(4242)
    state["last_error"] = 5  # ERROR_ACCESS_DENIED: another user's
    assert win32.process_alive(4242) is True
    with pytest.raises(PermissionError):
        win32.terminate_process(4242)
    k32.OpenProcess.result = 0x500
    k32.WaitForSingleObject.result = 0x102  # WAIT_TIMEOUT: still running
    assert win32.process_alive(4242) is True
    k32.WaitForSingleObject.result = 0
    assert win32.process_alive(4242) is False


def test_the_change_time_comes_from_the_file_basic_info():
    win32, k32, _, _ = fake_win32()
    k32.CreateFileW.result = _win32.INVALID_HANDLE_VALUE
    assert win32.change_time("C:\\missing") is None
    k32.CreateFileW.result = 0x600
    k32.GetFileInformationByHandleEx.effect = lambda h, cls, info, size: setattr(pointee(info), "ChangeTime",
                                                                                 133_000_000_000_000_000) or 1
    assert win32.change_time("C:\\registry\\data") == 133_000_000_000_000_000
    assert k32.calls("CreateFileW")[-1][1:] == (0x80, 7, None, 3, 0x02000000, None)  # attributes only, share all


def test_the_console_handler_is_kept_alive_and_answers_the_event():
    win32, k32, _, _ = fake_win32()
    seen = []
    win32.on_console_event(lambda event: seen.append(event) or event == CTRL_CLOSE_EVENT)
    callback, add = k32.calls("SetConsoleCtrlHandler")[0]
    assert add is True and callback(CTRL_CLOSE_EVENT) == 1 and callback(CTRL_C_EVENT) == 0 and seen == [2, 0]


def test_the_win32_api_is_windows_only():
    if os.name != "nt":
        with pytest.raises(OSError, match="Windows only"):
            _win32.load()


def test_a_process_restart_stops_the_registry_by_its_image_and_starts_it_again(win, tmp_path):
    binary = tmp_path / "registry.exe"  # a stand-in under the name the image check wants
    binary.write_text("#!/bin/sh\necho \"stand-in $* started\"\nwhile :; do sleep 0.1; done\n")
    binary.chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    pidfile = tmp_path / "registry.pid"
    old = start_detached([str(binary), "serve", str(config)], log_path=tmp_path / "old.log", pidfile=pidfile)
    win.images[old] = str(binary).upper()  # its image path (compared as Windows does: without case)
    strategy = ProcessRestart(pidfile, config, binary=str(binary), log=tmp_path / "registry.log")
    try:
        # started after the pidfile was written: its pid was reused, it is not the registry the pidfile names
        win.created[old] = int((os.stat(pidfile).st_mtime + 60) * 1e7) + 116_444_736_000_000_000
        with pytest.raises(RestartError, match=f"pid {old} in .* is not the registry it names \\(it started at "
                                               ".*after the pidfile was written .*its pid was reused"):
            strategy.restart()
        assert platform.pid_alive(old) and not win.called("terminate_process")
        del win.created[old]
        strategy.restart()
        new = strategy.last_pid
        assert new != old and read_pidfile(pidfile) == new
        assert [c.args for c in win.called("terminate_process")] == [(old,)]  # no gentler stop there
        assert not platform.pid_alive(old) and platform.pid_alive(new)
        # a stale pidfile naming someone else's process: never ended
        win.images[new] = "C:\\Windows\\System32\\svchost.exe"
        with pytest.raises(RestartError, match=r"is not the registry it names \(it runs 'C:\\\\Windows"):
            strategy.restart()
        assert platform.pid_alive(new)
    finally:
        for pid in (old, strategy.last_pid):
            if pid and platform.pid_alive(pid):
                platform.kill_process(pid)


def test_windows_copies_through_python_with_no_kernel_copy_or_reflink(win, tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as s, open(tmp_path / "dst", "w+b") as d:
        assert kernel_copy_and_hash(s.fileno(), d.fileno(), what="f", expected=None, expected_size=len(data)) is None
        assert platform.reflink(s.fileno(), d.fileno()) is False
        assert os.fstat(d.fileno()).st_size == 0  # nothing written: the caller copies


def test_a_link_another_program_holds_open_is_removed_once_it_is_free(win, tmp_path):
    link = tmp_path / "link"
    link.write_bytes(b"sha256:old")
    win.fail_remove(32, 32)
    platform.remove(link, timeout=5)
    assert not link.exists() and len(win.called("remove")) == 3
    link.write_bytes(b"sha256:old")
    win.fail_remove(*[32] * 1000)
    with pytest.raises(FileInUse, match=f"removing {link} failed: another program holds it open"):
        platform.remove(link, timeout=0.3)
    assert link.exists()


# -- restart proof and services: the Win32 calls (issue 20 item 4, issue 21 items 1-3) -----------

def test_storage_paths_beyond_max_path_are_refused_up_front_without_long_paths(win, tmp_path):
    from regpatch.reference import Repository, Tag
    from regpatch.storage.layout import Layout
    from regpatch.storage.names import check_names, longest_path

    layout = Layout(tmp_path / "s")
    (layout.v2 / "repositories").mkdir(parents=True)
    short, long_repo, tag = Repository("servercore"), Repository("team/" + "a" * 150), Tag("ltsc2019")
    assert longest_path(layout, short, tag) <= 259, len(str(tmp_path))
    win.long_paths = False
    assert not platform.long_paths()
    check_names(layout, short, tag)  # well within MAX_PATH
    assert longest_path(layout, long_repo, tag) > 259
    with pytest.raises(UsageError, match=r"team/a+:ltsc2019 needs storage paths of \d+ characters under .*beyond the "
                                         r"259 Windows allows while long paths are off: enable LongPathsEnabled "
                                         r"\(docs/windows.md, 'Long paths'\).*nothing was written") as e:
        check_names(layout, long_repo, tag)
    assert "\n" not in str(e.value) and not (layout.v2 / "repositories" / "team").exists()
    win.long_paths = True  # the policy on: the same names go through
    check_names(layout, long_repo, tag)
    assert win.called("long_paths_enabled")


def test_the_win32_natives_of_the_restart_proof_and_the_service_manager(tmp_path):
    win32, k32, adv, state = fake_win32()
    from support.win32double import FakeLibrary

    iphlp, nt = FakeLibrary("iphlpapi", k32.log), FakeLibrary("ntdll", k32.log)
    win32 = _win32.Win32(kernel32=k32, advapi32=adv, locking=lambda *a: None, last_error=lambda: state["last_error"],
                         win_error=win32._win_error, handler_type=ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32),
                         iphlpapi=iphlp, ntdll=nt)
    # GetProcessTimes: the creation FILETIME of an opened process
    k32.OpenProcess.result = 0x44

    def times(handle, creation, exit_, kernel, user):
        pointee(creation).value = 133_000_000_000_000_000
        return 1
    k32.GetProcessTimes.effect = times
    assert win32.process_created(1234) == 133_000_000_000_000_000
    assert k32.calls("OpenProcess")[-1] == (_win32.PROCESS_QUERY_LIMITED_INFORMATION, False, 1234)
    assert k32.calls("CloseHandle")[-1] == (0x44,)
    # GetExtendedTcpTable: asked twice (size, then rows), IPv4 and IPv6, ports in network order
    row = _win32.MIB_TCPROW_OWNER_PID(dwState=2, dwLocalAddr=int.from_bytes(bytes([127, 0, 0, 1]), "little"),
                                      dwLocalPort=int.from_bytes((5000).to_bytes(2, "big"), "little"), dwOwningPid=4321)
    table = (1).to_bytes(4, "little") + bytes(row)

    def tcp(buf, size, order, family, klass, reserved):
        assert klass == _win32.TCP_TABLE_OWNER_PID_LISTENER
        data = table if family == _win32.AF_INET else (0).to_bytes(4, "little")
        if pointee(size).value < len(data):
            pointee(size).value = len(data)
            return _win32.ERROR_INSUFFICIENT_BUFFER
        ctypes.memmove(buf, data, len(data))
        return 0
    iphlp.GetExtendedTcpTable.effect = tcp
    assert win32.tcp_listeners() == [("127.0.0.1", 5000, 4321)]
    assert [c[3] for c in iphlp.calls("GetExtendedTcpTable")] == [2, 2, 23, 23]
    # the Service Control Manager: open, query, close both handles, in that order
    adv.OpenSCManagerW.result, adv.OpenServiceW.result = 0x10, 0x20

    def status(handle, level, buf, size, needed):
        pointee(buf).dwCurrentState, pointee(buf).dwProcessId = 4, 999
        return 1
    adv.QueryServiceStatusEx.effect = status
    assert win32.service_status("registry") == (4, 999)
    assert adv.calls("OpenServiceW")[-1] == (0x10, "registry", _win32.SERVICE_QUERY_STATUS)
    assert adv.calls("CloseServiceHandle")[-2:] == [(0x20,), (0x10,)]
    win32.service_stop("registry")
    assert adv.calls("ControlService")[-1][:2] == (0x20, _win32.SERVICE_CONTROL_STOP)
    win32.service_start("registry")
    assert adv.calls("StartServiceW")[-1] == (0x20, 0, None)
    adv.OpenServiceW.result, state["last_error"] = 0, 1060  # no such service: the WinError, handles closed
    with pytest.raises(OSError) as e:
        win32.service_start("absent")
    assert e.value.winerror == 1060 and adv.calls("CloseServiceHandle")[-1] == (0x10,)
    # RtlAreLongPathsEnabled: the policy as this process sees it
    nt.RtlAreLongPathsEnabled.result = 0
    assert win32.long_paths_enabled() is False
    nt.RtlAreLongPathsEnabled.result = 1
    assert win32.long_paths_enabled() is True


def test_the_windows_seam_reads_process_times_and_listeners_through_the_natives(win):
    info = platform.process_info(os.getpid())
    assert info is not None and info.exe and abs(info.started - time.time()) < 24 * 3600
    assert info.parent == os.getppid() and info.args is None  # Windows does not show another's command line
    assert platform.same_path("C:\\Registry\\Registry.EXE", "c:/registry/registry.exe")
    assert not platform.same_path("C:\\registry\\registry.exe", "C:\\registry\\other.exe")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert [(l.address, l.pid) for l in platform.listeners(port)] == [("127.0.0.1", os.getpid())]
    assert win.called("tcp_listeners") and win.called("process_created")


def test_a_process_restart_on_windows_defaults_to_registry_exe(win):
    from regpatch.registry.restart import parse_restart_spec

    strategy = parse_restart_spec("process:pidfile=C:\\registry\\registry.pid,config=C:\\registry\\config.yml")
    assert isinstance(strategy, ProcessRestart) and strategy.binary == "registry.exe"
    assert str(strategy.pidfile).endswith("registry.pid")
