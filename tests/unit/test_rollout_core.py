"""run_rollout with the engine as patch_one, on real storages (no registry process)."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import REPO, TAG

from regpatch import engine
from regpatch.cli import main
from regpatch.fleet.inventory import load_inventory
from regpatch.fleet.rollout import (
    FAILED,
    NOT_RUN,
    PATCHED,
    SKIPPED,
    UP_TO_DATE,
    RolloutState,
    engine_patcher,
    run_rollout,
)
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget


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
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (UP_TO_DATE, PATCHED, PATCHED)
    assert all(current(r) == str(site.new) for r in roots.values())


def test_a_rerun_checks_every_storage_and_repairs_what_changed_since(site, fleet, tmp_path, caplog):
    """The state file only remembers: a re-run runs the engine on every registry, which
    writes nothing where the bundle is complete and repairs a storage re-created, restored
    or damaged since (a missing revision link, a missing layer blob)."""
    roots, inv = fleet
    entries = load_inventory(inv).select()
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    state = lambda: RolloutState(tmp_path / "state", REPO, TAG, str(site.new))  # noqa: E731
    assert all(o.status == PATCHED for o in run_rollout(entries, patch_one, state=state()))
    shutil.rmtree(roots["a"])  # restored from last month's backup: the old image again
    shutil.copytree(site.root, roots["a"])
    v2 = roots["b"] / "docker/registry/v2"
    revision = v2 / f"repositories/{REPO}/_manifests/revisions/sha256/{site.new.hex}/link"
    revision.unlink()  # b: the tag still names the new digest, but the registry cannot serve it
    import json
    manifest = json.loads((v2 / f"blobs/sha256/{site.new.hex[:2]}/{site.new.hex}/data").read_bytes())
    layer = manifest["layers"][-1]["digest"].split(":")[1]
    layers = [v2 / f"blobs/sha256/{layer[:2]}/{layer}"]
    shutil.rmtree(layers[0])  # and one of its layers is gone
    with caplog.at_level("INFO", logger="regpatch.rollout"):
        outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (PATCHED, PATCHED, UP_TO_DATE)
    assert all(current(r) == str(site.new) for r in roots.values())
    assert revision.read_text() == str(site.new) and layers[0].is_dir()
    assert "c: finished in an earlier run of this rollout; its storage is checked again" in caplog.text


def test_a_registry_rolled_back_since_is_not_patched_again(site, fleet, tmp_path):
    """A rollback after the rollout is the operator's decision: the re-run leaves that
    registry alone (its storage's history says so) and says how to re-apply it."""
    roots, inv = fleet
    entries = load_inventory(inv).select()
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    state = lambda: RolloutState(tmp_path / "state", REPO, TAG, str(site.new))  # noqa: E731
    assert all(o.status == PATCHED for o in run_rollout(entries, patch_one, state=state()))
    engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), RegistryTarget.resolve(storage=str(roots["b"]))))
    assert current(roots["b"]) == str(site.old)
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert (outcomes["a"].status, outcomes["b"].status, outcomes["c"].status) == (UP_TO_DATE, SKIPPED, UP_TO_DATE)
    assert "rolled back since this rollout patched it" in outcomes["b"].note
    assert current(roots["b"]) == str(site.old)


def test_a_registry_patched_on_its_host_is_run_again_there(site, fleet, tmp_path, caplog):
    """A registry with a work_pool keeps its storage on its host: a re-run of the rollout
    runs it again there (its host's engine re-checks the storage: up to date, nothing
    written; a storage restored since is patched)."""
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
    outcomes = {o.name: o for o in run_rollout(entries, patch_one, state=state())}
    assert sorted(called) == ["a", "b", "c"] and outcomes["c"].status == UP_TO_DATE
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
    assert code == 0 and capsys.readouterr().out.count("up-to-date") == 3


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


