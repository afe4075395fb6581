"""Stopping cleanly: the stop flag ends copies at a chunk boundary, child process groups
are killed and reaped, a registry regpatch starts never inherits REGISTRY_* variables."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest

from regpatch import interrupt
from regpatch.errors import Interrupted, RestartError, UsageError, VerificationError
from regpatch.hashing import copy_and_hash
from regpatch.platform import children
from regpatch.registry.restart import CommandRestart, parse_restart_spec, registry_environment
from regpatch.registry.verify_command import run_verify_command


def test_a_copy_stops_at_the_next_chunk_once_a_stop_is_requested():
    seen = []

    def progress(n):
        seen.append(n)
        interrupt.request_stop(signal.SIGINT)

    src = io.BytesIO(os.urandom(12 << 20))
    with pytest.raises(Interrupted) as e:
        copy_and_hash(src, io.BytesIO(), what="blob", progress=progress)
    assert e.value.exit_code == 130
    assert sum(seen) < 12 << 20  # stopped well before the end


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_a_stop_request_kills_the_verify_command_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    command = f"sh -c 'sleep 300 & echo $! >> {pids}; sleep 300' & echo $! >> {pids}; wait; true {{ref}}"
    t0 = time.monotonic()

    import threading

    threading.Timer(1.0, interrupt.request_stop, args=(signal.SIGTERM,)).start()
    with pytest.raises(Interrupted):
        run_verify_command(command, "127.0.0.1:5000/r@sha256:" + "0" * 64)
    assert time.monotonic() - t0 < 10
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"child {pid} outlived the run"


def test_verify_command_failure_names_the_exit_and_the_last_stderr_line():
    with pytest.raises(VerificationError, match="exited with code 3: the last line"):
        run_verify_command("echo first >&2; echo 'the last line' >&2; exit 3; {ref}", "r@sha256:" + "0" * 64)
    with pytest.raises(VerificationError, match="did not finish within 0.5 s"):
        run_verify_command("sleep 30; true {ref}", "x", timeout=0.5)


def test_restart_command_is_interruptible_too():
    import threading

    threading.Timer(0.5, interrupt.request_stop, args=(signal.SIGINT,)).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        CommandRestart("sleep 300").restart()
    assert time.monotonic() - t0 < 10
    interrupt.reset()
    with pytest.raises(RestartError, match="exited with code 4"):
        CommandRestart("exit 4").restart()


def test_registry_environment_withholds_config_overrides_and_secrets():
    env = {"PATH": "/usr/bin", "REGISTRY_AUTH_FILE": "/x", "REGISTRY_HTTP_SECRET": "s", "REGPATCH_REGISTRY_PASSWORD": "p",
           "AWS_SECRET_ACCESS_KEY": "k", "PREFECT_API_KEY": "pk", "HOME": "/root", "registry_lower": "kept?"}
    got = registry_environment(env)
    assert got == {"PATH": "/usr/bin", "HOME": "/root"}
    assert registry_environment(env, ["REGISTRY_HTTP_SECRET"])["REGISTRY_HTTP_SECRET"] == "s"


def test_process_restart_spec_names_the_variables_to_pass():
    strategy = parse_restart_spec("process:pidfile=/run/r.pid,config=/etc/r.yml,pass_env=REGISTRY_HTTP_SECRET+TZ")
    assert strategy.pass_env == ("REGISTRY_HTTP_SECRET", "TZ")
    for bad in ("process:pidfile=/r,config=/c,pass_env=A-B", "process:pidfile=/r,config=/c,timeout=inf",
                "process:pidfile=/r,config=/c,timeout=nan", "process:pidfile=/r,config=/c,timeout=-1"):
        with pytest.raises(UsageError):
            parse_restart_spec(bad)


def test_the_registry_started_by_a_process_restart_gets_the_clean_environment(tmp_path, monkeypatch):
    """The 'registry' here is a shell script that writes its environment and exits: the
    strategy's own check then reports that it exited, after it ran with the clean env."""
    script = tmp_path / "fake-registry"
    out = tmp_path / "env.txt"
    script.write_text(f"#!/bin/sh\nenv > {out}\n")
    script.chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/root/.docker/config.json")
    monkeypatch.setenv("REGISTRY_HTTP_SECRET", "pass-me")
    strategy = parse_restart_spec(f"process:pidfile={tmp_path / 'r.pid'},config={config},binary={script},"
                                  "pass_env=REGISTRY_HTTP_SECRET")
    with pytest.raises(RestartError, match="exited right after start"):
        strategy.restart()
    env = out.read_text()
    assert "REGISTRY_AUTH_FILE" not in env and "REGISTRY_HTTP_SECRET=pass-me" in env


