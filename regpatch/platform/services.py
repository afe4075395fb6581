"""The host's service manager, for ``--restart service:NAME``: the Service Control Manager on
Windows (``_windows.WindowsServices`` over the Win32 calls), systemd elsewhere (``_systemd.Systemd``
through the one runner, ``children``). A module above the seam's core because systemd's
``systemctl`` runs through ``children``, which is built on the seam."""

from __future__ import annotations

from regpatch import platform
from regpatch.platform._base import ServiceManager
from regpatch.platform._systemd import Systemd
from regpatch.platform._windows import WindowsPlatform

__all__ = ["service_manager"]


def service_manager() -> ServiceManager:
    impl = platform.current()
    if isinstance(impl, WindowsPlatform):
        return impl.services()
    return Systemd()
