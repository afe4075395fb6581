"""systemd as the service manager of a POSIX host, through ``systemctl`` run by the one runner
(``regpatch.platform.children``: its own process group, bounded output, a stop request or the
timeout ends it).

    systemctl --no-ask-password stop NAME       waits for the stop job (systemctl's own wait)
    systemctl --no-ask-password start NAME      waits for the start job (a Type=simple unit: the fork)
    systemctl is-active NAME                    active | inactive | failed | activating | deactivating
    systemctl show -p MainPID --value NAME      the main process, 0 while there is none

``--no-ask-password``: a run without the rights to control the unit fails at once instead of
waiting for a password prompt nobody sees.
"""

from __future__ import annotations

from regpatch.errors import RestartError
from regpatch.platform import children
from regpatch.platform._base import ServiceManager, ServiceState

SYSTEMCTL = "systemctl"
QUERY_TIMEOUT = 15.0
KEPT = 4096

# is-active's words -> the words of ServiceState
STATES = {"active": "running", "reloading": "running", "inactive": "stopped", "failed": "failed",
          "activating": "starting", "deactivating": "stopping"}


class Systemd(ServiceManager):
    kind = "systemd"

    def _ctl(self, args: list[str], timeout: float) -> children.Finished:
        shown = " ".join([SYSTEMCTL, *args])
        try:
            return children.run([SYSTEMCTL, *args], stdout=children.Capture(KEPT),
                                stderr=children.Capture(KEPT, "tail"), timeout=timeout, leftovers="keep")
        except children.ChildTimeout:
            raise RestartError(f"'{shown}' did not return within {timeout:g} s; check the unit with "
                               f"'systemctl status {args[-1]}', or raise its timeout= in the restart spec") from None
        except FileNotFoundError:
            raise RestartError(f"'{SYSTEMCTL}' is not on PATH: a service: restart on this host needs systemd; "
                               "use process: or command: instead") from None
        except OSError as e:
            raise RestartError(f"'{shown}' could not start: {e.strerror or type(e).__name__}") from None

    def query(self, name: str) -> ServiceState:
        active = self._ctl(["is-active", name], QUERY_TIMEOUT)  # exit 3 when not active: the word tells
        word = (active.stdout.lines() or ["unknown"])[0]
        shown = self._ctl(["show", "-p", "MainPID", "--value", name], QUERY_TIMEOUT)
        text = (shown.stdout.lines() or ["0"])[0]
        pid = int(text) if shown.returncode == 0 and text.isdigit() and 0 < int(text) < 1 << 22 else None
        return ServiceState(name, STATES.get(word, word), pid)

    def _order(self, verb: str, name: str, timeout: float) -> None:
        done = self._ctl(["--no-ask-password", verb, name], timeout)
        if done.returncode != 0:
            last = (done.stderr.lines() or ["(no stderr)"])[-1]
            raise RestartError(f"'systemctl {verb} {name}' {done.status()}: {last[:300]}; check the unit with "
                               f"'systemctl status {name}' and that this user may {verb} it")

    def request_stop(self, name: str, timeout: float) -> None:
        self._order("stop", name, timeout)

    def request_start(self, name: str, timeout: float) -> None:
        self._order("start", name, timeout)
