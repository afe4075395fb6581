"""Test helpers: skopeo as an independent client, a byte-exact tree hash, moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# skopeo subcommands that talk to a registry with one side only.
_ONE_SIDED = {"inspect", "list-tags", "delete", "login", "logout"}


def skopeo(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``skopeo --insecure-policy <sub> [tls flags] <args...>``.

    ``copy``/``sync`` get ``--src-tls-verify=false --dest-tls-verify=false``;
    ``inspect``/``list-tags``/``delete`` get ``--tls-verify=false`` (plain HTTP
    on loopback). Returns the CompletedProcess (text); raises AssertionError
    with the command and stderr when it fails and ``check``.
    """
    if not args:
        raise ValueError("skopeo needs a subcommand")
    sub, rest = args[0], list(args[1:])
    flags: list[str] = []
    if sub in ("copy", "sync"):
        flags = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    elif sub in _ONE_SIDED:
        flags = ["--tls-verify=false"]
    flags = [f for f in flags if not any(a.startswith(f.split("=")[0]) for a in rest)]
    cmd = ["skopeo", "--insecure-policy", sub, *flags, *rest]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed with exit {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def _ref(host: str, repo: str, ref: str) -> str:
    sep = "@" if ref.startswith("sha256:") else ":"
    return f"docker://{host}/{repo}{sep}{ref}"


def skopeo_inspect_raw(host: str, repo: str, ref: str, *, creds: Optional[str] = None) -> bytes:
    """The exact manifest bytes the registry serves for a tag or digest."""
    extra = ["--creds", creds] if creds else []
    return skopeo("inspect", "--raw", *extra, _ref(host, repo, ref)).stdout


def skopeo_inspect_digest(host: str, repo: str, tag: str, *, creds: Optional[str] = None) -> str:
    """``sha256:<hex>`` of the manifest (or index) the tag points at, computed
    over the raw bytes served (works for Windows-only indexes too)."""
    return "sha256:" + hashlib.sha256(skopeo_inspect_raw(host, repo, tag, creds=creds)).hexdigest()


def skopeo_pull(host: str, repo: str, ref: str, dest_dir: Path, *, all_images: bool = True,
                creds: Optional[str] = None) -> Path:
    """``skopeo copy [--all] docker://host/repo:ref dir:dest_dir``; skopeo checks
    the digest and size of every blob and manifest it fetches. ``ref`` is a tag
    or a ``sha256:`` digest. Returns ``dest_dir``."""
    extra = ["--all"] if all_images else []
    if creds:
        extra += ["--src-creds", creds]
    skopeo("copy", *extra, _ref(host, repo, ref), f"dir:{dest_dir}")
    return Path(dest_dir)


def tree_hash(path: Path) -> str:
    """sha256 over everything under ``path``: sorted relative paths, type,
    permission bits, file contents, symlink targets (never followed) and
    directories (empty ones too). Equal hashes mean byte-identical trees."""
    root = Path(path)
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            entries.append(Path(dirpath, name))
    for p in sorted(entries, key=lambda p: p.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        st = os.lstat(p)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L\0{rel}\0{mode:o}\0{os.readlink(p)}\0".encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(f"D\0{rel}\0{mode:o}\0".encode())
        elif stat.S_ISREG(st.st_mode):
            h.update(f"F\0{rel}\0{mode:o}\0{st.st_size}\0".encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"O\0{rel}\0{st.st_mode:o}\0".encode())
    return h.hexdigest()


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1 (a free port); yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def error_line(err: str) -> str:
    """The one ``regpatch: error:`` line of a command's stderr (exactly one, or the test fails)."""
    lines = [l for l in err.splitlines() if l.startswith("regpatch: error:")]
    assert len(lines) == 1, err
    return lines[0]
