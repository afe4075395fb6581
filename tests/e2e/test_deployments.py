"""The distributed path, for real, as the production recipe (docs/fleet/production.md) sets it up.

PostgreSQL (Debian's, own cluster on a private socket), ``prefect server start`` on
it, the shipped deployments/prefect.yaml deployed with ``prefect deploy --all``,
the per-registry deployments written by ``regpatch deployments --apply`` from an
inventory of two registries, each on its own work pool with its own process
worker, plus a worker on the ``regpatch`` pool for rollouts. Then what an operator
does from the UI (runs of deployments with only bundle and tag), rollouts across
both pools (one failing), a rollback, and the shipped rollout deployment. Every
result is checked with skopeo and through the API.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml
from prefect_cluster import BIN, PrefectCluster, run
from support.util import skopeo_inspect_digest

from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry

REPO, TAG = "servercore", "ltsc2019"
POOLS = {"site-a": "pool-a", "site-b": "pool-b"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    c = PrefectCluster(tmp)
    regs: dict[str, LocalRegistry] = {}
    try:
        c.start()
        s = scenario_servercore(tmp / "sample", base_size=2 << 20, delta_size=16 << 10)
        for site in POOLS:
            regs[site] = LocalRegistry(tmp / site).start()
            push_with_skopeo(s["old_layout"], s["ref"], regs[site].host, REPO, TAG)
        inventory = tmp / "inventory.yml"
        inventory.write_text(yaml.safe_dump({"registries": [
            {"name": site, "storage": str(regs[site].root), "url": regs[site].url, "work_pool": pool,
             "group": "canary" if site == "site-a" else "fleet"} for site, pool in POOLS.items()]}))

        out = run([BIN / "prefect", "work-pool", "create", "regpatch", "--type", "process"], c.env())
        assert out.returncode == 0, out.stdout + out.stderr
        deploy = run([BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                      "deployments/prefect.yaml"], c.env())
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        apply = run([BIN / "regpatch", "deployments", "--inventory", inventory, "--repository", REPO, "--apply"],
                    c.env())
        assert apply.returncode == 0, apply.stdout + apply.stderr
        for pool in ("regpatch", *POOLS.values()):
            c.start_worker(pool)
        yield dict(c=c, regs=regs, scenario=s, tmp=tmp, inventory=inventory, deploy=deploy.stdout,
                   apply=apply.stdout)
    finally:
        c.stop()
        for reg in regs.values():
            reg.stop()


def deployment(c, name: str) -> dict:
    return c.get(f"/deployments/name/{name}")


CHANGE = {"requested_by": "ana@example.org", "reason": "CHG-25 monthly patch"}


def run_deployment(c, name: str, params: dict, run_name: str = None, timeout: float = 300) -> dict:
    """A run created the way the UI's form creates it (POST create_flow_run), waited for;
    who asked and why (required by the form) are ``CHANGE`` unless ``params`` says."""
    dep = deployment(c, name)
    if not name.startswith("registry-history/") and not name.startswith("rollout/"):
        params = {"change": CHANGE, **params}
    body = {"parameters": params, **({"name": run_name} if run_name else {})}
    fr = c.post(f"/deployments/{dep['id']}/create_flow_run", body)
    return c.wait_final(fr["id"], timeout)


def test_shipped_deployments_and_their_forms(cluster):
    c, out = cluster["c"], cluster["deploy"]
    for name in ("patch-registry/patch-registry", "rollback-registry/rollback-registry",
                 "registry-history/registry-history", "rollout/rollout", "maintenance/maintenance",
                 "registry-maintenance/registry-maintenance", "fleet-status/fleet-status"):
        assert f"Deployment '{name}' successfully created" in out, out
    for name, cron in (("maintenance/maintenance", "0 2 1-7 * 0"), ("fleet-status/fleet-status", "0 7 * * *")):
        (schedule,) = deployment(c, name)["schedules"]  # a maintenance window, shipped inactive
        assert schedule["schedule"]["cron"] == cron and schedule["active"] is False
    rollout = deployment(c, "rollout/rollout")
    (schedule,) = rollout["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 8-14 * 3" and schedule["schedule"]["day_or"] is False
    assert schedule["schedule"]["timezone"] == "Europe/Berlin"
    assert schedule["active"] is False  # inactive until an inventory exists: it never fails out of the box
    (schedule,) = deployment(c, "make-bundle/make-bundle")["schedules"]
    assert schedule["schedule"]["cron"] == "0 22 8-14 * 2" and schedule["active"] is False  # example paths
    patch = deployment(c, "patch-registry/patch-registry")
    schema = patch["parameter_openapi_schema"]
    registry = schema["definitions"]["RegistryParams"]["properties"]
    assert "rootdirectory" in registry["storage"]["description"] and registry["storage"]["title"]
    assert schema["properties"]["dry_run"]["type"] == "boolean"
    rollback = deployment(c, "rollback-registry/rollback-registry")["parameter_openapi_schema"]["properties"]
    assert all(p.get("description") for p in rollback.values()), rollback


def test_an_empty_registry_is_refused_by_the_form_schema(cluster):
    """What the run form checks (the UI's validate call) and what the server enforces:
    no run is created without a storage folder or a config.yml."""
    c = cluster["c"]
    dep = deployment(c, "patch-registry/patch-registry")
    values = {"bundle": "/x", "repository": REPO, "tag": TAG, "registry": {"storage": "", "registry_url": None},
              "change": CHANGE}
    check = c.post("/ui/schemas/validate", {"schema": dep["parameter_openapi_schema"], "values": values})
    assert check["valid"] is False
    assert {"property": "registry", "errors": [{"property": "storage", "errors": ["'' should be non-empty"]}]} \
        in check["errors"]
    values["registry"] = {}
    check = c.post("/ui/schemas/validate", {"schema": dep["parameter_openapi_schema"], "values": values})
    assert "'storage' is a required property" in json.dumps(check["errors"])
    before = len(c.flow_runs())
    r = httpx.post(f"{c.api}/deployments/{dep['id']}/create_flow_run", json={"parameters": values}, timeout=10)
    assert r.status_code in (409, 422) and "storage" in r.text, r.text
    assert len(c.flow_runs()) == before
    values["registry"] = {"registry_config": "/etc/docker/registry/config.yml"}
    del values["change"]
    check = c.post("/ui/schemas/validate", {"schema": dep["parameter_openapi_schema"], "values": values})
    assert "'change' is a required property" in json.dumps(check["errors"])  # who asked, and why
    for change, error in ((None, "'change' is a required property"),({"requested_by": "ana"}, "'reason' is a required property"),
                          ({"requested_by": "ana", "reason": ""}, "'' should be non-empty")):
        if change is not None:
            values["change"] = change
        check = c.post("/ui/schemas/validate", {"schema": dep["parameter_openapi_schema"], "values": values})
        assert check["valid"] is False and error in json.dumps(check["errors"]), check
        r = httpx.post(f"{c.api}/deployments/{dep['id']}/create_flow_run", json={"parameters": values}, timeout=10)
        assert r.status_code in (409, 422) and error in r.text, r.text
    assert len(c.flow_runs()) == before
    values["change"] = CHANGE
    check = c.post("/ui/schemas/validate", {"schema": dep["parameter_openapi_schema"], "values": values})
    assert check["valid"] is True, check


def test_a_bad_tag_or_repository_never_becomes_a_run(cluster):
    """The engine's grammar of repositories and tags is in the schema (pattern, maxLength):
    the server refuses the run at creation, for the form and the API alike."""
    c = cluster["c"]
    before = len(c.flow_runs())
    for name in ("patch-registry/patch-site-a", "rollback-registry/rollback-site-a", "rollout/rollout"):
        dep = deployment(c, name)
        for bad in ({"tag": "LTSC 2019!"}, {"repository": "ServerCore", "tag": TAG}, {"tag": "x" * 129}):
            params = {"bundle": "/x", "change": CHANGE, **bad} if name.startswith("patch") else {"change": CHANGE, **bad}
            r = httpx.post(f"{c.api}/deployments/{dep['id']}/create_flow_run", json={"parameters": params}, timeout=10)
            assert r.status_code in (409, 422) and ("does not match" in r.text or "is too long" in r.text), \
                (name, r.text)
    assert len(c.flow_runs()) == before


def registry_blocks(c) -> dict[str, dict]:
    return {d["name"]: d for d in c.get("/block_types/slug/regpatch-registry/block_documents")}


def test_regpatch_deployments_know_their_registry(cluster):
    """Each registry is a regpatch-registry block (the inventory's fields), and its deployments
    name it: the run form shows the block chosen, not the registry's fields."""
    c, regs = cluster["c"], cluster["regs"]
    out = cluster["apply"]
    blocks = registry_blocks(c)
    assert sorted(blocks) == sorted(POOLS)
    for site, pool in POOLS.items():
        assert f"work pool {pool} created (type process)" in out
        assert f"block regpatch-registry/{site} created" in out, out
        data = blocks[site]["data"]
        assert (data["name"], data["storage"], data["registry_url"], data["work_pool"]) == \
            (site, str(regs[site].root), regs[site].url, pool)
        # each named for what it does: the UI's list shows "patch-site-a", "rollback-site-a", ...
        for name in (f"patch-registry/patch-{site}", f"rollback-registry/rollback-{site}",
                     f"registry-history/history-{site}", f"registry-maintenance/maintenance-{site}"):
            assert f"deployment {name} created (work pool {pool})" in out, out
            dep = deployment(c, name)
            assert dep["work_pool_name"] == pool and f"registry:{site}" in dep["tags"]
            assert dep["parameters"]["registry"] == {"$ref": {"block_document_id": blocks[site]["id"]}}
            assert dep["entrypoint"].startswith("regpatch_flows.") and dep["enforce_parameter_schema"] is True
    assert deployment(c, "patch-registry/patch-site-a")["parameters"]["repository"] == REPO
    # a deployment an older regpatch made under the registry's bare name is replaced, said so
    flow_id = c.get("/flows/name/patch-registry")["id"]
    old = c.post("/deployments/", {"name": "site-a", "flow_id": flow_id, "work_pool_name": "pool-a",
                                   "tags": ["regpatch", "registry:site-a"],
                                   "entrypoint": "regpatch_flows.patch.patch_registry"})
    # running it again updates in place: same ids, the blocks' too
    ids = {site: deployment(c, f"patch-registry/patch-{site}")["id"] for site in POOLS}
    again = run([BIN / "regpatch", "deployments", "--inventory", cluster["inventory"], "--repository", REPO,
                 "--apply"], c.env())
    assert again.returncode == 0, again.stderr
    assert "deployment patch-registry/patch-site-a updated" in again.stdout and "created" not in again.stdout
    assert ("deployment patch-registry/site-a (the old name) deleted: replaced by patch-registry/patch-site-a"
            in again.stdout), again.stdout
    assert httpx.get(f"{c.api}/deployments/{old['id']}", timeout=10).status_code == 404
    assert "block regpatch-registry/site-a updated" in again.stdout
    assert {site: deployment(c, f"patch-registry/patch-{site}")["id"] for site in POOLS} == ids
    assert {n: b["id"] for n, b in registry_blocks(c).items()} == {n: b["id"] for n, b in blocks.items()}
    # the run on the worker reads the block chosen: another pool's (another host's paths) is refused
    fr = run_deployment(c, "rollback-registry/rollback-site-a", {"tag": TAG, "registry": {
        "$ref": {"block_document_id": blocks["site-b"]["id"]}}})
    assert fr["state_type"] == "FAILED"
    assert "this deployment is for the registry 'site-a', the block chosen is for 'site-b'" \
        in fr["state"]["message"], fr["state"]
    said = [m for m in c.logs_until([fr["id"]], lambda m: any("Finished in state Failed" in x for x in m))
            if "the block chosen is for" in m]
    assert len(said) == 1 and said[0].startswith(f"rollback of {REPO}:{TAG} on site-b failed: "), said


def test_ui_run_needs_only_bundle_and_tag_then_rollback_from_the_ui(cluster):
    """The operator's path: patch from patch-registry/patch-site-b's form (bundle and tag only),
    read the summary and the history, roll back from rollback-registry/rollback-site-b's form."""
    c, regs, s = cluster["c"], cluster["regs"], cluster["scenario"]
    old, new = str(s["old"].manifest_digest), str(s["new"].manifest_digest)
    fr = run_deployment(c, "patch-registry/patch-site-b", {"bundle": str(s["staged"]), "tag": TAG})
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["name"] == f"patch site-b {REPO}:{TAG}"
    assert list(fr["parameters"]["registry"]) == ["$ref"]  # the worker's run read its registry from the block
    assert {"registry:site-b", f"repository:{REPO}", "regpatch"} <= set(fr["tags"])
    assert fr["labels"]["regpatch.status"] == "patched" and fr["labels"]["regpatch.new"] == new
    assert fr["id"] in c.workers["pool-b"].text() and fr["id"] not in c.workers["pool-a"].text()
    assert skopeo_inspect_digest(regs["site-b"].host, REPO, TAG) == new

    arts = c.artifacts(flow_run_id={"any_": [fr["id"]]})
    summaries = [a for a in arts if a["type"] == "markdown" and a["key"] == f"site-b-{REPO}-{TAG}"]
    assert len(summaries) == 1 and not [a for a in arts if a["type"] == "table"]
    assert summaries[0]["data"].startswith(f"# Patched: `{REPO}:{TAG}` on `site-b`")
    assert str(regs["site-b"].root) in summaries[0]["data"]
    # its copies (2 MiB) end within their first second: no progress artifact (a longer copy's:
    # test_rollout.py::test_progress_artifacts_only_for_copies_still_running_after_a_second)
    assert not [a for a in arts if a["type"] == "progress"]
    (history,) = [a for a in arts if a["key"] == "history-site-b"]
    # digests compact in the table (it fits 1,366 px), in full once under it
    assert f"`{REPO}:{TAG}` | patch | `{old[7:19]}…` | `{new[7:19]}…`" in history["data"]
    assert {f"- `{old[7:19]}…` = `{old}`", f"- `{new[7:19]}…` = `{new}`"} <= set(history["data"].splitlines())
    assert "requested by ana@example.org; reason CHG-25 monthly patch" in history["data"]
    assert "| requested by | ana@example.org |\n| reason | CHG-25 monthly patch |" in summaries[0]["data"]

    fr = run_deployment(c, "rollback-registry/rollback-site-b", {"tag": TAG})
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["name"] == f"rollback site-b {REPO}:{TAG}" and "registry:site-b" in fr["tags"]
    assert skopeo_inspect_digest(regs["site-b"].host, REPO, TAG) == old
    (history,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["key"] == "history-site-b"]
    assert f"| rollback | `{new[7:19]}…` | `{old[7:19]}…` |" in history["data"]  # refreshed by the rollback


def test_a_failed_patch_on_a_worker_logs_no_traceback_and_says_what_happened(cluster):
    c, s, tmp = cluster["c"], cluster["scenario"], cluster["tmp"]
    bad = tmp / "bad-bundle"
    shutil.copytree(s["staged"], bad)
    layer = bad / "delta.tar.gz"
    data = bytearray(layer.read_bytes())
    data[200] ^= 0xFF
    layer.write_bytes(bytes(data))
    fr = run_deployment(c, "patch-registry/patch-site-a", {"bundle": str(bad), "tag": "corrupt"})
    assert fr["state_type"] == "FAILED"
    assert "digest mismatch" in fr["state"]["message"] and "delta.tar.gz" in fr["state"]["message"]
    assert fr["labels"]["regpatch.status"] == "failed" and fr["labels"]["regpatch.tag_moved"] is False
    # issue 25 item 5: the error is one line of the run's logs, the step's; Prefect repeats none of it
    messages = c.logs_until([fr["id"]], lambda m: sum(x.startswith("Finished in state Failed") for x in m) >= 2)
    said = [m for m in messages if "digest mismatch" in m]
    assert len(said) == 1 and said[0].startswith("verify-digests failed: digest mismatch"), messages
    assert [m for m in messages if m.startswith("Finished in state Failed")] == ["Finished in state Failed"] * 2, \
        messages  # the task's and the flow's, without the message
    # what the worker's flow-run process logs after the flow (it exits a moment later): a log batch's time
    messages = c.logs_until([fr["id"]], lambda m: any("Engine execution" in x for x in m), timeout=4)
    for noise in ("Traceback", "Encountered exception", "Task run failed with exception", "Engine execution"):
        assert not any(noise in m for m in messages), (noise, messages)
    (summary,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["key"] == "site-a-servercore-corrupt"]
    assert summary["data"].startswith("# Failed: `servercore:corrupt` on `site-a`")
    assert "The tag was not moved" in summary["data"]


def test_rollout_across_two_pools_each_registry_a_task_run(cluster):
    """Each registry a task run of the rollout, patched by the worker of its own pool; the
    global concurrency limit of a registry on a worker is held for its whole wave: while
    another holder has site-b's, site-b's wave waits (site-a's canary wave does not)."""
    import subprocess
    import time
    from datetime import datetime

    c, regs, s = cluster["c"], cluster["regs"], cluster["scenario"]
    limit = "regpatch-registry-site-b"
    if not any(x["name"] == limit for x in c.post("/v2/concurrency_limits/filter", {})):
        c.post("/v2/concurrency_limits/", {"name": limit, "limit": 1})
    lease = c.post("/v2/concurrency_limits/increment-with-lease", {"names": [limit], "slots": 1,
                                                                   "lease_duration": 600})["lease_id"]
    proc = subprocess.Popen([str(a) for a in (
        BIN / "regpatch", "rollout", s["staged"], "--inventory", cluster["inventory"], "--repository", REPO, "--tag",
        "fleet", "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}", "--reason", "CHG-25")],
        env=c.env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not [r for r in c.flow_runs(name={"any_": [f"patch site-a {REPO}:fleet"]}) if r["state_type"] == "COMPLETED"]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        time.sleep(3)  # site-a's wave is over: site-b's waits for the slot
        assert not c.flow_runs(name={"any_": [f"patch site-b {REPO}:fleet"]}) and proc.poll() is None
        released = time.time()
    finally:
        httpx.post(c.api + "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease},
                   timeout=10).raise_for_status()  # 204: no body
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out
    new = str(s["new"].manifest_digest)
    for site, pool in POOLS.items():
        line = next(l for l in out.splitlines() if l.startswith(site + " "))
        assert f"pool {pool}" in line and "patched" in line, out
        assert skopeo_inspect_digest(regs[site].host, REPO, "fleet") == new
    (rollout,) = c.flow_runs(name={"any_": [f"rollout {REPO}:fleet"]})
    tasks = {t["name"]: t for t in c.task_runs(rollout["id"])}
    for site in POOLS:
        t = tasks[f"patch {site} {REPO}:fleet"]
        # a task run of a rollout carries no tags (each would cost a concurrency request): its
        # name says the registry, and the registry's own run, below, is tagged
        assert t["state_type"] == "COMPLETED" and t["tags"] == []
    # each registry was patched by the worker of its own pool, its run named after it and tagged
    for site, pool in POOLS.items():
        (fr,) = c.flow_runs(name={"any_": [f"patch {site} {REPO}:fleet"]})
        assert fr["work_pool_name"] == pool and fr["state_type"] == "COMPLETED"
        assert {f"registry:{site}", f"repository:{REPO}"} <= set(fr["tags"])
        assert fr["id"] in c.workers[pool].text()
    (site_b,) = c.flow_runs(name={"any_": [f"patch site-b {REPO}:fleet"]})
    assert datetime.fromisoformat(site_b["created"]).timestamp() >= released - 0.01  # after the slot was free
    assert all(x["active_slots"] == 0 for x in c.post("/v2/concurrency_limits/filter", {}))  # all given back


def test_failed_rollout_failing_registry_red_later_wave_not_run(cluster, tmp_path):
    """site-a (canary) fails its verification pull on its own host; site-b's wave never runs."""
    c, regs, s = cluster["c"], cluster["regs"], cluster["scenario"]
    untouched = regs["site-b"].root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/broken"
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "site-a", "storage": str(regs["site-a"].root), "url": "http://127.0.0.1:9", "work_pool": "pool-a",
         "group": "canary"},
        {"name": "site-b", "storage": str(regs["site-b"].root), "url": regs["site-b"].url, "work_pool": "pool-b",
         "group": "fleet"}]}))
    proc = run([BIN / "regpatch", "rollout", s["staged"], "--inventory", inv, "--repository", REPO,
                "--tag", "broken", "--reason", "CHG-25"], c.env(), timeout=400)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    (rollout,) = c.flow_runs(name={"any_": [f"rollout {REPO}:broken"]})
    assert rollout["state_type"] == "FAILED"
    tasks = {t["name"]: t for t in c.task_runs(rollout["id"])}
    a, b = tasks[f"patch site-a {REPO}:broken"], tasks[f"patch site-b {REPO}:broken"]
    assert a["state_type"] == "FAILED" and "127.0.0.1:9" in a["state"]["message"]
    assert b["state_type"] == "CANCELLED" and b["state_name"] == "NotRun"
    assert "wave 'canary' failed" in b["state"]["message"]
    (art,) = [x for x in c.artifacts(flow_run_id={"any_": [rollout["id"]]}) if x["key"] == f"rollout-{REPO}-broken"]
    errors = art["data"].split("## Errors", 1)[1]
    assert "site-a" in errors and "the tag was not moved" in errors and "127.0.0.1:9" in errors
    (remote,) = c.flow_runs(name={"any_": [f"patch site-a {REPO}:broken"]})
    assert remote["state_type"] == "FAILED" and remote["labels"]["regpatch.status"] == "failed"
    assert not untouched.exists()
    logs = "\n".join(c.logs_until([rollout["id"], remote["id"]], lambda m: sum("127.0.0.1:9" in x for x in m) >= 2))
    assert sum("127.0.0.1:9" in x for x in logs.splitlines()) >= 2, logs  # both runs said why
    assert logs.count("Traceback") == 0, logs