@pytest.mark.parametrize("content", [
    b"[]", b"null", b'"str"', b"[" * 200000,
    b'{"digest": "DIGEST", "registries": {"a": "x"}}',
    b'{"digest": "DIGEST", "registries": [["a", 1]]}',
    b'{"digest": "DIGEST", "registries": {"a": {"status": "patched", "new": "DIGEST"}}}',
    b'{"digest": "DIGEST", "registries": {"a": {"status": "patched", "new": "DIGEST", "group": "g", '
    b'"where": "local", "name": "a", "bogus": 1, "seconds": "x"}}}',
])
def test_a_state_file_that_is_not_ours_is_ignored_with_a_warning(site, fleet, tmp_path, caplog, content):
    """Whatever the state file holds, the rollout runs and checks every registry; it is
    rewritten, never trusted."""
    roots, inv = fleet
    entries = load_inventory(inv).select()
    probe = RolloutState(tmp_path / "state", REPO, TAG, str(site.new))
    probe.path.parent.mkdir(parents=True)
    probe.path.write_bytes(content.replace(b"DIGEST", str(site.new).encode()))
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    outcomes = run_rollout(entries, patch_one, state=RolloutState(tmp_path / "state", REPO, TAG, str(site.new)))
    assert [o.status for o in outcomes] == [PATCHED] * 3
    assert all(current(r) == str(site.new) for r in roots.values())


def test_a_state_folder_that_cannot_be_written_fails_before_any_registry(site, fleet, tmp_path):
    roots, inv = fleet
    entries = load_inventory(inv).select()
    (tmp_path / "state").write_text("a file, not a folder")
    patch_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    from regpatch.errors import UsageError

    with pytest.raises(UsageError, match="the rollout state folder .* cannot be written .*give a writable --state-dir"):
        run_rollout(entries, patch_one, state=RolloutState(tmp_path / "state", REPO, TAG, str(site.new)))
    assert all(current(r) == str(site.old) for r in roots.values())


def test_the_state_file_name_is_bounded(tmp_path):
    state = RolloutState(tmp_path, "a" * 255, "t" * 128, "sha256:" + "0" * 64)
    assert len(state.path.name) < 120
    state.check_writable()
    assert state.path.is_file()


