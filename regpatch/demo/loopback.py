"""A real distribution registry on loopback, for tests, the demo and benchmarks.

    with LocalRegistry(tmp_path / "registry").start() as reg:
        reg.url        # "http://127.0.0.1:PORT"
        reg.root       # rootdirectory: holds docker/registry/v2 once pushed to

The workdir gets ``data/`` (the storage rootdirectory), ``config.yml``,
``registry.pid``, ``registry.log`` and, when credentials are asked for,
``htpasswd`` (bcrypt). The process is started with the helpers of
``regpatch.registry.restart``, so ``process:pidfile=<workdir>/registry.pid`` restarts
it like any managed registry; ``stop`` kills whatever pid the pidfile holds
at that moment.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from pathlib import Path
from typing import Optional

import yaml

from regpatch.errors import RegistryUnavailable
from regpatch.registry.processes import pid_alive, read_pidfile, start_detached, stop_pid, wait_for_registry_process


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_registry_config(path: Path, root: Path, addr: str, htpasswd_path: Optional[Path] = None,
                          cache: bool = True) -> Path:
    """Write a registry config.yml (``version: 0.1``) and return its path.

    Filesystem storage at ``root``, deletes enabled, in-memory blob descriptor
    cache when ``cache``, a random ``http.secret``, log level info, and
    htpasswd auth when ``htpasswd_path`` is given.
    """
    storage: dict = {"filesystem": {"rootdirectory": str(Path(root).resolve())},
                     "delete": {"enabled": True}}
    if cache:
        storage["cache"] = {"blobdescriptor": "inmemory"}
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": storage,
        "http": {"addr": addr, "secret": secrets.token_hex(16)},
    }
    if htpasswd_path is not None:
        config["auth"] = {"htpasswd": {"realm": "regpatch", "path": str(Path(htpasswd_path).resolve())}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """An htpasswd file with one bcrypt entry (the only scheme the registry accepts)."""
    import bcrypt  # the test extra: only for a registry with htpasswd

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    Path(path).write_text(f"{user}:{hashed}\n", encoding="utf-8")
    return Path(path)


class LocalRegistry:
    """A ``docker-registry serve config.yml`` process bound to 127.0.0.1."""

    def __init__(self, workdir: Path, *, port: Optional[int] = None,
                 htpasswd: Optional[tuple[str, str]] = None,
                 binary: str = "docker-registry", blobdescriptor_cache: bool = True):
        self.workdir = Path(workdir)
        self.root = self.workdir / "data"
        self.config_path = self.workdir / "config.yml"
        self.pidfile = self.workdir / "registry.pid"
        self.log_path = self.workdir / "registry.log"
        self.htpasswd_path: Optional[Path] = self.workdir / "htpasswd" if htpasswd else None
        self.credentials = htpasswd
        self.binary = binary
        self.blobdescriptor_cache = blobdescriptor_cache
        self.port = port if port is not None else free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

    @property
    def pid(self) -> Optional[int]:
        return read_pidfile(self.pidfile)

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.credentials and self.htpasswd_path:
            write_htpasswd(self.htpasswd_path, *self.credentials)
        return write_registry_config(self.config_path, self.root, self.host,
                                     htpasswd_path=self.htpasswd_path,
                                     cache=self.blobdescriptor_cache)

    def start(self, timeout: float = 10) -> "LocalRegistry":
        """Write the config, start the registry detached, wait for ``/v2/``.

        A no-op when the pid in the pidfile is still running. On failure the
        process is stopped, the pidfile removed and ``RegistryUnavailable``
        names the last log line.
        """
        running = read_pidfile(self.pidfile)
        if running is not None and pid_alive(running):
            return self
        binary = shutil.which(self.binary)
        if binary is None:
            raise RegistryUnavailable(f"registry binary {self.binary!r} not found on PATH; "
                                      "install the docker-registry package")
        self.write_config()
        pid = start_detached([binary, "serve", str(self.config_path)],
                             log_path=self.log_path, pidfile=self.pidfile)
        try:
            wait_for_registry_process(pid, self.url, timeout=timeout, log_path=self.log_path)
        except BaseException:
            stop_pid(pid, timeout=2)
            self.pidfile.unlink(missing_ok=True)
            raise
        return self

    def stop(self) -> None:
        """Stop the pid currently in the pidfile (a restart may have replaced
        it), wait for it to exit and remove the pidfile. Idempotent."""
        stop_pid(read_pidfile(self.pidfile))
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> "LocalRegistry":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalRegistry({self.url}, root={self.root})"