def test_rollout_deployment_on_a_worker_and_its_shipped_defaults(cluster):
    """The scheduled path: the rollout deployment run by the regpatch pool's worker; with
    the shipped parameters (no inventory yet) it fails saying what to create; more than 4
    registries at once is allowed on this server (PostgreSQL)."""
    c, regs, s = cluster["c"], cluster["regs"], cluster["scenario"]
    fr = run_deployment(c, "rollout/rollout", {})
    assert fr["state_type"] == "FAILED"
    assert fr["state"]["message"].endswith('"Inventory" (rollout.inventory) is /etc/regpatch/inventory.yml, which '
                                           "does not exist on this host: set it to the path of this host's inventory "
                                           "(create one from deployments/inventory.example.yml, "
                                           "docs/fleet/inventory.md)"), fr["state"]["message"]
    (art,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["key"] == f"rollout-{REPO}-{TAG}"]
    assert art["data"].startswith(f"# Rollout of {REPO}:{TAG} failed before any registry\n")
    assert "| requested by | schedule of rollout/rollout |" in art["data"]
    assert "rollout.inventory) is /etc/regpatch/inventory.yml" in art["data"].split("## Error", 1)[1]
    # the inventory there, the shipped drop location not: the same, naming the drop location
    fr = run_deployment(c, "rollout/rollout", {"rollout": {"inventory": str(cluster["inventory"]),
                                                           "drop": "/srv/shuttle/drop"}})
    assert fr["state_type"] == "FAILED"
    assert fr["state"]["message"].endswith('"Drop location" (rollout.drop) is /srv/shuttle/drop, which is not a '
                                           "folder on this host: set it to the folder (or s3://bucket/prefix) where "
                                           "the signed bundles land, or leave it empty and give the bundle"), \
        fr["state"]["message"]
    fr = run_deployment(c, "rollout/rollout", {"bundle": str(s["staged"]), "tag": "monthly",
                                               "rollout": {"inventory": str(cluster["inventory"]),
                                                           "max_parallel": 8}}, timeout=400)
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["name"] == f"rollout {REPO}:monthly" and fr["work_pool_name"] == "regpatch"
    for site in POOLS:
        assert skopeo_inspect_digest(regs[site].host, REPO, "monthly") == str(s["new"].manifest_digest)
    (art,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["key"] == f"rollout-{REPO}-monthly"]
    assert "| site-a | canary | pool pool-a | patched |" in art["data"]
    assert "| site-b | fleet | pool pool-b | patched |" in art["data"]
    (progress,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["type"] == "progress"
                   and "registries" in (a["description"] or "")]
    assert progress["data"] == 100.0 and progress["description"] == "2 of 2 registries done: 2 patched", progress


