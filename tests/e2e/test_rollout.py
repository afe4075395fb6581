"""Rollouts in-process: one bundle to three real registries, one of them broken.

The rollout flow runs on the session's Prefect server; registries without a
work_pool are patched inside their own task runs. skopeo checks what each
registry serves.
"""

from __future__ import annotations

import pytest
import yaml
from support.util import skopeo_inspect_digest, tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry
from regpatch.fleet.inventory import InventoryError, load_inventory

pytestmark = pytest.mark.usefixtures("prefect_env")

REPO, TAG = "servercore", "ltsc2019"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return scenario_servercore(tmp_path_factory.mktemp("sample"), base_size=64 << 10, delta_size=16 << 10)


@pytest.fixture
def fleet(tmp_path, scenario):
    """Three started registries holding the old image; stopped at teardown."""
    regs = {}
    try:
        for name in ("site-a", "site-b", "site-c"):
            regs[name] = LocalRegistry(tmp_path / name).start()
            push_with_skopeo(scenario["old_layout"], scenario["ref"], regs[name].host, REPO, TAG)
        yield regs
    finally:
        for reg in regs.values():
            reg.stop()


def write_inventory(path, entries) -> str:
    path.write_text(yaml.safe_dump({"registries": entries}, sort_keys=False), encoding="utf-8")
    return str(path)


def entry(name, reg, **extra) -> dict:
    return {"name": name, "storage": str(reg.root), "url": reg.url, **extra}


