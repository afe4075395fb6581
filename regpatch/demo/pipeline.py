"""The demo's second half: the same patch day as a Prefect pipeline, on this machine.

1. a Prefect server on its embedded default database (SQLite), on 127.0.0.1, with its
   home under the workdir (started here in plain sight, stopped at the end);
2. three small registries holding last month's image: site-a (group ``canary``), site-b
   and site-c (group ``fleet``); site-c's inventory entry has a verify command that fails
   on purpose, so one registry shows red;
3. the shipped deployments (``deployments/prefect.yaml``) and the per-registry ones of
   the inventory (``regpatch deployments --apply``), one process worker on the pool
   ``regpatch``;
4. the rollout run as a deployment run, as the UI's Run button does, in two waves;
5. the outcome checked independently: site-a and site-b serve the patched image (skopeo),
   site-c still serves last month's image (its tag was not moved), the run is red.

This module drives Prefect through its command line and its HTTP API; it does not
import Prefect (the core never does).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import yaml

from regpatch import platform
from regpatch.demo.images import push_with_skopeo
from regpatch.demo.loopback import LocalRegistry, free_port
from regpatch.platform import children
from regpatch.registry.client import RegistryClient

SITES = (("site-a", "canary"), ("site-b", "fleet"), ("site-c", "fleet"))
FAILING = "site-c"
PIDS = "pipeline.pids.json"
BIN = Path(sys.executable).parent


class PipelineFailed(Exception):
    """The pipeline did not behave as the demo intends."""


def _stop_pid(pid: int) -> None:
    """Stop a process the demo started (the Prefect server, its worker): asked first, killed
    after 5 s (both stop the processes they started)."""
    try:
        platform.stop_process(pid)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(50):
        if not platform.pid_alive(pid):  # (a zombie left by an exited parent counts as stopped)
            return
        time.sleep(0.1)
    try:
        platform.kill_process(pid)
    except ProcessLookupError:
        pass


class Pipeline:
    def __init__(self, workdir: Path, say: Callable[[str], None], repo_root: Optional[Path] = None):
        self.workdir = workdir / "pipeline"
        self.say = say
        self.repo_root = repo_root or Path(__file__).resolve().parents[2]
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.ui = f"http://127.0.0.1:{self.port}"
        self.registries: dict[str, LocalRegistry] = {}
        self.processes: dict[str, int] = {}

    # -- processes --------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        home = self.workdir / "prefect"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_API_URL=self.api, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_STATIC_DIRECTORY=str(home / "ui"),
                   PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_LOGGING_LEVEL="WARNING")
        return env

    def start(self, name: str, cmd: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = platform.spawn_detached(cmd, stdout=log, env=self.env(), cwd=self.workdir)
        self.processes[name] = proc.pid
        self.save()
        self.say(f"started {name} (pid {proc.pid}): {' '.join(cmd[:4])} ...; log {log.name}")

    def save(self) -> None:
        doc = {"processes": self.processes, "registries": {n: r.pidfile.as_posix() for n, r in self.registries.items()}}
        (self.workdir / PIDS).write_text(json.dumps(doc, indent=2))

    def run_cli(self, *args: str, timeout: float = 300) -> str:
        done = children.run(list(args), env=self.env(), cwd=self.repo_root, timeout=timeout,
                            stdout=children.Capture(1 << 20, "head"), stderr=children.Capture(64 << 10, "tail"))
        if done.returncode != 0:
            lines = done.stderr.lines() or done.stdout.lines()
            raise PipelineFailed(f"{' '.join(args[:3])} {done.status()}: {lines[-1] if lines else ''}")
        return done.stdout.data.decode("utf-8", "replace")

    # -- the API ----------------------------------------------------------------------
    def wait_for_server(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise PipelineFailed(f"the Prefect server did not answer within {timeout:.0f} s; see "
                             f"{self.workdir / 'server.log'}")

    def call(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        r = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
        if r.status_code >= 400:
            raise PipelineFailed(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    # -- the story ----------------------------------------------------------------------
    def registries_with_old_image(self, sc: dict) -> Path:
        entries = []
        for name, group in SITES:
            reg = LocalRegistry(self.workdir / name).start()
            self.registries[name] = reg
            push_with_skopeo(sc["old_layout"], sc["ref"], reg.host, sc["repository"], sc["tag"])
            entry = {"name": name, "storage": str(reg.root), "url": reg.url, "group": group}
            if name == FAILING:  # on purpose: its verify command fails, so its tag is not moved
                entry["verify_command"] = "false {ref}"
            entries.append(entry)
            self.say(f"{name} ({group}): registry {reg.url}, storage {reg.root}")
        self.save()
        inventory = self.workdir / "inventory.yml"
        inventory.write_text(yaml.safe_dump({"registries": entries}, sort_keys=False))
        self.say(f"inventory {inventory} ({FAILING}'s verify command fails on purpose)")
        return inventory

    def deploy(self, inventory: Path, repository: str) -> None:
        self.run_cli(str(BIN / "prefect"), "work-pool", "create", "regpatch", "--type", "process")
        out = self.run_cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(self.repo_root / "deployments" / "prefect.yaml"))
        shipped = sorted({line.split("'")[1] for line in out.splitlines() if "Deployment '" in line})
        self.say(f"shipped deployments: {', '.join(shipped) or '(see the UI)'}")
        out = self.run_cli(str(BIN / "regpatch"), "deployments", "--inventory", str(inventory), "--repository",
                           repository, "--apply")
        self.say(f"per-registry deployments: {len(out.splitlines())} changes (patch-registry/patch-site-a ...)")

    def run_rollout(self, sc: dict, inventory: Path) -> dict:
        dep = self.call("GET", "/deployments/name/rollout/rollout")
        params = {"bundle": str(sc["staged"]), "repository": sc["repository"], "tag": sc["tag"],
                  "rollout": {"inventory": str(inventory), "max_parallel": 2},
                  "change": {"requested_by": "the regpatch demo (the Run button's way)",
                             "reason": "demo: this month's servercore patch"}}
        t0 = time.monotonic()
        run = self.call("POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})
        self.say(f"rollout started as a deployment run (as the UI's Run button does): {self.ui}/runs/flow-run/"
                 f"{run['id']}")
        seen = None
        while time.monotonic() - t0 < 300:
            fr = self.call("GET", f"/flow_runs/{run['id']}")
            state = fr["state"]["type"] if fr.get("state") else "PENDING"
            if state != seen:
                self.say(f"  {time.monotonic() - t0:5.1f} s  {state.lower()}")
                seen = state
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return fr
            time.sleep(1)
        raise PipelineFailed("the rollout did not finish within 300 s; see the worker's log "
                             f"{self.workdir / 'worker.log'}")

    def check(self, sc: dict, run: dict) -> None:
        new, old = str(sc["new"].manifest_digest), str(sc["old"].manifest_digest)
        for name, reg in self.registries.items():
            with RegistryClient(reg.url, insecure=True) as client:
                served = str(client.tag_digest(sc["repository"], sc["tag"]))
            want = old if name == FAILING else new
            label = "last month's (its tag was not moved)" if name == FAILING else "the patched image"
            if served != want:
                raise PipelineFailed(f"{name} serves {served}, expected {label} {want}")
            self.say(f"{name}: serves {label} {served[:19]}...")
        if run["state"]["type"] != "FAILED":
            raise PipelineFailed(f"the rollout ended {run['state']['type']}, expected FAILED (red) because of "
                                 f"{FAILING}")
        self.say(f"the rollout run is red, as intended: {run['state'].get('message') or ''}"[:300])
        for art in self.call("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}):
            if (art.get("key") or "").startswith("rollout-"):
                self.say(art.get("data") or "")

    def run(self, sc: dict) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                              str(self.port)])
        self.wait_for_server()
        self.say(f"Prefect server {self.ui} (database: SQLite in {self.workdir / 'prefect'})")
        inventory = self.registries_with_old_image(sc)
        self.deploy(inventory, sc["repository"])
        self.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "regpatch", "--type", "process",
                              "--name", "demo-worker"])
        run = self.run_rollout(sc, inventory)
        self.check(sc, run)

    def stop(self) -> None:
        for name in ("worker", "server"):
            pid = self.processes.pop(name, None)
            if pid:
                _stop_pid(pid)
        for reg in self.registries.values():
            reg.stop()
        self.registries = {}
        if self.workdir.is_dir():
            self.save()


def stop_left_running(workdir: Path) -> list[str]:
    """Stop what a demo left running with --keep-running (its pids file); what was stopped."""
    path = workdir / "pipeline" / PIDS
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    done = []
    for name, pid in (doc.get("processes") or {}).items():
        if isinstance(pid, int):
            _stop_pid(pid)
            done.append(f"{name} (pid {pid})")
    for name, pidfile in (doc.get("registries") or {}).items():
        try:
            pid = int(Path(pidfile).read_text().strip())
        except (OSError, ValueError):
            continue
        if platform.pid_alive(pid) and platform.is_registry_process(pid):
            _stop_pid(pid)
            done.append(f"registry {name} (pid {pid})")
    path.unlink(missing_ok=True)
    return done
