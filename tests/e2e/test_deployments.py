"""The distributed path, for real: a Prefect server, two work pools, two process workers.

One ``prefect server start`` on 127.0.0.1 (its own PREFECT_HOME) for the module;
two registries, each "owned" by the worker of its own pool; the project's
deployments/prefect.yaml deployed with ``prefect deploy --all`` (adapted: one
patch-registry deployment per pool); then a rollout across both pools, a
patch-registry run created as the UI does (``prefect deployment run --param``),
and a run of the rollout deployment itself. Every result is checked with skopeo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from regpatch.localregistry import LocalRegistry, free_port
from regpatch.sample import push_with_skopeo, scenario_servercore
from util import skopeo_inspect_digest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REPO, TAG = "servercore", "ltsc2019"
POOLS = {"site-a": "pool-a", "site-b": "pool-b"}


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


def run(argv, env, timeout=300, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false", "COLUMNS": "200"}

    def env(home: str) -> dict:
        (tmp / home).mkdir(exist_ok=True)
        return {**base_env, "PREFECT_HOME": str(tmp / home)}

    procs: list[Proc] = []
    regs: dict[str, LocalRegistry] = {}
    try:
        server = Proc([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                      env(".server"), tmp / "server.log")
        procs.append(server)
        deadline = time.monotonic() + 120
        while True:
            assert server.p.poll() is None, server.text()[-3000:]
            try:
                if httpx.get(api + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prefect server did not start: " + server.text()[-3000:]
            time.sleep(0.5)

        s = scenario_servercore(tmp / "sample", base_size=64 << 10, delta_size=16 << 10)
        for site in POOLS:
            regs[site] = LocalRegistry(tmp / site).start()
            push_with_skopeo(s["old_layout"], s["ref"], regs[site].host, REPO, TAG)

        # the project's prefect.yaml, plus one patch-registry deployment per pool;
        # the rollout deployment runs on pool-a
        doc = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
        template = next(d for d in doc["deployments"] if d["name"] == "patch-registry")
        for pool in ("regpatch", *POOLS.values()):
            out = run([BIN / "prefect", "work-pool", "create", pool, "--type", "process"], env("cli"))
            assert out.returncode == 0, out.stdout + out.stderr
        for pool in POOLS.values():
            doc["deployments"].append({**template, "name": pool, "work_pool": {"name": pool}})
        rollout_dep = next(d for d in doc["deployments"] if d["name"] == "rollout")
        rollout_dep["work_pool"] = {"name": "pool-a"}
        prefect_file = tmp / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        deploy = run([BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
                     env("cli"))
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        listing = run([BIN / "prefect", "deployment", "ls"], env("cli"))

        workers = {}
        for site, pool in POOLS.items():
            workers[site] = Proc([BIN / "prefect", "worker", "start", "--pool", pool, "--type", "process",
                                  "--name", f"worker-{site}"], env(f"worker-{site}"), tmp / f"worker-{site}.log",
                                 cwd=tmp)
            procs.append(workers[site])
        yield dict(api=api, env=env("cli"), regs=regs, scenario=s, workers=workers, tmp=tmp,
                   deploy_output=deploy.stdout, listing=listing.stdout)
    finally:
        for p in reversed(procs):
            p.stop()
        for reg in regs.values():
            reg.stop()


def flow_runs(api: str, **flt) -> list[dict]:
    body = {"flow_runs": flt} if flt else {}
    r = httpx.post(api + "/flow_runs/filter", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


def test_deploy_all_lists_both_deployments_with_schedule(cluster):
    out = cluster["deploy_output"]
    assert "Deployment 'patch-registry/patch-registry' successfully created" in out
    assert "Deployment 'rollout/rollout' successfully created" in out
    assert "patch-registry/pool-a" in cluster["listing"] and "rollout/rollout" in cluster["listing"]
    dep = httpx.get(cluster["api"] + "/deployments/name/rollout/rollout", timeout=10).json()
    (schedule,) = dep["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 8-14 * 3" and schedule["schedule"]["day_or"] is False
    patch = httpx.get(cluster["api"] + "/deployments/name/patch-registry/pool-b", timeout=10).json()
    assert patch["work_pool_name"] == "pool-b"
    schema = patch["parameter_openapi_schema"]
    props = schema["properties"]
    registry = schema["definitions"]["RegistryParams"]["properties"]
    assert "rootdirectory" in registry["storage"]["description"]
    assert props["dry_run"]["type"] == "boolean"


def test_rollout_across_two_pools(cluster):
    regs, s, tmp = cluster["regs"], cluster["scenario"], cluster["tmp"]
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"registries": [
        {"name": site, "storage": str(regs[site].root), "url": regs[site].url, "work_pool": pool,
         "group": "canary" if site == "site-a" else "fleet"}
        for site, pool in POOLS.items()]}))
    proc = run([BIN / "regpatch", "rollout", s["staged"], "--inventory", inventory, "--repository", REPO,
                "--tag", TAG, "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}"],
               cluster["env"], timeout=400)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = str(s["new"].manifest_digest)
    for site, pool in POOLS.items():
        line = next(l for l in proc.stdout.splitlines() if l.startswith(site + " "))
        assert f"pool {pool}" in line and "patched" in line and "KiB" in line, proc.stdout
        assert skopeo_inspect_digest(regs[site].host, REPO, TAG) == new
    # each registry was patched by the worker of its own pool
    runs = [r for r in flow_runs(cluster["api"]) if (r["parameters"].get("registry") or {}).get("storage")
            and r["parameters"].get("tag") == TAG]
    assert {(r["work_pool_name"], r["parameters"]["registry"]["storage"], r["state_type"]) for r in runs} == {
        (pool, str(regs[site].root), "COMPLETED") for site, pool in POOLS.items()}
    for site, pool in POOLS.items():
        run_ = next(r for r in runs if r["work_pool_name"] == pool)
        assert run_["id"] in cluster["workers"][site].text()
        other = next(w for s_, w in cluster["workers"].items() if s_ != site)
        assert run_["id"] not in other.text()


def test_patch_registry_run_from_the_cli_like_the_ui(cluster):
    regs, s = cluster["regs"], cluster["scenario"]
    params = {"bundle": str(s["staged"]), "repository": REPO, "tag": "ui-triggered",
              "registry": {"storage": str(regs["site-b"].root), "registry_url": regs["site-b"].url}}
    argv = [BIN / "prefect", "deployment", "run", "patch-registry/pool-b", "--watch", "--watch-interval", "1",
            "--flow-run-name", "ui-like-run"]
    for k, v in params.items():
        argv += ["--param", f"{k}={json.dumps(v)}"]
    proc = run(argv, cluster["env"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fr,) = flow_runs(cluster["api"], name={"any_": ["ui-like-run"]})
    assert fr["state_type"] == "COMPLETED" and fr["work_pool_name"] == "pool-b"
    assert fr["id"] in cluster["workers"]["site-b"].text()
    assert fr["id"] not in cluster["workers"]["site-a"].text()
    assert skopeo_inspect_digest(regs["site-b"].host, REPO, "ui-triggered") == str(s["new"].manifest_digest)


def test_rollout_deployment_run_on_a_worker(cluster):
    """The scheduled path: the rollout deployment itself, run by pool-a's worker."""
    regs, s, tmp = cluster["regs"], cluster["scenario"], cluster["tmp"]
    inventory = tmp / "inventory-deployed.yml"
    inventory.write_text(yaml.safe_dump({"registries": [
        {"name": site, "storage": str(regs[site].root), "url": regs[site].url, "work_pool": pool}
        for site, pool in POOLS.items()]}))
    params = {"bundle": str(s["staged"]), "inventory": str(inventory), "repository": REPO,
              "tag": "monthly", "max_parallel": 2}
    argv = [BIN / "prefect", "deployment", "run", "rollout/rollout", "--watch", "--watch-interval", "1",
            "--flow-run-name", "monthly-window"]
    for k, v in params.items():
        argv += ["--param", f"{k}={json.dumps(v)}"]
    proc = run(argv, cluster["env"], timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for site in POOLS:
        assert skopeo_inspect_digest(regs[site].host, REPO, "monthly") == str(s["new"].manifest_digest)
    (fr,) = flow_runs(cluster["api"], name={"any_": ["monthly-window"]})
    arts = httpx.post(cluster["api"] + "/artifacts/filter", timeout=10, json={
        "artifacts": {"flow_run_id": {"any_": [fr["id"]]}, "type": {"any_": ["table"]}}}).json()
    (table,) = arts
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert sorted((r["registry"], r["status"]) for r in rows) == [("site-a", "patched"), ("site-b", "patched")]