def rollout(capsys, bundle, inventory, *extra) -> tuple[int, str, str]:
    code = regpatch_main(["rollout", str(bundle), "--inventory", inventory, "--repository", REPO,
                          "--tag", TAG, *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def run_logs(names: list[str], until, timeout: float = 30.0) -> list[str]:
    """The log messages on the server of the newest flow run of each name. Prefect sends
    logs from a background worker in batches, so the last lines of a run reach the server
    a moment after the run returns: poll until `until(messages)` holds or the time is up
    (then return what is there, for the assertion to show)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # a run started by another process appears on the server a moment later
            found = [client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=1) for name in names]
            if all(found) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert all(found), f"no flow run named {[n for n, f in zip(names, found, strict=True) if not f]}"
        runs = [f[0] for f in found]
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
            messages = [l.message for l in logs]
            if until(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def row(out: str, name: str) -> str:
    lines = [l for l in out.splitlines() if l.split(" ", 1)[0] == name]
    assert len(lines) == 1, out
    return lines[0]


def test_three_registries_one_broken_then_rerun_retries_only_it(capsys, tmp_path, fleet, scenario):
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    a, b, c = fleet["site-a"], fleet["site-b"], fleet["site-c"]
    not_a_dir = tmp_path / "not-a-directory"
    not_a_dir.write_text("this file is where site-c's storage should be\n")
    inv = tmp_path / "inventory.yml"
    broken = entry("site-c", c, group="fleet") | {"storage": str(not_a_dir)}
    write_inventory(inv, [entry("site-a", a, group="canary"), entry("site-b", b, group="fleet"), broken])

    code, out, err = rollout(capsys, scenario["staged"], str(inv), "--max-parallel", "2")
    assert code == 7, err
    assert "patched" in row(out, "site-a") and "patched" in row(out, "site-b")
    assert "failed" in row(out, "site-c") and str(not_a_dir) in row(out, "site-c")
    assert "1 of 3 registries failed: site-c" in err
    for reg in (a, b):
        assert skopeo_inspect_digest(reg.host, REPO, TAG) == new
    assert skopeo_inspect_digest(c.host, REPO, TAG) == old
    assert len(list((tmp_path / ".regpatch-rollouts").glob("rollout-*.json"))) == 1

    # fix site-c's storage; the re-run patches site-c and only checks the others
    before = {n: tree_hash(fleet[n].root / "docker") for n in ("site-a", "site-b")}
    write_inventory(inv, [entry("site-a", a, group="canary"), entry("site-b", b, group="fleet"),
                          entry("site-c", c, group="fleet")])
    code, out, err = rollout(capsys, scenario["staged"], str(inv))
    assert code == 0, err
    assert "up-to-date" in row(out, "site-a") and "up-to-date" in row(out, "site-b")
    assert "patched" in row(out, "site-c")
    assert {n: tree_hash(fleet[n].root / "docker") for n in ("site-a", "site-b")} == before
    assert skopeo_inspect_digest(c.host, REPO, TAG) == new


def test_failed_canary_stops_later_waves(capsys, tmp_path, fleet, scenario):
    a, b = fleet["site-a"], fleet["site-b"]
    before = tree_hash(b.root)
    inv = write_inventory(tmp_path / "inv.yml", [
        entry("site-a", a, group="canary", url="http://127.0.0.1:9"),  # nothing listens: verify fails
        entry("site-b", b, group="fleet")])
    code, out, err = rollout(capsys, scenario["staged"], inv, "--state-dir", tmp_path / "state")
    assert code == 7
    assert "failed" in row(out, "site-a")
    assert "not-run" in row(out, "site-b") and "wave 'canary' failed" in row(out, "site-b")
    assert tree_hash(b.root) == before


def test_only_and_dry_run(capsys, tmp_path, fleet, scenario):
    before = {n: tree_hash(fleet[n].root) for n in fleet}
    inv = write_inventory(tmp_path / "inv.yml", [entry(n, r) for n, r in fleet.items()])
    code, out, err = rollout(capsys, scenario["staged"], inv, "--only", "site-a,site-b", "--dry-run")
    assert code == 0, err
    assert "dry-run" in row(out, "site-a") and "dry-run" in row(out, "site-b")
    assert "site-c" not in out
    assert {n: tree_hash(fleet[n].root) for n in fleet} == before
    assert not (tmp_path / ".regpatch-rollouts").exists()
    code, out, err = rollout(capsys, scenario["staged"], inv, "--only", "site-x")
    assert code == 2 and "site-x" in err


@pytest.mark.parametrize("entries,expected", [
    ([{"name": "a", "storage": "/x"}, {"name": "a", "storage": "/y"}],
     ["registries[1]: name 'a' is already used by registries[0]"]),
    ([{"name": "a", "storage": "/x"}, {"name": "b", "url": "http://127.0.0.1:5000"}],
     ["registries[1] ('b'): storage: required field is missing"]),
    ([{"name": "a", "storage": "/x", "stroage": "/y"}],
     ["registries[0] ('a'): stroage: unknown field"]),
    ([{"name": "a", "storage": "/x", "restart": "reboot"}],
     ["registries[0] ('a'): restart: invalid restart spec 'reboot'"]),
    ([{"name": "bad name", "storage": "/x"}, {"storage": "/y"}],
     ["registries[0] ('bad name'): name: 'bad name' must be", "registries[1]: name: required field is missing"]),
])
def test_invalid_inventory_names_entry_and_field(tmp_path, entries, expected):
    inv = write_inventory(tmp_path / "inv.yml", entries)
    with pytest.raises(InventoryError) as e:
        load_inventory(inv)
    for text in expected:
        assert text in str(e.value)


def test_invalid_inventory_fails_before_anything_is_touched(capsys, tmp_path, fleet, scenario):
    before = {n: tree_hash(fleet[n].root) for n in fleet}
    a, b, c = fleet["site-a"], fleet["site-b"], fleet["site-c"]
    inv = write_inventory(tmp_path / "inv.yml", [
        entry("site-a", a), entry("site-a", b),                # duplicate name
        {"name": "site-c", "url": c.url},                       # missing storage
        entry("site-d", c, colour="blue")])                     # unknown field
    code, out, err = rollout(capsys, scenario["staged"], inv)
    assert code == 2
    line = [l for l in err.splitlines() if l.startswith("regpatch: error:")]
    assert len(line) == 1, err
    assert "registries[2] ('site-c'): storage: required field is missing" in line[0]
    assert "registries[3] ('site-d'): colour: unknown field" in line[0]
    (tmp_path / "dup.yml").write_text(yaml.safe_dump({"registries": [entry("site-a", a), entry("site-a", b)]}))
    code, out, err = rollout(capsys, scenario["staged"], str(tmp_path / "dup.yml"))
    assert code == 2 and "name 'site-a' is already used by registries[0]" in err
    assert {n: tree_hash(fleet[n].root) for n in fleet} == before
    assert not (tmp_path / ".regpatch-rollouts").exists()


def test_a_registry_patched_here_waits_for_its_storage_lock(capsys, tmp_path, fleet, scenario):
    """While another run holds site-a's repository lock (the storage's OS file lock, as a
    `regpatch patch` of it on this host would), the rollout waits for it and writes
    nothing; it goes on once the lock is released. No Prefect slot is involved."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from regpatch.reference import Repository
    from regpatch.storage.lock import repository_lock
    from regpatch.storage.store import RegistryStore

    a = fleet["site-a"]
    new, tag = str(scenario["new"].manifest_digest), "locked"  # a run name of its own in the session
    inv = write_inventory(tmp_path / "inv.yml", [entry("site-a", a)])
    current = a.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{tag}/current/link"
    with repository_lock(RegistryStore(a.root).layout, Repository.parse(REPO), timeout=5):
        proc = subprocess.Popen([str(Path(sys.executable).with_name("regpatch")), "rollout", str(scenario["staged"]),
                                 "--inventory", str(inv), "--repository", REPO, "--tag", tag, "--state-dir",
                                 str(tmp_path / "state")], env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # the rollout's run says it waits (the engine's line, on the server)
            waiting = run_logs([f"rollout {REPO}:{tag}"], until=lambda m: any(
                x.startswith(f"waiting for the lock of {REPO}") for x in m), timeout=120)
            assert any(x.startswith(f"waiting for the lock of {REPO}") for x in waiting), waiting
            time.sleep(2)
            assert proc.poll() is None  # still waiting: nothing written
            assert not current.exists()
            released = time.time()
        except BaseException:
            proc.kill()
            raise
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    assert skopeo_inspect_digest(a.host, REPO, tag) == new
    assert current.stat().st_mtime >= released - 0.01  # written only after the lock was released


def test_one_traceback_at_most_per_failure_in_the_run_logs(capsys, tmp_path, fleet, scenario, monkeypatch):
    """A RegpatchError logs none (its line says it all); an unexpected error logs one,
    not again in every run it passes through; REGPATCH_DEBUG=1 keeps them all."""
    import logging

    from regpatch.errors import StorageError
    from regpatch_tasks import ONE_TRACEBACK

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            import sys
            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())

    monkeypatch.delenv("REGPATCH_DEBUG", raising=False)
    monkeypatch.delenv("PREFECT_LOGGING_LEVEL", raising=False)
    r = record(StorageError("disk full"))
    assert ONE_TRACEBACK.filter(r) and r.exc_info is None
    boom = ValueError("unexpected")
    first, again = record(boom), record(boom)
    assert ONE_TRACEBACK.filter(first) and first.exc_info is not None      # the task run's: kept
    assert ONE_TRACEBACK.filter(again) and again.exc_info is None          # the flow run's: dropped
    monkeypatch.setenv("REGPATCH_DEBUG", "1")
    r = record(StorageError("disk full"))
    assert ONE_TRACEBACK.filter(r) and r.exc_info is not None
    # and for real: a rollout with a failing registry, through the session's Prefect server
    monkeypatch.delenv("REGPATCH_DEBUG")
    inv = write_inventory(tmp_path / "inv.yml", [entry("site-a", fleet["site-a"], url="http://127.0.0.1:9")])
    code, out, err = rollout(capsys, scenario["staged"], inv, "--state-dir", tmp_path / "state")
    assert code == 7 and "127.0.0.1:9" in row(out, "site-a")
    # what the UI shows: the logs of the rollout run, site-a's task run among them, on the server
    text = "\n".join(run_logs([f"rollout {REPO}:{TAG}"], until=lambda m: any("127.0.0.1:9" in x for x in m)))
    assert "127.0.0.1:9" in text and "Traceback" not in text, text


def test_flow_errors_name_the_form_fields_and_history_on_demand(fleet, scenario, prefect_api):
    """A run started from the form (the flow called with its parameters) names what is
    wrong the way the form does; registry-history publishes the registry's history."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from regpatch.errors import UsageError
    from regpatch.params import ChangeParams, RegistryParams
    from regpatch_flows.history import registry_history
    from regpatch_flows.patch import patch_registry

    a = fleet["site-a"]
    with pytest.raises(UsageError) as e:
        patch_registry(bundle=str(scenario["staged"]), repository=REPO, tag=TAG, registry=RegistryParams(
            name="site-a", storage=str(a.root), registry_url=a.url, registry_ca="/nonexistent/ca.pem"),
            change=ChangeParams(requested_by="e2e"))
    assert '"CA bundle" (registry.registry_ca)' in str(e.value) and "--registry-ca" not in str(e.value)
    text = registry_history(registry=RegistryParams(name="site-a", storage=str(a.root)))
    assert text.startswith("# History of `site-a`") and "0 tag change(s) recorded" in text
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["history-site-a"])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)
    assert art.data == text


def test_a_run_that_fails_early_still_leaves_its_summary_with_where_the_tag_stands(fleet, scenario, prefect_api):
    """A patch refused before the engine starts (a CA file that does not exist) and a
    rollback refused by the engine before any result (a digest the repository lacks) each
    write their summary artifact: the error, and where the tag stands."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from regpatch.errors import RegpatchError
    from regpatch.params import ChangeParams, RegistryParams
    from regpatch_flows.patch import patch_registry
    from regpatch_flows.rollback import rollback_registry

    def summary(key: str) -> str:
        with get_client(sync_client=True) as client:
            (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                           sort=ArtifactSort.CREATED_DESC, limit=1)
        return art.data

    a, change = fleet["site-a"], ChangeParams(requested_by="ana", reason="CHG-5")
    with pytest.raises(RegpatchError):
        patch_registry(bundle=str(scenario["staged"]), repository=REPO, tag="early", change=change,
                       registry=RegistryParams(name="early-a", storage=str(a.root), registry_url=a.url,
                                               registry_ca="/nonexistent/ca.pem"))
    text = summary(f"early-a-{REPO}-early")
    assert text.startswith(f"# Failed: `{REPO}:early` on `early-a` (patch)"), text
    assert "/nonexistent/ca.pem" in text and "| reason | CHG-5 |" in text and "| verification | not run |" in text
    assert "The tag was not moved: the run stopped before it opened the storage; nothing was written." in text
    missing = "sha256:" + "0" * 64
    with pytest.raises(RegpatchError):
        rollback_registry(repository=REPO, tag=TAG, to=missing, change=change,
                          registry=RegistryParams(name="early-b", storage=str(a.root)))
    text = summary(f"early-b-{REPO}-{TAG}")
    current = (a.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link").read_text()
    assert text.startswith(f"# Failed: `{REPO}:{TAG}` on `early-b` (rollback)"), text
    assert missing in text and f"The tag points at `{current.strip()}` (read in the storage after the failure)." in text


def test_lines_logged_by_the_blob_threads_reach_the_run_logs(capsys, fleet, scenario):
    """Staging and the verification pull run two blobs at a time in worker threads; what
    they log belongs to the run and must be in its logs on the server, not only on the
    worker's console."""
    reg = fleet["site-a"]
    code = regpatch_main(["patch", str(scenario["staged"]), "--storage", str(reg.root), "--registry-url", reg.url,
                          "--repository", REPO, "--tag", TAG, "--registry-name", "threads-a"])
    out, err = capsys.readouterr()
    assert code == 0, err
    messages = run_logs([f"patch threads-a {REPO}:{TAG}"],
                        until=lambda m: sum(x.startswith("staged bundle file") for x in m) >= 2)
    staged = [m for m in messages if m.startswith("staged bundle file")]
    assert len(staged) >= 2, "\n".join(messages)  # the blobs copied, each from its thread
    assert "attempted to send logs to the API without a flow run id" not in err


def test_more_than_four_at_once_is_refused_on_sqlite_before_anything_is_touched(capsys, tmp_path, fleet, scenario,
                                                                               prefect_api):
    """The session's server runs on Prefect's default SQLite: --max-parallel 5 is refused
    up front, naming the PostgreSQL recipe; the server's own answers tell its database."""
    import httpx

    from regpatch.fleet.prefect_server import server_database

    before = {n: tree_hash(fleet[n].root) for n in fleet}
    inv = write_inventory(tmp_path / "inv.yml", [entry(n, r) for n, r in fleet.items()])
    code, out, err = rollout(capsys, scenario["staged"], inv, "--max-parallel", "5", "--state-dir", tmp_path / "s")
    assert code == 2, err
    assert "--max-parallel 5 needs a Prefect server on PostgreSQL: this one runs on SQLite" in err
    assert "production recipe" in err and "Traceback" not in err
    assert {n: tree_hash(fleet[n].root) for n in fleet} == before
    assert not (tmp_path / "s").exists()
    # a run from the form (the flow itself) is refused the same way, naming the form's field
    from regpatch.errors import UsageError
    from regpatch.params import ChangeParams, RolloutParams
    from regpatch_flows.rollout import rollout as rollout_flow

    with pytest.raises(UsageError) as e:
        rollout_flow(bundle=str(scenario["staged"]), repository=REPO, tag=TAG, change=ChangeParams(requested_by="e2e"),
                     rollout=RolloutParams(inventory=inv, max_parallel=5, state_dir=str(tmp_path / "s")))
    assert "(rollout.max_parallel) 5 needs a Prefect server on PostgreSQL: this one runs on SQLite" in str(e.value)
    assert {n: tree_hash(fleet[n].root) for n in fleet} == before
    assert not (tmp_path / "s").exists()
    settings = httpx.get(prefect_api.url + "/admin/settings", timeout=10).json()
    assert settings["server"]["database"]["connection_url"] == "**********"  # the URL itself is hidden
    schemas = httpx.post(prefect_api.url + "/block_schemas/filter", json={"limit": 10}, timeout=10).json()
    assert server_database(settings, schemas) == "sqlite"


def test_progress_artifacts_only_for_copies_still_running_after_a_second(prefect_api):
    """A copy done within its first second leaves no progress artifact; a longer one shows
    from its first second on, at most once a second, and ends at 100%, or, ended by its step
    short of its total, says where it stopped and why."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from regpatch_tasks.observer import ProgressArtifact

    now = [0.0]

    @flow(name="progress-artifacts", persist_result=False)
    def copies() -> tuple:
        ctx = FlowRunContext.get()
        assert ctx and ctx.flow_run
        short = ProgressArtifact("stage short.tar.gz", 4 << 20, ctx.flow_run.id, None, clock=lambda: now[0])
        for _ in range(4):
            now[0] += 0.2
            short.advance(1 << 20)
        long = ProgressArtifact("stage long.tar.gz", 8 << 20, ctx.flow_run.id, None, clock=lambda: now[0])
        for _ in range(8):  # a MiB every 0.4 s: 3.2 s in all
            now[0] += 0.4
            long.advance(1 << 20)
        long.end()  # its step ends: already at 100 %, nothing more written
        # a copy its step ends short of its total (issue 25 item 6): where it stopped and why, at once
        cut = ProgressArtifact("pull cut", 8 << 20, ctx.flow_run.id, None, clock=lambda: now[0])
        for _ in range(3):
            now[0] += 0.5
            cut.advance(1 << 20)
        cut.end(OSError("the registry closed the connection"))
        cut.advance(1 << 20)  # a late count from another thread: the last words stay
        return str(ctx.flow_run.id), short.updates, long.updates, cut.updates

    flow_run_id, short_updates, long_updates, cut_updates = copies()
    assert short_updates == 0
    assert long_updates == 3  # created 1.2 s into the copy, updated at 2.4 s and at its end (3.2 s)
    assert cut_updates == 2  # created 1.0 s in, then its last words
    import httpx

    arts = httpx.post(prefect_api.url + "/artifacts/filter", timeout=10, json={
        "artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["progress"]}}}).json()
    assert [(a["data"], a["description"]) for a in sorted(arts, key=lambda a: a["created"])] == [
        (100, "stage long.tar.gz: 8.0 MiB in 3.2 s (2.5 MiB/s)"),
        (37.5, "pull cut: stopped at 38% of 8.0 MiB: the registry closed the connection")], arts


def test_a_failed_run_says_its_error_once_in_its_logs(capsys, tmp_path, fleet, scenario):
    """Issue 25 item 5: a failed patch logs its error once, one line (the step's where a step
    failed, the flow's before any), and nothing of Prefect's repeats it: no traceback, no
    "Encountered exception during execution", the final state's line without the message."""
    import shutil

    from regpatch.errors import RegpatchError
    from regpatch.params import ChangeParams, RegistryParams
    from regpatch_flows.patch import patch_registry

    reg = fleet["site-a"]
    bad = tmp_path / "bad-bundle"
    shutil.copytree(scenario["staged"], bad)
    layer = bad / "delta.tar.gz"
    data = bytearray(layer.read_bytes())
    data[200] ^= 0xFF
    layer.write_bytes(bytes(data))
    code = regpatch_main(["patch", str(bad), "--storage", str(reg.root), "--registry-url", reg.url,
                          "--repository", REPO, "--tag", "corrupt", "--registry-name", "once-a"])
    out, err = capsys.readouterr()
    assert code != 0 and "digest mismatch" in err

    def ended(n: int):
        return lambda m: sum(x.startswith("Finished in state Failed") for x in m) >= n

    messages = run_logs([f"patch once-a {REPO}:corrupt"], until=ended(2))  # the task's and the flow's
    said = [m for m in messages if "digest mismatch" in m]
    assert len(said) == 1 and said[0].startswith("verify-digests failed: digest mismatch"), messages
    assert "delta.tar.gz" in said[0]
    assert [m for m in messages if m.startswith("Finished in state Failed")] == ["Finished in state Failed"] * 2, \
        messages  # the task's and the flow's, without the message
    for noise in ("Traceback", "Encountered exception", "Task run failed with exception", "Engine execution"):
        assert not any(noise in m for m in messages), (noise, messages)

    # before the engine (a CA file that does not exist): said once, by the flow
    with pytest.raises(RegpatchError):
        patch_registry(bundle=str(scenario["staged"]), repository=REPO, tag="early",
                       change=ChangeParams(requested_by="ana", reason="CHG-5"),
                       registry=RegistryParams(name="once-b", storage=str(reg.root), registry_url=reg.url,
                                               registry_ca="/nonexistent/once-ca.pem"))
    messages = run_logs([f"patch once-b {REPO}:early"], until=ended(1))
    said = [m for m in messages if "/nonexistent/once-ca.pem" in m]
    assert len(said) == 1 and said[0].startswith(f"patch of {REPO}:early on once-b failed: "), messages
    assert "Finished in state Failed" in messages and not any("Traceback" in m for m in messages), messages
