"""Linux's /proc, read: a process's start time and parent, the TCP sockets listening on a port and
the processes holding them. Used by the POSIX implementation and by the Windows double of the tests
(which stands for Windows' process and TCP tables with Linux's); names no Unix-only call directly."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional

from regpatch.platform._base import Listener


def readlink(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:  # gone, or another user's process (EACCES)
        return None


def stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat as fields from the state on (index 0 is the state, 1 the parent's pid,
    19 the start time in clock ticks since boot); the name, which may hold spaces, dropped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return text[text.rfind(")") + 2:].split()


def started(fields: Optional[list[str]], ticks_per_second: int) -> Optional[float]:
    """The start time of /proc/PID/stat as seconds since the epoch (within ~10 ms: /proc/uptime's)."""
    if not fields or len(fields) < 20:
        return None
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + int(fields[19]) / ticks_per_second
    except (OSError, ValueError, IndexError):
        return None


_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _socket_inodes(port: Optional[int]) -> Optional[dict[int, tuple[str, int]]]:
    """inode -> local address of every TCP socket listening on ``port`` (/proc/net/tcp and tcp6,
    the network namespace of this process); None without /proc/net."""
    found: dict[int, tuple[str, int]] = {}
    seen = False
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != _LISTEN:
                continue
            hex_addr, _, hex_port = f[1].partition(":")
            if port is None or int(hex_port, 16) == port:
                found[int(f[9])] = (_proc_address(hex_addr, family), int(hex_port, 16))
    return found if seen else None


def _proc_address(hex_addr: str, family: int) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in host order (little-endian here)."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def linux_listeners(port: Optional[int]) -> Optional[list[Listener]]:
    """Every TCP socket listening on ``port`` (None: on any port) and the process holding it, found by the socket's
    inode among the descriptors in /proc/*/fd (a process this user may not inspect shows as
    ``pid=None``). None where there is no /proc."""
    inodes = _socket_inodes(port)
    if inodes is None:
        return None
    owners: dict[int, int] = {}
    if inodes:
        wanted = {f"socket:[{inode}]": inode for inode in inodes}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                _owned_sockets(int(entry.name), wanted, owners)
            if len(owners) == len(wanted):
                break
    return [Listener(address, p, owners.get(inode)) for inode, (address, p) in sorted(inodes.items())]


def _owned_sockets(pid: int, wanted: dict[str, int], owners: dict[int, int]) -> None:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return
    for fd in fds:
        inode = wanted.get(readlink(f"/proc/{pid}/fd/{fd}") or "")
        if inode is not None:
            owners.setdefault(inode, pid)