@pytest.mark.parametrize("only", ["", ",,,", " "])
def test_an_empty_only_is_refused_not_the_whole_fleet(site, fleet, capsys, monkeypatch, only):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(site.root / "no-prefect"))
    roots, inv = fleet
    code = main(["rollout", str(site.scenario["staged"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG, "--only", only])
    assert code == 2 and "--only: names no registry" in capsys.readouterr().err
    assert all(current(r) == str(site.old) for r in roots.values())
    # a name is taken whole: a trailing newline is not trimmed into another registry's name
    code = main(["rollout", str(site.scenario["staged"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG, "--only", "a\n"])
    assert code == 2 and all(current(r) == str(site.old) for r in roots.values())


def test_a_rollout_state_folder_inside_a_registry_tree_is_refused(tmp_path, capsys):
    """Like a patch's --state-dir: the registry would take the rollout's files for repositories."""
    from regpatch.cli import main

    root = tmp_path / "site"
    (root / "docker" / "registry" / "v2" / "repositories").mkdir(parents=True)
    inv = tmp_path / "inventory.yml"
    inv.write_text(f"registries:\n  - {{name: site-a, storage: '{root}'}}\n")
    inside = root / "docker" / "registry" / "v2" / "repositories" / "state"
    code = main(["rollout", str(tmp_path / "bundle"), "--inventory", str(inv), "--repository", "r", "--tag", "t",
                 "--state-dir", str(inside), "--local"])
    assert code == 2
    assert f"--state-dir {inside} is inside the storage tree {root / 'docker'} of registry site-a" \
        in capsys.readouterr().err
    assert not inside.exists()


def test_around_wave_holds_each_wave_with_work_and_only_it(site, fleet, tmp_path):
    """``around_wave`` is entered before a wave's first registry and left after its last
    one, with the wave's registries to patch; a wave with nothing to do gets none."""
    import contextlib

    roots, inv = fleet
    entries = load_inventory(inv).select()
    engine_one = engine_patcher(bundle=str(site.scenario["staged"]), repository=REPO, tag=TAG)
    events: list[tuple] = []

    @contextlib.contextmanager
    def around(todo):
        events.append(("enter", sorted(e.name for e in todo)))
        yield
        events.append(("leave", sorted(e.name for e in todo)))

    def patch_one(entry):
        events.append(("patch", entry.name))
        return engine_one(entry)

    state = RolloutState(tmp_path / "state", REPO, TAG, str(site.new))
    outcomes = run_rollout(entries, patch_one, state=state, max_parallel=2, around_wave=around)
    assert all(o.status == PATCHED for o in outcomes)
    assert events[0] == ("enter", ["a", "b"]) and sorted(events[1:3]) == [("patch", "a"), ("patch", "b")]
    assert events[3:] == [("leave", ["a", "b"]), ("enter", ["c"]), ("patch", "c"), ("leave", ["c"])]
    # b rolled back since: skipped, so wave 'canary' has a alone; an inventory of b alone has no wave with work
    engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), RegistryTarget.resolve(storage=str(roots["b"]))))
    events.clear()
    run_rollout([e for e in entries if e.name == "b"], patch_one, state=RolloutState(
        tmp_path / "state", REPO, TAG, str(site.new)), around_wave=around)
    assert events == []


@pytest.mark.parametrize("settings,schemas,expected", [
    ({"server": {"database": {"driver": "postgresql+asyncpg"}}}, [], "postgresql"),
    ({"server": {"database": {"driver": "sqlite+aiosqlite"}}}, [], "sqlite"),
    # no driver stated: the block schemas as each database gives them back
    ({"server": {"database": {"driver": None, "connection_url": "**********"}}},
     [{"fields": {"title": "t", "description": "d", "type": "object", "properties": {}}}], "sqlite"),
    ({"server": {"database": {"driver": None}}},
     [{"fields": {"type": "object", "title": "t", "properties": {}, "description": "d"}},
      {"fields": {"type": "object", "title": "t", "required": [], "properties": {}}}], "postgresql"),
    # most in jsonb's order: PostgreSQL (the server appends a key to a schema that refers to others)
    ({}, [{"fields": {"type": "o", "title": "t", "properties": {}}},
          {"fields": {"type": "o", "title": "t", "properties": {}}},
          {"fields": {"type": "o", "title": "t", "properties": {}, "definitions": {}, "a": 1}}], "postgresql"),
    # some in that order by chance, not most: cannot tell
    ({}, [{"fields": {"type": "o", "title": "t", "properties": {}}},
          {"fields": {"title": "t", "type": "o", "properties": {}}}], None),
    ({}, [], None),                                      # nothing to tell by
    ({}, [{"fields": {"a": 1, "b": 2}}], None),          # too few keys to tell by
    ("not a document", "nor this", None),
])
def test_the_server_database_is_told_by_its_driver_or_its_json(settings, schemas, expected):
    from regpatch.fleet.prefect_server import server_database

    assert server_database(settings, schemas) == expected


def test_more_than_four_at_once_only_on_postgresql():
    from regpatch.errors import UsageError
    from regpatch.fleet.prefect_server import check_parallel, jsonb_order

    assert jsonb_order(["title", "type", "description", "properties", "a"]) == [
        "a", "type", "title", "properties", "description"]
    for database in ("postgresql", "sqlite", None):
        check_parallel(4, database)
    check_parallel(32, "postgresql")
    with pytest.raises(UsageError) as e:
        check_parallel(5, "sqlite")
    assert "--max-parallel 5 needs a Prefect server on PostgreSQL: this one runs on SQLite" in str(e.value)
    assert "--max-parallel 4 or less" in str(e.value) and "production recipe" in str(e.value)
    with pytest.raises(UsageError) as e:
        check_parallel(8, None)
    assert "PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg" in str(e.value)