def test_the_scheduled_rollout_takes_the_newest_bundle_of_the_drop_and_refuses_it_once_applied(cluster):
    """The shipped rollout deployment (bundle: null, rollout.drop) takes the newest bundle of
    the drop folder by its created time, not last month's; run again, every registry already
    serves it: refused, red; `regpatch deployments --check` says so beforehand."""
    c, regs, s, tmp = cluster["c"], cluster["regs"], cluster["scenario"], cluster["tmp"]
    drop = tmp / "drop"
    for month, layout in (("2026-11", s["old_layout"]), ("2026-12", s["new_layout"])):
        made = run([BIN / "regpatch", "bundle", f"oci:{layout}", "--out", drop / month], c.env())
        assert made.returncode == 0, made.stdout + made.stderr
    doc = json.loads((drop / "2026-11" / "regpatch-bundle.json").read_text())
    doc["created"] = "2026-11-11T03:00:00Z"  # last month's (unsigned: no trust keys in this inventory)
    (drop / "2026-11" / "regpatch-bundle.json").write_text(json.dumps(doc))
    check = [BIN / "regpatch", "deployments", "--inventory", cluster["inventory"], "--check", "--drop", drop,
             "--repository", REPO, "--tag", "drop"]
    out = run(check, c.env())
    assert out.returncode == 0 and f"takes {drop / '2026-12'} (created " in out.stdout, out.stdout + out.stderr
    params = {"tag": "drop", "rollout": {"inventory": str(cluster["inventory"]), "drop": str(drop), "max_parallel": 2}}
    fr = run_deployment(c, "rollout/rollout", params, timeout=400)
    assert fr["state_type"] == "COMPLETED", fr["state"]
    for site in POOLS:
        assert skopeo_inspect_digest(regs[site].host, REPO, "drop") == str(s["new"].manifest_digest)
    logs = "\n".join(c.logs_until([fr["id"]], lambda m: any("drop location" in x for x in m)))
    assert f"drop location {drop}: takes {drop / '2026-12'}" in logs
    out = run(check, c.env())
    assert out.returncode == 2 and "already serves" in out.stderr, out.stdout + out.stderr
    fr = run_deployment(c, "rollout/rollout", params, timeout=400)
    assert fr["state_type"] == "FAILED" and "already serves" in fr["state"]["message"], fr["state"]
    assert f"{drop / '2026-12'}" in fr["state"]["message"]


