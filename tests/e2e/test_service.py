"""Restart strategies against a real registry process and real shell commands."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import socket
import time

import httpx
import pytest

from regpatch.demo.loopback import LocalRegistry
from regpatch.errors import RegistryUnavailable, RestartError, UsageError
from regpatch.registry.processes import pid_alive, read_pidfile, stop_pid
from regpatch.registry.restart import (
    CommandRestart,
    NoRestart,
    ProcessRestart,
    http_probe,
    parse_restart_spec,
    url_from_registry_config,
    wait_until_ready,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_none_is_not_needed():
    s = parse_restart_spec("none")
    assert isinstance(s, NoRestart) and s.needed is False
    s.restart()
    assert s.describe() == "no restart"


@pytest.mark.parametrize("spec", ["", "reboot", "none:now", "command:", "process:", "process:config=x.yml",
                                  "process:pidfile", "process:pidfile=a,pidfile=b,config=c",
                                  "process:pidfile=a,colour=red,config=c",
                                  "process:pidfile=a,config=c,timeout=soon"])
def test_bad_spec_is_a_usage_error_naming_the_forms(spec):
    with pytest.raises(UsageError) as e:
        parse_restart_spec(spec)
    msg = str(e.value)
    assert "accepted forms" in msg and "command:<shell command>" in msg and "process:pidfile=PATH" in msg
    assert "\n" not in msg


def test_process_spec_parses_windows_paths_and_defaults(tmp_path):
    s = parse_restart_spec(r"process:pidfile=C:\reg\registry.pid,binary=C:\reg\registry.exe",
                           registry_config=tmp_path / "config.yml")
    assert isinstance(s, ProcessRestart) and s.needed
    assert str(s.pidfile) == r"C:\reg\registry.pid" and s.binary == r"C:\reg\registry.exe"
    assert s.config == tmp_path / "config.yml"
    assert s.log == s.pidfile.with_name("registry.log")
    assert "registry.pid" in s.describe()
    s = parse_restart_spec(f"process:pidfile={tmp_path}/r.pid,config={tmp_path}/c.yml,log={tmp_path}/x.log")
    assert s.binary == "docker-registry" and s.log == tmp_path / "x.log"


def test_process_restart_replaces_the_pid_and_registry_answers(registry):
    old_pid = read_pidfile(registry.pidfile)
    assert old_pid and pid_alive(old_pid)
    assert url_from_registry_config(registry.config_path) == registry.url
    strategy = parse_restart_spec(f"process:pidfile={registry.pidfile}", registry_config=registry.config_path)

    strategy.restart()

    new_pid = read_pidfile(registry.pidfile)
    assert new_pid != old_pid and new_pid == strategy.last_pid
    assert not pid_alive(old_pid)
    assert pid_alive(new_pid)
    assert httpx.get(registry.url + "/v2/").status_code == 200
    # the log is appended to, next to the pidfile
    assert registry.log_path.read_text().count("listening on") >= 2
    registry.stop()  # stops the new pid
    assert not pid_alive(new_pid) and not registry.pidfile.exists()
    registry.stop()  # idempotent


def test_process_restart_with_stale_pidfile_starts_the_registry(tmp_path):
    reg = LocalRegistry(tmp_path / "reg")
    reg.write_config()
    proc = subprocess.Popen(["true"])
    proc.wait()
    reg.pidfile.write_text(f"{proc.pid}\n")  # no such process any more
    strategy = parse_restart_spec(f"process:pidfile={reg.pidfile},config={reg.config_path},"
                                  f"binary={shutil.which('docker-registry')}")
    try:
        strategy.restart()
        assert http_probe(reg.url)
        assert read_pidfile(reg.pidfile) == strategy.last_pid
    finally:
        reg.stop()


def test_process_restart_reports_a_registry_that_dies(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("version: 0.1\nstorage: {}\nhttp: {addr: '127.0.0.1:1'}\n")
    strategy = ProcessRestart(tmp_path / "other.pid", bad, ready_timeout=10)
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="exited before answering"):
        strategy.restart()
    assert time.monotonic() - t0 < 10


def test_process_restart_with_missing_binary(tmp_path, registry):
    strategy = parse_restart_spec(f"process:pidfile={registry.pidfile},config={registry.config_path},"
                                  f"binary={tmp_path}/no-such-registry")
    with pytest.raises(RestartError, match="not found"):
        strategy.restart()
    assert http_probe(registry.url)  # untouched


def test_command_restart_runs_a_real_shell_command(registry, tmp_path):
    """The command stops the registry by its pidfile and starts it again in the
    background, as a service manager would; the strategy waits for /v2/."""
    marker = tmp_path / "ran"
    pidfile = shlex.quote(str(registry.pidfile))
    command = (
        f"old=$(cat {pidfile}); kill $old; "
        f"while kill -0 $old 2>/dev/null; do sleep 0.05; done; "
        f"docker-registry serve {shlex.quote(str(registry.config_path))} "
        f">>{shlex.quote(str(registry.log_path))} 2>&1 & "
        f"echo $! > {pidfile}; echo ok > {shlex.quote(str(marker))}"
    )
    old_pid = read_pidfile(registry.pidfile)
    strategy = parse_restart_spec(f"command:{command}", registry_config=registry.config_path)
    assert isinstance(strategy, CommandRestart) and strategy.ready_url == registry.url

    strategy.restart()

    assert marker.read_text() == "ok\n"
    new_pid = read_pidfile(registry.pidfile)
    assert new_pid != old_pid and pid_alive(new_pid)
    assert httpx.get(registry.url + "/v2/").status_code == 200


def test_failing_command_gives_exit_code_and_last_stderr_line():
    strategy = parse_restart_spec("command:echo first >&2; echo 'unit not found' >&2; exit 3")
    with pytest.raises(RestartError) as e:
        strategy.restart()
    msg = str(e.value)
    assert msg.endswith("exited with code 3: unit not found"), msg  # the last line of its stderr, not the first


def test_command_timeout_is_bounded():
    strategy = CommandRestart("sleep 30", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(RestartError, match="did not finish within 0.5 s"):
        strategy.restart()
    assert time.monotonic() - t0 < 5


def test_wait_until_ready_on_closed_port_fails_within_timeout():
    url = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"within 1\.5 s"):
        wait_until_ready(lambda: http_probe(url), timeout=1.5)
    assert 1.4 <= time.monotonic() - t0 < 3


def test_wait_until_ready_returns_seconds_waited():
    calls = []

    def probe():
        calls.append(time.monotonic())
        return len(calls) >= 4

    waited = wait_until_ready(probe, timeout=5)
    assert len(calls) == 4
    assert 0.05 + 0.1 + 0.2 <= waited < 1.5  # backoff doubles from 0.05 s


def test_http_probe_accepts_401(tmp_path):
    with LocalRegistry(tmp_path / "auth", htpasswd=("alice", "s3cret")) as reg:
        assert httpx.get(reg.url + "/v2/").status_code == 401
        assert http_probe(reg.url)
        assert (reg.workdir / "htpasswd").read_text().startswith("alice:$2")
    assert not http_probe(reg.url)


def test_stop_pid_of_nothing_is_fine():
    assert stop_pid(None) is False
    assert stop_pid(999999999) is False
    assert pid_alive(os.getpid())


def test_process_restart_proves_itself_against_real_registries(tmp_path, registry):
    """issue 20 item 4: a pidfile naming another registry stops nothing; a port another registry
    holds is never taken for the restarted one (nothing is started: one line naming the holder),
    whatever the binary (/bin/false included)."""
    old = read_pidfile(registry.pidfile)
    mine = LocalRegistry(tmp_path / "mine")
    mine.write_config()
    strategy = parse_restart_spec(f"process:pidfile={registry.pidfile},config={mine.config_path}")
    with pytest.raises(RestartError, match=f"pid {old} in {registry.pidfile} is not the registry it names "
                                           f"\\(its arguments .* are not 'serve {mine.config_path}'\\)") as e:
        strategy.restart()
    assert "\n" not in str(e.value)
    assert pid_alive(old) and http_probe(registry.url)
    clash = LocalRegistry(tmp_path / "clash", port=registry.port)  # the port the running registry holds
    clash.write_config()
    for binary in ("docker-registry", "/bin/false"):
        strategy = parse_restart_spec(f"process:pidfile={clash.pidfile},config={clash.config_path},binary={binary}")
        with pytest.raises(RestartError, match=f"{registry.url} still answers \\(pid {old} \\(.*docker-registry.*\\) "
                                               f"holds port {registry.port}\\): another registry holds its port"):
            strategy.restart()
        assert not clash.pidfile.exists() and pid_alive(old)