@pytest.mark.posix_only  # a signal to this process (os.kill)
def test_chained_handlers_set_the_flag_then_call_the_previous_handler():
    calls = []

    def orchestrator_handler(signum, frame):
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, orchestrator_handler)
    try:
        with interrupt.chained_handlers():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert interrupt.stopping() and calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is orchestrator_handler  # restored
    finally:
        signal.signal(signal.SIGTERM, original)


def test_the_runner_returns_the_exit_code():
    assert children.run(["sh", "-c", "exit 7"]).returncode == 7


# -- credential helpers run through the one runner (issue 20 item 5) ----------------------------------

def _helper(tmp_path, body: str) -> dict:
    folder = tmp_path / "helpers"
    folder.mkdir(exist_ok=True)
    path = folder / "docker-credential-regpatchtest"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}


@pytest.mark.posix_only  # shell-script helpers
def test_a_hanging_credential_helper_stops_on_ctrl_c_with_130_and_leaves_no_child(tmp_path):
    import threading

    from regpatch.registry.credentials import credentials_from_helper

    pids = tmp_path / "pids"
    env = _helper(tmp_path, f"sleep 300 & echo $! >> {pids}\necho $$ >> {pids}\nwait\n")
    threading.Timer(0.7, interrupt.request_stop, args=(signal.SIGINT,)).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e:
        credentials_from_helper("regpatchtest", "reg:5000", origin="test", env=env, timeout=60)
    assert e.value.exit_code == 130 and time.monotonic() - t0 < 10
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"helper process {pid} outlived the stop"


@pytest.mark.posix_only  # shell-script helpers
def test_a_credential_helper_timing_out_is_killed_with_its_children(tmp_path):
    from regpatch.errors import AuthError
    from regpatch.registry.credentials import credentials_from_helper

    pids = tmp_path / "pids"
    env = _helper(tmp_path, f"sleep 300 & echo $! >> {pids}\nwait\n")
    with pytest.raises(AuthError, match="did not answer within 0.5s") as e:
        credentials_from_helper("regpatchtest", "reg:5000", origin="test", env=env, timeout=0.5)
    assert e.value.exit_code == 5
    (child,) = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the helper's child outlived its timeout"


@pytest.mark.posix_only  # shell-script helpers; ru_maxrss
def test_a_credential_helper_printing_without_end_costs_a_bounded_memory(tmp_path):
    """128 MiB from the helper: read and dropped beyond the limit (a fresh interpreter measures
    its own peak memory)."""
    import subprocess
    import sys

    env = _helper(tmp_path, "head -c 134217728 /dev/zero\n")
    probe = ("import json, resource, sys\n"
             "from regpatch.errors import AuthError\n"
             "from regpatch.registry.credentials import credentials_from_helper\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n"
             "    credentials_from_helper('regpatchtest', 'reg:5000', origin='test', env=json.loads(sys.argv[1]))\n"
             "except AuthError as e:\n"
             "    print(str(e))\n"
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", probe, __import__("json").dumps(env)], capture_output=True,
                          text=True, timeout=120)
    message, grown_mib = done.stdout.splitlines()
    assert "did not answer reg:5000 with a JSON object" in message and "its output is not shown" in message
    assert int(grown_mib) < 32, f"peak memory grew by {grown_mib} MiB"
