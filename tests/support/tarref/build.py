"""Build the Go reference (main.go) with Debian's ``go``, offline, into a cache folder.

    python tests/support/tarref/build.py        # prints the binary's path

The binary is named after a hash of main.go and the Go version, so a changed
program or toolchain builds again and an unchanged one is reused. GOPATH, GOCACHE
and the binary live under ``$REGPATCH_TARREF_CACHE`` (default
``$XDG_CACHE_HOME/regpatch-tarref`` or ``~/.cache/regpatch-tarref``); nothing is
downloaded: GOPATH mode (GO111MODULE=off), standard library only,
GOTOOLCHAIN=local, GOPROXY=off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "main.go"


class GoMissing(RuntimeError):
    """No ``go`` command: install Debian's golang-go."""


def cache_dir() -> Path:
    env = os.environ.get("REGPATCH_TARREF_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "regpatch-tarref"


def go_command() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoMissing("the Go reference needs the 'go' command: apt-get install golang-go")
    return go


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=str(cache / "gopath"), GOCACHE=str(cache / "gocache"),
               GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="", CGO_ENABLED="0")
    return env


def build(cache: Path | None = None) -> Path:
    """The path of a built reference binary (built now if missing)."""
    go = go_command()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    env = _env(cache)
    version = subprocess.run([go, "version"], capture_output=True, text=True, env=env, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = cache / f"tarref-{key}"
    if binary.exists():
        return binary
    tmp = binary.with_name(binary.name + f".tmp{os.getpid()}")
    proc = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), str(SOURCE)], cwd=HERE,
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the Go reference failed: {proc.stderr.strip()}")
    os.replace(tmp, binary)
    return binary


if __name__ == "__main__":
    try:
        print(build())
    except (GoMissing, RuntimeError) as e:
        print(f"build.py: {e}", file=sys.stderr)
        sys.exit(1)
