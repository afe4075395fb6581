"""run_rollout with the engine as patch_one, on real storages (no registry process)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import REPO, TAG
from regpatch import engine
from regpatch.cli import main
from regpatch.inventory import load_inventory
from regpatch.rollout import (FAILED, NOT_RUN, PATCHED, SKIPPED, UP_TO_DATE, RolloutState, engine_patcher,
                              run_rollout)
from regpatch.target import RegistryTarget


@pytest.fixture
def fleet(site, tmp_path):
    """Three storages holding the old image: a and b in wave 'canary', c in wave 'rest'."""
    roots = {}
    for name in ("a", "b", "c"):
        root = tmp_path / f"site-{name}"
        shutil.copytree(site.root, root)
        roots[name] = root
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "a", "storage": str(roots["a"]), "group": "canary"},
        {"name": "b", "storage": str(roots["b"]), "group": "canary"},
        {"name": "c", "storage": str(roots["c"]), "group": "rest"},
    ]}))
    return roots, inv


def current(root):
    return (root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link").read_text()


def test_waves_stop_after_a_failure_and_a_rerun_retries_only_what_did_not_finish(site, fleet, tmp_path):
    roots, inv = fleet
    entries = load_inventory(inv).select()
    # b is broken: its storage folder is a file
    shutil.rmtree(roots["b"])
    roots["b"].write_text("not a storage")
    state = RolloutState(tmp_path / "state", REPO, TAG, str(site.new))
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state, max_parallel=2)}
    assert outcomes["a"].status == PATCHED and outcomes["b"].status == FAILED
    assert "not a directory" in outcomes["b"].error
    assert outcomes["c"].status == NOT_RUN and current(roots["c"]) == str(site.old)
    assert current(roots["a"]) == str(site.new)

    roots["b"].unlink()
    shutil.copytree(site.root, roots["b"])
    state = RolloutState(tmp_path / "state", REPO, TAG, str(site.new))
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state, max_parallel=2)}
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (SKIPPED, PATCHED, PATCHED)
    assert all(current(r) == str(site.new) for r in roots.values())


def test_a_storage_recreated_after_a_finished_rollout_is_patched_again(site, fleet, tmp_path, caplog):
    """The state file only remembers: a registry it calls finished is skipped only while
    its storage still shows the tag on the bundle's digest."""
    roots, inv = fleet
    entries = load_inventory(inv).select()
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    state = lambda: RolloutState(tmp_path / "state", REPO, TAG, str(site.new))  # noqa: E731
    assert all(o.status == PATCHED for o in run_rollout(entries, patch_one, state=state()))
    shutil.rmtree(roots["a"])  # restored from last month's backup: the old image again
    shutil.copytree(site.root, roots["a"])
    shutil.rmtree(roots["b"] / "docker/registry/v2/blobs")  # b: its manifest blob is gone
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (PATCHED, PATCHED, SKIPPED)
    assert all(current(r) == str(site.new) for r in roots.values())
    assert "a: an earlier run of this rollout finished it, but its storage no longer shows" in caplog.text


def test_a_registry_patched_on_its_host_is_run_again_there(site, fleet, tmp_path, caplog):
    """A registry with a work_pool keeps its storage on its host: the state file cannot tell
    whether that storage still holds the bundle, so a re-run of the rollout runs it again
    (its host's engine re-checks the storage: up to date, nothing written); the registries
    whose storage is readable here are still skipped."""
    roots, _ = fleet
    entries = [e.model_copy(update={"work_pool": "site-c-pool"}) if e.name == "c" else e
               for e in load_inventory(fleet[1]).select()]
    engine_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    called: list[str] = []

    def patch_one(entry):  # stands for the host's deployment run: the same engine, on its storage
        called.append(entry.name)
        return engine_one(entry)

    state = lambda: RolloutState(tmp_path / "state", REPO, TAG, str(site.new))  # noqa: E731
    assert all(o.status == PATCHED for o in run_rollout(entries, patch_one, state=state()))
    called.clear()
    with caplog.at_level("INFO", logger="regpatch.rollout"):
        outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert called == ["c"]
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (SKIPPED, SKIPPED, UP_TO_DATE)
    assert "c: finished in an earlier run of this rollout; run again on its host" in caplog.text
    shutil.rmtree(roots["c"])  # the host's storage restored from last month's backup
    shutil.copytree(site.root, roots["c"])
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert outcomes["c"].status == PATCHED and current(roots["c"]) == str(site.new)


def test_cli_rollout_runs_here_without_prefect(site, fleet, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(site.root / "no-prefect"))
    roots, inv = fleet
    code = main(["rollout", str(site.scenario["staged"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "all 3 registries ok" in out
    assert all(current(r) == str(site.new) for r in roots.values())
    code = main(["rollout", str(site.scenario["staged"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG])
    assert code == 0 and capsys.readouterr().out.count("skipped") == 3


def test_cli_rollout_with_work_pools_needs_an_api(site, fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "no-prefect"))
    inv = tmp_path / "pooled.yml"
    inv.write_text(yaml.safe_dump({"registries": [{"name": "x", "storage": str(site.root), "work_pool": "p"}]}))
    code = main(["rollout", str(site.scenario["staged"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG])
    assert code == 2 and "work_pool" in capsys.readouterr().err


def test_max_parallel_is_bounded(site, fleet, tmp_path):
    roots, inv = fleet
    with pytest.raises(Exception, match="between 1 and 32"):
        run_rollout(load_inventory(inv).select(), lambda e: None,
                    state=RolloutState(tmp_path, REPO, TAG, str(site.new)), max_parallel=0)


def test_up_to_date_registry_reports_so(site, fleet, tmp_path):
    roots, inv = fleet
    engine.patch(engine.PatchRequest(bundle=str(site.scenario["staged"]), repository=site.request().repository,
                                     tag=site.request().tag, target=RegistryTarget.resolve(storage=str(roots["a"]))))
    entries = [e for e in load_inventory(inv).select(["a"])]
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    [outcome] = run_rollout(entries, patch_one, state=RolloutState(tmp_path / "s", REPO, TAG, str(site.new)))
    assert outcome.status == UP_TO_DATE
