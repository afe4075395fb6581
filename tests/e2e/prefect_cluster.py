"""The production recipe, for tests: PostgreSQL, a Prefect server on it, process workers.

``PostgresCluster`` is Debian's PostgreSQL run by its own ``initdb``/``pg_ctl`` in a
private folder: no TCP listener, one Unix socket folder, a private port number (the
socket's name), peer authentication (the server connects as this OS user, without
a password), as the production recipe (docs/fleet/production.md) does with the system cluster.
``PrefectCluster`` is ``prefect server start`` on that database, with the settings
the recipe gives it (the driver named beside the URL, deployments/prefect-server.env),
the UI settings a browser needs (PREFECT_API_URL / PREFECT_UI_API_URL), and the
process workers of the work pools a test asks for, each in its own PREFECT_HOME.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx

from regpatch.demo.loopback import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Proc:
    """A background process in its own session, its output in a log file."""

    def __init__(self, argv, env, log: Path, cwd=ROOT):
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=self._f,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self._f.close()


def recipe_server_env() -> dict[str, str]:
    """The settings the recipe gives the server (deployments/prefect-server.env): retention."""
    env = {}
    for line in (ROOT / "deployments" / "prefect-server.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def run(argv, env, timeout=300, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (Debian's postgresql package)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): "
                           "run scripts/bootstrap.sh, which installs Debian's postgresql")
    return Path(found[-1]).parent


class PostgresCluster:
    """A throw-away PostgreSQL cluster: Unix socket only, peer authentication."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        # not under pytest's tmp folder: that one is 0700 root, closed to the postgres user
        self.dir = Path(tempfile.mkdtemp(prefix="regpatch-pg-"))
        self.data, self.socket_dir = self.dir / "data", self.dir / "socket"
        self.user = pwd.getpwuid(os.getuid()).pw_name          # the role the Prefect server connects as
        self.owner = "postgres" if os.getuid() == 0 else self.user  # initdb refuses to run as root

    def _as_owner(self, *argv, check=True) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in argv]
        if self.owner != self.user:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
        return proc

    def start(self, database: str = "prefect") -> "PostgresCluster":
        self.socket_dir.mkdir()
        if self.owner != self.user:
            shutil.chown(self.dir, self.owner, self.owner)
            shutil.chown(self.socket_dir, self.owner, self.owner)
        self._as_owner(self.bindir / "initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                       "--auth-local=peer", "--auth-host=reject")
        self._as_owner(self.bindir / "pg_ctl", "-D", self.data, "-l", self.dir / "postgres.log", "-w", "-t", "60",
                       "-o", f"-k {self.socket_dir} -p {self.port} -c listen_addresses=''", "start")
        psql = [self.bindir / "psql", "-h", self.socket_dir, "-p", self.port, "-U", "postgres", "-v",
                "ON_ERROR_STOP=1", "-d", "postgres"]
        if self.user != "postgres":
            self._as_owner(*psql, "-c", f'CREATE ROLE "{self.user}" LOGIN')
        self._as_owner(*psql, "-c", f'CREATE DATABASE "{database}" OWNER "{self.user}"')
        self.database = database
        return self

    @property
    def url(self) -> str:
        """SQLAlchemy/asyncpg URL through the socket: no host, no password."""
        return f"postgresql+asyncpg://{self.user}@/{self.database}?host={self.socket_dir}&port={self.port}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_owner(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrefectCluster:
    """``prefect server start`` on a PostgresCluster, plus process workers."""

    def __init__(self, tmp: Path, *, ui: bool = False):
        self.tmp = tmp
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.ui = ui
        self.pg: Optional[PostgresCluster] = None
        self.procs: list[Proc] = []
        self.workers: dict[str, Proc] = {}
        self.server: Optional[Proc] = None

    def env(self, home: str = "cli", **extra) -> dict:
        (self.tmp / home).mkdir(exist_ok=True)
        return {**os.environ, "PREFECT_API_URL": self.api, "PREFECT_UI_API_URL": self.api,
                "PREFECT_HOME": str(self.tmp / home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "true" if self.ui else "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false", "COLUMNS": "200", **extra}

    def start(self, timeout: float = 180) -> "PrefectCluster":
        self.pg = PostgresCluster().start()
        self.server = Proc([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", self.port],
                           self.env(".server", PREFECT_API_DATABASE_CONNECTION_URL=self.pg.url,
                                    PREFECT_SERVER_DATABASE_DRIVER="postgresql+asyncpg", **recipe_server_env()),
                           self.tmp / "server.log")
        self.procs.append(self.server)
        deadline = time.monotonic() + timeout
        while True:
            if self.server.p.poll() is not None:
                raise RuntimeError("prefect server exited: " + self.server.text()[-3000:])
            try:
                if httpx.get(self.api + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start: " + self.server.text()[-3000:])
            time.sleep(0.5)

    def start_worker(self, pool: str, name: Optional[str] = None) -> Proc:
        name = name or f"worker-{pool}"
        proc = Proc([BIN / "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name],
                    self.env(name), self.tmp / f"{name}.log", cwd=self.tmp)
        self.procs.append(proc)
        self.workers[pool] = proc
        return proc

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.pg:
            self.pg.stop()

    # -- API helpers
    def get(self, path: str):
        r = httpx.get(self.api + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict):
        r = httpx.post(self.api + path, json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def flow_runs(self, **flt) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": flt} if flt else {})

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})

    def artifacts(self, **flt) -> list[dict]:
        return self.post("/artifacts/filter", {"artifacts": flt} if flt else {})

    def logs(self, flow_run_id: str) -> list[dict]:
        return self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})

    def logs_until(self, flow_run_ids: list[str], until, timeout: float = 30.0) -> list[str]:
        """The log messages of these runs on the server. Prefect ships logs from a background
        worker in batches, so the last lines of a run arrive a moment after it ends: poll
        until ``until(messages)`` holds or the time is up (then return what is there)."""
        deadline = time.monotonic() + timeout
        while True:
            messages = [l["message"] for i in flow_run_ids for l in self.logs(i)]
            if until(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)

    def wait_final(self, flow_run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            fr = self.get(f"/flow_runs/{flow_run_id}")
            if fr["state_type"] in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED"):
                return fr
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} still {fr['state_name']} after {timeout} s; "
                                     + "\n".join(w.text()[-1500:] for w in self.workers.values()))
            time.sleep(1)
