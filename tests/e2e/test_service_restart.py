"""``--restart service:NAME`` (issue 21 item 1) against real docker-registry processes.

Linux: systemd through ``systemctl``, here a stand-in on PATH (tests/support/standin_systemctl.sh:
process 1 of this machine is not systemd) that really starts and stops the unit's
``docker-registry serve config.yml``. Windows: the Service Control Manager through the
Win32 calls, here the recording double (``RecordingWin32.services``), whose services are real
``docker-registry`` processes too; the same strategy and proof run over both.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from regpatch import platform
from regpatch.demo.loopback import LocalRegistry
from regpatch.errors import RestartError, UsageError
from regpatch.platform._windows import WindowsPlatform, WindowsServices
from regpatch.registry.processes import pid_alive
from regpatch.registry.restart import ServiceRestart, http_probe, parse_restart_spec

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standin_systemctl.sh"
REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="needs docker-registry")


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """A folder of stand-in units and ``systemctl`` first on PATH; every unit stopped at the end."""
    units = tmp_path / "units"
    units.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").symlink_to(STANDIN)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_SYSTEMD", str(units))
    yield units
    for pidfile in units.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def unit(units: Path, name: str, reg: LocalRegistry, command: str = "") -> LocalRegistry:
    reg.write_config()
    (units / f"{name}.cmd").write_text(command or f"{REGISTRY} serve {reg.config_path}")
    return reg


@pytest.mark.posix_only
def test_a_systemd_service_is_stopped_started_and_proven(tmp_path, systemd):
    reg = unit(systemd, "registry", LocalRegistry(tmp_path / "reg"))
    strategy = parse_restart_spec("service:registry,timeout=20", registry_config=reg.config_path)
    assert isinstance(strategy, ServiceRestart) and strategy.can_stop and strategy.ready_url == reg.url
    assert "restart the service registry (systemd)" in strategy.describe()
    strategy.start()  # from stopped: started, waited for, proven
    first = strategy.last_pid
    assert first and pid_alive(first) and http_probe(reg.url)
    strategy.restart()
    second = strategy.last_pid
    assert second and second != first and not pid_alive(first) and pid_alive(second)
    assert httpx.get(reg.url + "/v2/").status_code == 200
    strategy.stop()
    assert not pid_alive(second) and not http_probe(reg.url)
    strategy.stop()  # stopping a stopped service: nothing to do
    calls = (systemd / "calls.log").read_text().splitlines()
    assert "--no-ask-password stop registry" in calls and "--no-ask-password start registry" in calls


@pytest.mark.posix_only
def test_a_systemd_restart_fails_in_one_line_when_it_is_not_proven(tmp_path, systemd):
    # no such unit
    with pytest.raises(RestartError, match=r"'systemctl start nothere' exited with code 5: .*Unit nothere.service "
                                           r"not found.*check the unit with 'systemctl status nothere'"):
        ServiceRestart("nothere", timeout=5).start()
    # the unit's registry dies at once (a port another registry holds): never reported as done
    other = LocalRegistry(tmp_path / "other").start()
    try:
        clash = unit(systemd, "clash", LocalRegistry(tmp_path / "clash", port=other.port))
        strategy = ServiceRestart("clash", timeout=10, ready_url=clash.url)
        with pytest.raises(RestartError, match=f"after stopping the service clash, {clash.url} still answers "
                                               f"\\(pid {other.pid} .*holds port {other.port}\\)") as e:
            strategy.restart()
        assert "\n" not in str(e.value)
        # a unit whose process is not the one answering: it runs, but another holds the port
        unit(systemd, "sleeper", LocalRegistry(tmp_path / "sleeper"), command="sleep 60")
        late = ServiceRestart("sleeper", timeout=10, ready_url=other.url)
        other.stop()
        late.stop()
        late.manager.request_start("sleeper", 10)
        other.start()  # another process takes the port while the unit runs
        with pytest.raises(RestartError, match=f"{other.url} answers, but port {other.port} is held by pid "
                                               f"{other.pid} .*not by the service sleeper"):
            late.start()
    finally:
        other.stop()
    with pytest.raises(UsageError, match="service name .* is not a service name"):
        parse_restart_spec("service:bad name")
    with pytest.raises(UsageError, match="'service:' needs the service's name first"):
        parse_restart_spec("service:timeout=5")


@pytest.fixture
def scm():
    """The Windows implementation over the recording double (its Service Control Manager, its TCP
    table, its process calls) for one test; its services killed at the end."""
    from support.win32double import RecordingWin32

    native = RecordingWin32()
    before = platform.use(WindowsPlatform(native))
    try:
        yield native
    finally:
        platform.use(before)
        for service in native.services.values():
            service.kill()


def test_a_windows_service_is_stopped_started_and_proven(tmp_path, scm):
    from support.win32double import FakeService

    reg = LocalRegistry(tmp_path / "reg")
    reg.write_config()
    scm.services["registry"] = FakeService([REGISTRY, "serve", str(reg.config_path)], str(tmp_path / "svc.log"),
                                           start_delay=0.3)
    strategy = parse_restart_spec("service:registry,timeout=20", registry_config=reg.config_path)
    assert isinstance(strategy, ServiceRestart) and isinstance(strategy.manager, WindowsServices)
    assert "the Service Control Manager" in strategy.describe()
    strategy.start()
    first = strategy.last_pid
    assert first == scm.services["registry"].pids[-1] and http_probe(reg.url)
    strategy.restart()
    second = strategy.last_pid
    assert second != first and not pid_alive(first) and http_probe(reg.url)
    # ControlService(STOP) returned at once (STOP_PENDING): the strategy waited for STOPPED
    verbs = [c.name for c in scm.calls if c.name.startswith("service_")]
    stop = verbs.index("service_stop")
    assert verbs[stop + 1:stop + 2] == ["service_status"] and verbs.count("service_start") == 2
    # the proof went through Windows' TCP table (the double: /proc/net/tcp)
    assert scm.called("tcp_listeners")
    strategy.stop()
    assert not http_probe(reg.url)


def test_windows_service_errors_are_one_line_with_what_to_do(tmp_path, scm):
    from support.win32double import FakeService

    services = WindowsServices(scm)
    with pytest.raises(RestartError, match="querying the Windows service 'absent' failed: there is no such service "
                                           ".*'sc query NAME'"):
        ServiceRestart("absent", timeout=2, manager=services).restart()
    scm.services["registry"] = FakeService(["sleep", "60"], str(tmp_path / "svc.log"))
    scm.service_failures[("start", "registry")] = 5
    with pytest.raises(RestartError, match="starting the Windows service 'registry' failed: not allowed to control "
                                           "it: run regpatch as an administrator"):
        ServiceRestart("registry", timeout=2, manager=services).start()
    # a service that never reaches RUNNING within its timeout
    scm.services["slow"] = FakeService(["sleep", "60"], str(tmp_path / "slow.log"), start_delay=30)
    t0 = time.monotonic()
    with pytest.raises(RestartError, match=r"the service slow did not start within 1 s \(it is starting\); .*"
                                           "service:slow,timeout=SECONDS"):
        ServiceRestart("slow", timeout=1, manager=services).start()
    assert time.monotonic() - t0 < 5


