"""Prefect for the end-to-end tests: one real ``prefect server start`` on 127.0.0.1."""


class PrefectServer:
    """A real ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME."""

    def __init__(self, home, database_url=None, server_env=None):
        import sys
        from pathlib import Path

        from regpatch.demo.loopback import free_port

        self.home = Path(home)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.exe = str(Path(sys.executable).with_name("prefect"))
        self.proc = None
        self.database_url = database_url  # None: Prefect's default SQLite file in PREFECT_HOME
        self.server_env = dict(server_env or {})  # more settings for the server alone

    def env(self, **extra) -> dict:
        import os

        return {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}

    def start(self, timeout: float = 120) -> "PrefectServer":
        import subprocess
        import time

        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "wb")
        self.proc = subprocess.Popen(
            [self.exe, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env(**self.server_env,
                         **({"PREFECT_API_DATABASE_CONNECTION_URL": self.database_url} if self.database_url else {})),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {timeout}s")

    def stop(self) -> None:
        import os
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
