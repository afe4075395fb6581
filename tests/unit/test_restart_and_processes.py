"""Restart strategies and the process helpers behind them, with stand-in processes
(small shell scripts that run ``<script> serve <config>`` like the registry's
command line, and answer nothing); LocalRegistry and the demo up to the point
where they would need a real docker-registry. No registry process runs here."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from regpatch import platform
from regpatch.demo import story as demo
from regpatch.demo.loopback import LocalRegistry, free_port, write_htpasswd, write_registry_config
from regpatch.errors import RegistryUnavailable, RestartError, UsageError
from regpatch.registry import processes as service
from regpatch.registry.config import registry_url_from_config, storage_root_from_config
from regpatch.registry.processes import (
    looks_like_registry,
    pid_alive,
    read_pidfile,
    start_detached,
    stop_pid,
    wait_for_registry_process,
    write_pidfile,
)
from regpatch.registry.restart import CommandRestart, NoRestart, ProcessRestart, parse_restart_spec, wait_until_ready

# A registry stand-in: stays up, answers nothing, leaves on SIGTERM within a tenth of a second.
SERVING = "#!/bin/sh\ntrap 'exit 0' TERM\necho \"stand-in $* started\"\nwhile :; do sleep 0.1; done\n"
# One that ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "#!/bin/sh\ntrap '' TERM\necho \"stand-in $* started\"\nwhile :; do sleep 0.1; done\n"
# One that dies at once, as a registry with a broken config does.
DYING = "#!/bin/sh\necho 'configuration error: open /etc/nowhere.yml: no such file or directory'\nexit 1\n"


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def started(tmp_path):
    """Start stand-ins detached; every one still running at the end is killed."""
    pids = []

    def start(text: str = SERVING, name: str = "registry", pidfile=None) -> int:
        binary = script(tmp_path, name, text)
        pid = start_detached([str(binary), "serve", str(tmp_path / "config.yml")], log_path=tmp_path / f"{name}.log",
                             pidfile=pidfile)
        pids.append(pid)
        log = tmp_path / f"{name}.log"
        deadline = time.monotonic() + 10
        while "started" in text and time.monotonic() < deadline:  # its signal trap is set from here on
            if log.exists() and "started" in log.read_text():
                break
            time.sleep(0.02)
        return pid

    yield start
    for pid in pids:
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def config(tmp_path, text: str = "version: 0.1\n") -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- waiting

def test_waiting_backs_off_until_the_probe_answers_or_the_time_is_up():
    answers = iter([False, False, True])
    waited = wait_until_ready(lambda: next(answers), timeout=5)
    assert 0.1 <= waited < 5  # 0.05 + 0.1 of backoff
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="the registry at x did not become ready within 0.3 s"):
        wait_until_ready(lambda: False, timeout=0.3, what="the registry at x")
    assert time.monotonic() - t0 < 5

    def died():
        raise RestartError("the process died")

    with pytest.raises(RestartError, match="died"):
        wait_until_ready(died)
    assert service.http_probe(f"http://127.0.0.1:{free_port()}") is False


# --------------------------------------------------------------------------- processes

def test_pidfiles_are_written_atomically_and_read_strictly(tmp_path):
    pidfile = tmp_path / "run" / "registry.pid"
    write_pidfile(pidfile, 4242)
    assert pidfile.read_text() == "4242\n" and read_pidfile(pidfile) == 4242
    assert [p.name for p in pidfile.parent.iterdir()] == ["registry.pid"]  # no temp file left
    pidfile.write_text("")
    assert read_pidfile(pidfile) is None
    for text in ("abc", "0", "-5", "12 34", "99999999999999999999999", str(platform.max_pid() + 1), "٣"):
        pidfile.write_text(text)
        with pytest.raises(RestartError, match=f"pidfile {pidfile} holds .*not a process id") as e:
            read_pidfile(pidfile)
        assert "\n" not in str(e.value), text
    assert read_pidfile(tmp_path / "missing.pid") is None
    assert read_pidfile(pidfile / "below-a-file") is None


@pytest.mark.posix_only  # a FIFO
def test_a_fifo_as_pidfile_is_refused_without_blocking(tmp_path):
    pidfile = tmp_path / "registry.pid"
    os.mkfifo(pidfile)
    with pytest.raises(RestartError, match=f"pidfile {pidfile} is a FIFO, not a regular file"):
        read_pidfile(pidfile)


@pytest.mark.posix_only  # zombies and /proc (the POSIX implementation of the platform seam)
def test_dead_and_zombie_processes_are_not_alive():
    from regpatch.platform._posix import _is_zombie  # the POSIX implementation (imported on POSIX only)

    assert pid_alive(os.getpid()) and not pid_alive(0) and not pid_alive(-1)
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while _is_zombie(zombie.pid) is False and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _is_zombie(zombie.pid) and not pid_alive(zombie.pid)  # exited, not yet reaped
    zombie.wait()
    assert not pid_alive(zombie.pid) and not _is_zombie(zombie.pid)
    assert looks_like_registry(zombie.pid)  # no /proc entry left: nothing to say against it


@pytest.mark.posix_only  # a shell-script stand-in: /proc's command line, a SIGTERM trap, sessions
def test_a_detached_process_is_recognised_stopped_and_reaped(tmp_path, started):
    pidfile = tmp_path / "registry.pid"
    pid = started(pidfile=pidfile)
    assert read_pidfile(pidfile) == pid and pid_alive(pid)
    assert looks_like_registry(pid) and not looks_like_registry(os.getpid())
    assert os.getsid(pid) == pid  # its own session: it outlives this process
    t0 = time.monotonic()
    assert stop_pid(pid, timeout=5) is True
    assert not pid_alive(pid) and time.monotonic() - t0 < 4  # it left on SIGTERM, no SIGKILL after 5 s
    assert "stand-in serve" in (tmp_path / "registry.log").read_text()
    assert stop_pid(pid) is False and stop_pid(None) is False


@pytest.mark.posix_only  # SIGTERM, then SIGKILL (Windows has TerminateProcess alone)
def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(started):
    pid = started(STUBBORN, "stubborn")
    t0 = time.monotonic()
    assert stop_pid(pid, timeout=0.3) is True
    assert not pid_alive(pid) and 0.3 <= time.monotonic() - t0 < 5


def test_a_binary_that_cannot_start_is_a_restart_error(tmp_path):
    with pytest.raises(RestartError, match="cannot start .*no-such-binary serve c.yml: No such file"):
        start_detached([str(tmp_path / "no-such-binary"), "serve", "c.yml"], log_path=tmp_path / "log")


def test_waiting_for_a_registry_process_fails_fast_when_it_exits(tmp_path, started):
    url = f"http://127.0.0.1:{free_port()}"
    pid = started(DYING, "dying")
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"registry process {pid} exited before answering at {url}; "
                                                  "last log line: configuration error: open /etc/nowhere.yml"):
        wait_for_registry_process(pid, url, timeout=20, log_path=tmp_path / "dying.log")
    assert time.monotonic() - t0 < 10
    alive = started(SERVING, "silent")
    with pytest.raises(RegistryUnavailable, match=f"registry at {url} \\(pid {alive}\\) did not become ready"):
        wait_for_registry_process(alive, url, timeout=0.5)
    assert service._last_line(tmp_path / "missing.log") == ""


# --------------------------------------------------------------------------- strategies

def test_restart_specs_are_parsed_strictly(tmp_path):
    cfg = config(tmp_path, "http:\n  addr: :5000\n")
    assert isinstance(parse_restart_spec(" None "), NoRestart) and not parse_restart_spec("none").needed
    assert repr(NoRestart()) == "<NoRestart: no restart>" and NoRestart().restart() is None
    cmd = parse_restart_spec("command: systemctl restart docker-registry ", registry_config=cfg)
    assert (cmd.command, cmd.ready_url) == ("systemctl restart docker-registry", "http://127.0.0.1:5000")
    assert cmd.describe() == "run command: systemctl restart docker-registry (then wait for http://127.0.0.1:5000)"
    assert parse_restart_spec("command:true", registry_config=tmp_path / "broken.yml").ready_url is None
    proc = parse_restart_spec("process: pidfile=/run/r.pid , binary=/usr/bin/registry, log=/var/log/r.log,"
                              "url=http://127.0.0.1:5000,timeout=7.5,", registry_config=cfg)
    assert (proc.pidfile, proc.config, proc.binary, proc.log, proc.ready_url, proc.ready_timeout) == (
        Path("/run/r.pid"), cfg, "/usr/bin/registry", Path("/var/log/r.log"), "http://127.0.0.1:5000", 7.5)
    assert parse_restart_spec("process:pidfile=/run/r.pid,config=/etc/r.yml").log == Path("/run/registry.log")
    assert "restart process from pidfile /run/r.pid" in repr(proc)
    for spec, why in (("", "empty"), ("reboot", "unknown kind 'reboot'"), ("process", "malformed"),
                      ("command:", "'command:' needs a shell command"),
                      ("process:pidfile", "'pidfile' is not key=value"),
                      ("process:pidfile=/r,color=red", "unknown key 'color'"),
                      ("process:pidfile=/r,pidfile=/s", "key 'pidfile' given twice"),
                      ("process:config=/c", "needs pidfile=PATH"),
                      ("process:pidfile=/r", "needs config=PATH"),
                      ("process:pidfile=/r,config=/c,timeout=soon", "timeout 'soon' is not a number")):
        with pytest.raises(UsageError, match=why) as e:
            parse_restart_spec(spec)
        assert "accepted forms: none | command:<shell command> | process:" in str(e.value)
    with pytest.raises(UsageError, match="empty"):
        parse_restart_spec(None)  # type: ignore[arg-type]


def test_a_command_restart_reports_its_failures(tmp_path):
    with pytest.raises(UsageError, match="'command:' needs a command"):
        CommandRestart("  ")
    with pytest.raises(RestartError, match=r"restart command \(exit 3\) exited with code 3: \(no output\)"):
        CommandRestart("exit 3").restart()
    with pytest.raises(RestartError, match=r"restart command \(sleep 10\) did not finish within 0.3 s"):
        CommandRestart("sleep 10", timeout=0.3).restart()
    url = f"http://127.0.0.1:{free_port()}"
    marker = tmp_path / "ran"
    with pytest.raises(RegistryUnavailable, match=f"registry at {url} after restart did not become ready"):
        CommandRestart(f"touch {marker}", ready_url=url, ready_timeout=0.3).restart()
    assert marker.exists()  # the command ran; the registry never answered


@pytest.mark.posix_only  # a shell-script stand-in, known by /proc's command line (Windows: the next test)
def test_a_process_restart_stops_the_old_pid_and_starts_the_binary_again(tmp_path, started):
    cfg = config(tmp_path)
    pidfile = tmp_path / "registry.pid"
    old = started(name="registry-bin", pidfile=pidfile)
    binary = tmp_path / "registry-bin"
    strategy = ProcessRestart(pidfile, cfg, binary=str(binary), log=tmp_path / "restarted.log")
    strategy.restart()
    try:
        new = read_pidfile(pidfile)
        assert new == strategy.last_pid and new != old
        assert not pid_alive(old) and pid_alive(new) and looks_like_registry(new)
        assert f"stand-in serve {cfg} started" in (tmp_path / "restarted.log").read_text()
    finally:
        stop_pid(strategy.last_pid, timeout=5)
    # a pidfile with a stale pid: nothing to stop, the registry is started
    strategy.restart()
    stop_pid(strategy.last_pid, timeout=5)


def test_a_process_restart_refuses_what_is_not_its_registry(tmp_path, started):
    cfg = config(tmp_path)
    pidfile = tmp_path / "registry.pid"
    with pytest.raises(RestartError, match="registry binary 'no-such-registry' not found"):
        ProcessRestart(pidfile, cfg, binary="no-such-registry").restart()
    binary = script(tmp_path, "registry-bin", SERVING)
    with pytest.raises(RestartError, match="registry config .*absent.yml does not exist"):
        ProcessRestart(pidfile, tmp_path / "absent.yml", binary=str(binary)).restart()
    write_pidfile(pidfile, os.getpid())  # a recycled pid: some other program
    with pytest.raises(RestartError, match=f"pid {os.getpid()} in {pidfile} is not the registry it names "
                                           r"\(it runs .*python.*, not .*registry-bin.*nothing was stopped"):
        ProcessRestart(pidfile, cfg, binary=str(binary)).restart()
    assert pid_alive(os.getpid())
    dying = script(tmp_path, "dying-bin", DYING)
    pidfile.unlink()
    with pytest.raises(RestartError, match="registry exited right after start .*last log line: configuration error"):
        ProcessRestart(pidfile, cfg, binary=str(dying)).restart()
    url = f"http://127.0.0.1:{free_port()}"
    strategy = ProcessRestart(pidfile, cfg, binary=str(binary), ready_url=url, ready_timeout=0.3)
    try:
        with pytest.raises(RegistryUnavailable, match="did not become ready within 0.3 s"):
            strategy.restart()
    finally:
        stop_pid(strategy.last_pid, timeout=5)


@pytest.mark.posix_only  # the stand-ins are shell scripts, known by /proc's command line
def test_a_process_restart_stops_only_the_registry_the_pidfile_names(tmp_path, started):
    """Another registry (same binary, another config) and a pid reused after the pidfile was
    written are refused and left running; the real one is stopped."""
    cfg = config(tmp_path)
    other_cfg = tmp_path / "other.yml"
    other_cfg.write_text("version: 0.1\n")
    pidfile = tmp_path / "registry.pid"
    pid = started(name="registry-bin", pidfile=pidfile)
    binary = str(tmp_path / "registry-bin")
    with pytest.raises(RestartError, match=f"pid {pid} in {pidfile} is not the registry it names \\(its arguments "
                                           f".* are not 'serve {other_cfg}'\\)"):
        ProcessRestart(pidfile, other_cfg, binary=binary).stop()
    assert pid_alive(pid)
    written = time.time() - 3600
    os.utime(pidfile, (written, written))  # the pidfile is older than the process: its pid was reused
    with pytest.raises(RestartError, match="after the pidfile was written .*: its pid was reused"):
        ProcessRestart(pidfile, cfg, binary=binary).stop()
    assert pid_alive(pid)
    write_pidfile(pidfile, pid)
    ProcessRestart(pidfile, cfg, binary=binary).stop()
    assert not pid_alive(pid)


class _Answering:
    """An HTTP server in this process that answers /v2/ with 200 once ``gate`` exists (None: at once)."""

    def __init__(self, gate=None):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                code = 200 if gate is None or gate.exists() else 503
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.posix_only  # the stand-ins are shell scripts
def test_a_process_restart_is_done_only_when_the_new_process_answers(tmp_path, started):
    """Something else answering the registry's address is never taken for the restarted registry:
    before the start (the port is taken: nothing is started), or after it (the new process is not
    the one holding the port)."""
    cfg = config(tmp_path)
    pidfile = tmp_path / "registry.pid"
    other = _Answering()
    try:
        with pytest.raises(RestartError, match=f"after stopping the registry of {pidfile}, {other.url} still answers "
                                               f"\\(pid {os.getpid()} .*holds port .*another registry holds its port"):
            ProcessRestart(pidfile, cfg, binary="/bin/false", ready_url=other.url).restart()
        assert not pidfile.exists()  # nothing was started
    finally:
        other.close()
    gate = tmp_path / "gate"
    late = _Answering(gate)  # answers only once the new process has started: it looks like the new one
    binary = script(tmp_path, "registry-bin", f"#!/bin/sh\ntrap 'exit 0' TERM\ntouch {gate}\n"
                                              "while :; do sleep 0.1; done\n")
    strategy = ProcessRestart(pidfile, cfg, binary=str(binary), ready_url=late.url, ready_timeout=10)
    try:
        with pytest.raises(RestartError, match=f"{late.url} answers, but port .* is held by pid {os.getpid()} .*not by "
                                               "the registry started from .*the restart did not happen"):
            strategy.restart()
    finally:
        late.close()
        stop_pid(strategy.last_pid, timeout=5)


# --------------------------------------------------------------------------- LocalRegistry

def test_local_registry_config_reads_back_as_written(tmp_path):
    port = free_port()
    assert 1024 < port < 65536
    htpasswd = write_htpasswd(tmp_path / "htpasswd", "alice", "s3cret")
    user, hashed = htpasswd.read_text().strip().split(":", 1)
    assert user == "alice" and bcrypt.checkpw(b"s3cret", hashed.encode())
    cfg = write_registry_config(tmp_path / "etc" / "config.yml", tmp_path / "data", f"127.0.0.1:{port}",
                                htpasswd_path=htpasswd, cache=False)
    assert storage_root_from_config(cfg) == (tmp_path / "data").resolve()
    assert registry_url_from_config(cfg) == f"http://127.0.0.1:{port}"
    text = cfg.read_text()
    assert "htpasswd" in text and "blobdescriptor" not in text and "s3cret" not in text

    reg = LocalRegistry(tmp_path / "reg", port=port, htpasswd=("bob", "pw"), blobdescriptor_cache=True)
    assert (reg.url, reg.host, reg.pid) == (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", None)
    assert repr(reg) == f"LocalRegistry(http://127.0.0.1:{port}, root={tmp_path / 'reg' / 'data'})"
    reg.write_config()
    assert reg.root.is_dir() and reg.htpasswd_path.read_text().startswith("bob:")
    assert "blobdescriptor: inmemory" in reg.config_path.read_text()


def test_local_registry_start_failures_leave_no_pidfile(tmp_path, monkeypatch):
    with pytest.raises(RegistryUnavailable, match="registry binary 'no-such-registry' not found on PATH"):
        LocalRegistry(tmp_path / "a", binary="no-such-registry").start()
    dying = script(tmp_path, "dying-registry", DYING)
    reg = LocalRegistry(tmp_path / "b", binary=str(dying))
    with pytest.raises(RegistryUnavailable, match="exited before answering .*configuration error"):
        reg.start(timeout=10)
    assert not reg.pidfile.exists() and reg.config_path.is_file()
    reg.stop()  # idempotent


def test_local_registry_start_is_a_no_op_while_its_process_runs_and_stop_ends_it(tmp_path, started):
    workdir = tmp_path / "reg"
    workdir.mkdir()
    pid = started(pidfile=workdir / "registry.pid")
    with LocalRegistry(workdir) as reg:
        assert reg.pid == pid and not reg.config_path.exists()  # nothing was started nor written
    assert not pid_alive(pid) and not (workdir / "registry.pid").exists()


# --------------------------------------------------------------------------- the demo, without a registry

def test_demo_refuses_a_workdir_it_did_not_make(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert demo.main(["--workdir", str(tmp_path / "file")]) == 1
    assert "FAILED at step 1/9: DemoFailed: --workdir" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert demo.main(["--workdir", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert "is not empty and was not made by the demo (no .regpatch-demo file in it)" in err
    assert (foreign / "precious.txt").read_text() == "keep me"
    args = demo.build_parser().parse_args([])
    assert (args.workdir, args.keep_running) == (Path("demo"), False)


@pytest.mark.posix_only  # a shell-script stand-in, known by /proc's command line
def test_demo_reclaims_its_own_workdir_and_stops_a_registry_it_left_running(tmp_path, started, capsys):
    wd = tmp_path / "wd"
    (wd / "registry").mkdir(parents=True)
    (wd / demo.MARKER).write_text("made by the demo")
    (wd / "pulled").mkdir()
    pid = started(pidfile=wd / "registry" / "registry.pid")
    d = demo.Demo(wd, keep_running=False)
    d.prepare_workdir()
    assert not pid_alive(pid)
    assert f"stopping the registry an earlier demo left running (pid {pid})" in capsys.readouterr().out
    assert sorted(p.name for p in wd.iterdir()) == [demo.MARKER]


def test_demo_without_docker_registry_fails_at_step_two_with_one_line(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(demo, "BASE_SIZE", 64 << 10)
    monkeypatch.setattr(demo, "DELTA_SIZE", 16 << 10)
    assert demo.main(["--workdir", str(tmp_path / "wd")]) == 1
    out, err = capsys.readouterr()
    assert "=== Step 1/9: build the sample images" in out and "staged patch bundle" in out
    assert err.strip().splitlines()[-1] == ("FAILED at step 2/9: RegistryUnavailable: registry binary "
                                           "'docker-registry' not found on PATH; install the docker-registry package")
    assert (tmp_path / "wd" / "scenario" / "staged" / "delta.tar.gz.manifest.json").is_file()
    with pytest.raises(demo.DemoFailed, match="skopeo is not installed; run scripts/bootstrap.sh"):
        demo.Demo.skopeo("--version")


def test_demo_finish_stops_or_describes_the_registry(tmp_path, capsys):
    d = demo.Demo(tmp_path, keep_running=True)
    d.finish()  # nothing started: nothing to say
    d.registry = LocalRegistry(tmp_path / "registry", port=5999)
    d.finish()
    out = capsys.readouterr().out
    assert "the first registry: http://127.0.0.1:5999" in out
    assert f"stop everything: {sys.executable} -m regpatch.demo --stop --workdir {tmp_path}" in out
    d = demo.Demo(tmp_path, keep_running=False)
    d.registry = LocalRegistry(tmp_path / "registry", port=5999)
    d.finish()
    assert f"registry at http://127.0.0.1:5999 stopped; files kept in {tmp_path}" in capsys.readouterr().out
    (tmp_path / "pulled").mkdir()
    (tmp_path / "pulled" / "manifest.json").write_bytes(b'{"schemaVersion": 2}')
    assert demo.Demo.manifest_digest_of_dir(tmp_path / "pulled") == \
        "sha256:" + hashlib.sha256(b'{"schemaVersion": 2}').hexdigest()