def test_the_recipe_server_keeps_its_data_bounded_and_says_postgresql(cluster):
    """The server runs with deployments/prefect-server.env: flow runs (their task runs, logs,
    artifacts) deleted after 400 days, events after 7; its database is told PostgreSQL by the
    driver the recipe names, and by the JSON it gives back without it."""
    import datetime

    import pydantic

    from regpatch.fleet.prefect_server import server_database

    c = cluster["c"]
    settings = c.get("/admin/settings")
    vacuum = settings["server"]["services"]["db_vacuum"]
    assert {"events", "flow_runs"} <= set(vacuum["enabled"]), vacuum
    days = lambda iso: pydantic.TypeAdapter(datetime.timedelta).validate_python(iso).days  # noqa: E731
    assert days(vacuum["retention_period"]) == 400, vacuum                    # 'P1Y35D' as the server says it
    assert days(settings["server"]["events"]["retention_period"]) == 7, settings["server"]["events"]
    assert settings["server"]["database"]["connection_url"] == "**********"
    assert server_database(settings, []) == "postgresql"
    schemas = c.post("/block_schemas/filter", {"limit": 10})
    assert server_database({}, schemas) == "postgresql"


def test_a_rollout_takes_its_registries_from_the_blocks_of_a_group_and_refuses_a_credential(cluster):
    """--registry-blocks canary: site-a only (its block's group), through its deployment on its
    pool; a block edited to carry a password is refused, naming it, and the password is never
    shown. A block whose registry left the inventory is reported by --apply, not deleted."""
    c, s, tmp = cluster["c"], cluster["scenario"], cluster["tmp"]
    argv = [BIN / "regpatch", "rollout", s["staged"], "--registry-blocks", "canary", "--state-dir",
            tmp / "block-rollouts", "--repository", REPO, "--tag", "blocks", "--reason", "CHG-25", "--dry-run"]
    out = run(argv, c.env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 1 registries ok (dry run)" in out.stdout
    assert [l.split()[0] for l in out.stdout.splitlines() if l.startswith("site-")] == ["site-a"]
    none = run([*argv[:4], "nope", *argv[5:]], c.env(), timeout=120)
    assert none.returncode == 2 and "no regpatch-registry block is in that group" in none.stderr, none.stderr
    assert "the blocks' groups: canary, fleet" in none.stderr

    site_a = registry_blocks(c)["site-a"]
    secret = "S3cret-Blocks-25"
    evil = c.post("/block_documents/", {
        "name": "site-evil", "block_type_id": site_a["block_type_id"], "block_schema_id": site_a["block_schema_id"],
        "data": {"name": "site-evil", "storage": "/srv/evil", "group": "canary",
                 "registry_url": f"https://ana:{secret}@registry.example:5000"}})
    try:
        bad = run(argv, c.env(), timeout=120)
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "block regpatch-registry/site-evil: " in bad.stderr and "carries a credential inline" in bad.stderr
        assert secret not in bad.stdout + bad.stderr
        again = run([BIN / "regpatch", "deployments", "--inventory", cluster["inventory"], "--repository", REPO,
                     "--apply"], c.env())
        assert again.returncode == 0, again.stderr
        assert "block regpatch-registry/site-evil: not in the inventory; left as it is" in again.stdout
        assert "site-evil" in registry_blocks(c)
    finally:
        httpx.delete(f"{c.api}/block_documents/{evil['id']}", timeout=10).raise_for_status()
