"""Retention on a real registry: a year of monthly patches of servercore:ltsc2019 (the base
layer new every third month), a tagged Windows manifest list patched four times (two of its
versions share a child), and images regpatch never wrote (the first month, pushed with
skopeo; an image of another repository overwritten by a second push). ``regpatch prune``
plans, unlinks, records; the registry's own garbage collection then frees what the plan said;
every kept tag and kept digest still pulls; a kill -9 at each step of a prune is finished by
the next run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.util import skopeo_inspect_digest, skopeo_pull, tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import (
    make_image,
    make_index,
    make_layer,
    monthly_servercore,
    push_with_skopeo,
    write_oci_layout,
)
from regpatch.demo.loopback import LocalRegistry

REPO, TAG, LIST_TAG = "servercore", "ltsc2019", "multi"
CRASHING_REGPATCH = [sys.executable, str(Path(__file__).parents[1] / "support" / "crash.py")]


def _patch(reg: LocalRegistry, bundle: Path, tag: str) -> None:
    code = regpatch_main(["patch", str(bundle), "--repository", REPO, "--tag", tag, "--storage", str(reg.root),
                          "--registry-url", reg.url, "--local"])
    assert code == 0


def _list_versions(work: Path) -> list:
    """Five versions of a two-platform list; versions 2 and 3 share their ltsc2022 child."""
    out = []
    for v in range(1, 6):
        d = work / f"list-{v}"
        kids = []
        for n, osv in enumerate(("10.0.17763", "10.0.20348")):
            seed = 9000 + (3 if v == 2 and n == 1 else v) * 10 + n
            layer = make_layer(d, f"layer-{n}.tar.gz", seed=seed, size=8 << 10)
            kids.append(make_image(d, [layer], os="windows", os_version=f"{osv}.{seed}", seed=seed,
                                   name=f"child-{n}"))
        out.append(make_index(d, kids))
    return out


def _blob_bytes(reg: LocalRegistry) -> int:
    """What the blobs take on the filesystem (the sizes of every blob's data file)."""
    total = 0
    for dirpath, _, files in os.walk(reg.root / "docker" / "registry" / "v2" / "blobs"):
        total += sum(os.stat(Path(dirpath, f)).st_size for f in files if f == "data")
    return total


def _revisions(reg: LocalRegistry, repo: str) -> set[str]:
    folder = reg.root / "docker/registry/v2/repositories" / repo / "_manifests/revisions/sha256"
    return {"sha256:" + p.name for p in folder.iterdir() if (p / "link").is_file()}


def _restart(reg: LocalRegistry) -> str:
    return f"process:pidfile={reg.pidfile},config={reg.config_path},log={reg.log_path}"


def _gc(reg: LocalRegistry, capsys, *extra: str, config: bool = False) -> tuple[int, dict]:
    where = ["--registry-config", str(reg.config_path)] if config else ["--storage", str(reg.root),
                                                                         "--registry-url", reg.url]
    code = regpatch_main(["gc", *where, "--restart", _restart(reg), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


_TREES: dict[str, str] = {}


def _tree_after_prune(docker: Path) -> str:
    return _TREES.setdefault(str(docker), tree_hash(docker))


def _prune(reg: LocalRegistry, capsys, *extra: str) -> tuple[int, dict]:
    code = regpatch_main(["prune", "--storage", str(reg.root), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


@pytest.fixture
def year(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    reg = LocalRegistry(tmp_path / "registry").start()
    try:
        months = monthly_servercore(tmp_path / "months", base_size=64 << 10, delta_size=16 << 10)
        first = write_oci_layout(tmp_path / "month-01-layout", {TAG: months[0].image})
        push_with_skopeo(first, TAG, reg.host, REPO, TAG)  # the image the registry had: not regpatch's
        for m in months[1:]:
            _patch(reg, m.staged, TAG)
        lists = _list_versions(tmp_path / "lists")
        push_with_skopeo(write_oci_layout(tmp_path / "list-1-layout", {LIST_TAG: lists[0]}), LIST_TAG,
                         reg.host, REPO, LIST_TAG)
        for v, index in enumerate(lists[1:], 2):
            _patch(reg, write_oci_layout(tmp_path / f"list-{v}-layout", {LIST_TAG: index}), LIST_TAG)
        foreign = []
        for n in (1, 2):  # the second push leaves the first untagged: someone else's, never regpatch's
            layer = make_layer(tmp_path / f"agent-{n}", "layer.tar.gz", seed=500 + n, size=8 << 10)
            img = make_image(tmp_path / f"agent-{n}", [layer], seed=500 + n)
            push_with_skopeo(write_oci_layout(tmp_path / f"agent-{n}-layout", {"1": img}), "1", reg.host,
                             "tools/agent", "1")
            foreign.append(str(img.manifest_digest))
        yield reg, months, lists, foreign
    finally:
        reg.stop()


def _digest(x) -> str:
    return str(x.manifest_digest)


def test_a_year_of_patches_pruned_then_collected_frees_what_the_plan_said(year, tmp_path, capsys):
    reg, months, lists, foreign = year
    docker = reg.root / "docker"
    before_tree, before_bytes = tree_hash(docker), _blob_bytes(reg)

    # the dry run: what goes, what the collection would free; not a byte written
    code, plan = _prune(reg, capsys)
    assert code == 0 and tree_hash(docker) == before_tree and plan["applied"] is False
    planned = {i["digest"]: i for i in plan["images"]}
    monthly_gone = {_digest(m.image) for m in months[1:9]}   # months 2-9: regpatch's, older than the 2 kept
    assert set(planned) == monthly_gone | {_digest(lists[1])}
    assert planned[_digest(lists[1])]["children"] == [_digest(lists[1].children[0])]  # its other child is v3's too
    assert plan["skipped_unrecorded"] == 3  # month 1, list v1 (with its children: one image each), agent 1
    assert all(planned[d]["tag"] == TAG and planned[d]["written_by_regpatch"] for d in monthly_gone)
    code, young = _prune(reg, capsys, "--keep-days", "1")  # everything was written today
    assert code == 0 and young["images"] == []

    # the prune: links go, the history says so (who asked, why), a second run has nothing to do
    code, done = _prune(reg, capsys, "--apply", "--requested-by", "ana@example.org", "--reason", "CHG-9 retention")
    assert code == 0 and done["applied"] and {i["digest"] for i in done["images"]} == set(planned)
    assert done["freed_bytes"] == plan["freed_bytes"] > 0
    revisions = _revisions(reg, REPO)
    assert not revisions & set(planned) and _digest(lists[1].children[0]) not in revisions
    assert {_digest(months[0].image), _digest(lists[0])} <= revisions  # not regpatch's: they stay
    assert _revisions(reg, "tools/agent") == set(foreign)
    code = regpatch_main(["history", "--storage", str(reg.root), "--repository", REPO, "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    pruned = [x for x in lines if x["action"] == "pruned"]
    assert sorted(x["old"] for x in pruned) == sorted(planned) and all("keep 2" in x["source"] for x in pruned)
    assert {(x["requested_by"], x["reason"]) for x in pruned} == {("ana@example.org", "CHG-9 retention")}
    code, again = _prune(reg, capsys, "--apply")
    assert code == 0 and again["images"] == []
    _tree_after_prune(docker)

    # a rollback to a pruned image says so
    code = regpatch_main(["rollback", "--repository", REPO, "--tag", TAG, "--to", _digest(months[4].image),
                          "--storage", str(reg.root), "--registry-url", reg.url, "--local"])
    err = capsys.readouterr().err
    assert code == 4 and f"{REPO}@{_digest(months[4].image)} was pruned on " in err.strip().splitlines()[-1]

    # regpatch gc: its dry run (the registry's own, checked against regpatch's mark) writes nothing;
    # with --apply it stops the registry, collects, starts it, proves every kept image
    code, dry = _gc(reg, capsys)
    assert code == 0 and tree_hash(docker) == _tree_after_prune(docker) and dry["applied"] is False
    assert dry["eligible_bytes"] == plan["freed_bytes"] and dry["eligible_blobs"] == plan["freed_blobs"]
    old_pid = reg.pid
    code, gc = _gc(reg, capsys, "--apply", "--reason", "CHG-9 window")
    assert code == 0 and gc["applied"] and reg.pid != old_pid
    assert gc["reason"] == "CHG-9 window" and gc["requested_by"]  # --requested-by: user@host by default
    journal = json.loads((reg.root / ".regpatch" / "journal" / "_gc.json").read_text())
    assert (journal["status"], journal["requested_by"], journal["reason"]) == \
        ("complete", gc["requested_by"], "CHG-9 window")
    assert before_bytes - _blob_bytes(reg) == plan["freed_bytes"] == gc["freed_bytes"]
    assert gc["downtime_seconds"] > 0 and len(gc["proven"]) == len(gc["kept_images"])
    assert f"{REPO}:{TAG}" in gc["proven"] and f"{REPO}:{LIST_TAG}" in gc["proven"]
    code, again = _gc(reg, capsys, "--apply")  # nothing left to free: a second run frees nothing
    assert code == 0 and again["freed_bytes"] == 0 and again["eligible_blobs"] == 0

    # every kept tag and every kept digest pulls
    for tag, want in ((TAG, months[-1].image), (LIST_TAG, lists[-1])):
        assert skopeo_inspect_digest(reg.host, REPO, tag) == _digest(want)
        skopeo_pull(reg.host, REPO, tag, tmp_path / f"pull-{tag}")
    kept = [months[0].image, months[9].image, months[10].image, lists[0], lists[2], lists[3]]
    for n, image in enumerate(kept):
        skopeo_pull(reg.host, REPO, _digest(image), tmp_path / f"pull-kept-{n}")
    for n, digest in enumerate(foreign):
        skopeo_pull(reg.host, "tools/agent", digest, tmp_path / f"pull-agent-{n}")


def test_images_regpatch_did_not_write_go_only_when_asked(year, capsys):
    reg, months, lists, foreign = year
    code, plan = _prune(reg, capsys, "--also-unrecorded", "--keep", "0", "--repository", REPO)
    assert code == 0
    gone = {i["digest"] for i in plan["images"]}
    assert _digest(months[0].image) in gone and _digest(lists[0]) in gone
    assert _digest(months[-1].image) not in gone and _digest(lists[-1]) not in gone  # tagged: never
    assert not gone & set(foreign)  # another repository


def test_a_prune_killed_at_each_step_is_finished_by_the_next_run(year, capsys):
    reg, months, lists, _ = year
    code, plan = _prune(reg, capsys)
    planned = {i["digest"] for i in plan["images"]}
    kills = 0
    for _ in range(400):  # killed right after its first durable write, every time: each step is killed once
        p = subprocess.run([*CRASHING_REGPATCH, "prune", "--storage", str(reg.root), "--apply"],
                           env={**os.environ, "REGPATCH_FAULT_KILL_AT": "1"}, capture_output=True,
                           text=True, timeout=120)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr
        kills += 1
        for tag, want in ((TAG, months[-1].image), (LIST_TAG, lists[-1])):  # served after every kill
            assert skopeo_inspect_digest(reg.host, REPO, tag) == _digest(want)
    assert kills >= 2 * len(planned)  # at least a history line and a revision link each
    assert not _revisions(reg, REPO) & planned
    code = regpatch_main(["history", "--storage", str(reg.root), "--repository", REPO, "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0 and sorted(x["old"] for x in lines if x["action"] == "pruned") == sorted(planned)  # once each


def test_a_collection_that_would_delete_a_kept_blob_is_refused_and_the_registry_serves_on(year, capsys):
    """An index's child without a revision link of its own: the registry's garbage-collect marks
    only the child's manifest blob, not its layers (distribution issue 3004's cause)."""
    reg, months, lists, _ = year
    child = lists[-1].children[0]
    link = (reg.root / "docker/registry/v2/repositories" / REPO / "_manifests/revisions/sha256"
            / child.manifest_digest.hex / "link")
    link.unlink()
    docker = reg.root / "docker"
    before, pid = tree_hash(docker), reg.pid
    for extra in ((), ("--apply",)):
        code = regpatch_main(["gc", "--registry-config", str(reg.config_path), "--restart", _restart(reg), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 4, err
        assert "would delete" in err[-1] and "a kept image needs" in err[-1] and f"{REPO}:{LIST_TAG}" in err[-1]
        assert tree_hash(docker) == before  # not a blob deleted
    assert reg.pid != pid  # stopped and started again by the refused --apply
    assert skopeo_inspect_digest(reg.host, REPO, LIST_TAG) == _digest(lists[-1])


def test_a_collection_killed_at_each_step_is_finished_by_the_next_run(year, capsys):
    reg, months, lists, _ = year
    code, _ = _prune(reg, capsys, "--apply")
    assert code == 0
    kills, steps = 0, set()
    for at in range(1, 40):  # kill -9 at the Nth checkpoint of a gc, then a plain re-run finishes it
        p = subprocess.run([*CRASHING_REGPATCH, "gc", "--registry-config", str(reg.config_path),
                            "--restart", _restart(reg), "--apply"],
                           env={**os.environ, "REGPATCH_FAULT_KILL_AT": str(at)}, capture_output=True, text=True,
                           timeout=180)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr
        kills += 1
        steps.add(p.stderr.strip().splitlines()[-1].rsplit("(", 1)[-1])
        code, done = _gc(reg, capsys, "--apply", config=True)
        assert code == 0
        for tag, want in ((TAG, months[-1].image), (LIST_TAG, lists[-1])):
            assert skopeo_inspect_digest(reg.host, REPO, tag) == _digest(want)
    print(f"gc killed {kills} times, at: {sorted(steps)}")
    assert {"gc:stopped)", "gc:collecting)", "gc:collected)", "gc:started)"} <= steps


def test_the_maintenance_flow_prunes_and_collects_every_registry_of_the_inventory(year, tmp_path, prefect_api,
                                                                                   monkeypatch):
    """The maintenance flow over an inventory: a dry run first (nothing written), then apply: the
    registry pruned, collected in its window (a new registry process), every kept image pulled;
    the artifact says what was unlinked, freed and proven."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from regpatch.params import ChangeParams, RetentionParams, RolloutParams
    from regpatch_flows.maintenance import maintenance

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    reg, months, lists, _ = year
    inv = tmp_path / "inventory.yml"
    inv.write_text(json.dumps({"registries": [{"name": "site-a", "storage": str(reg.root), "url": reg.url,
                                               "restart": _restart(reg)}]}))
    docker, before = reg.root / "docker", _blob_bytes(reg)
    tree, pid = tree_hash(docker), reg.pid

    def artifact() -> str:
        with get_client(sync_client=True) as client:
            (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["maintenance"])),
                                           sort=ArtifactSort.CREATED_DESC, limit=1)
        return str(art.data)

    change = ChangeParams(requested_by="ana@example.org", reason="CHG-9 maintenance window")
    (dry,) = maintenance(rollout=RolloutParams(inventory=str(inv)), change=change, retention=RetentionParams(keep=2))
    assert tree_hash(docker) == tree and reg.pid == pid and dry["pruned"] == 9 and dry["freed_bytes"] > 0
    assert "| site-a | dry run | 9 |" in artifact()
    (done,) = maintenance(rollout=RolloutParams(inventory=str(inv)), change=change, retention=RetentionParams(keep=2),
                          apply=True)
    assert done["pruned"] == 9 and done["freed_bytes"] == before - _blob_bytes(reg) == dry["freed_bytes"]
    assert done["proven"] > 0
    assert reg.pid != pid and "| site-a | done | 9 |" in artifact()
    assert "| requested by | ana@example.org |\n| reason | CHG-9 maintenance window |" in artifact()
    history = [json.loads(x) for x in (reg.root / ".regpatch" / "history.jsonl").read_text().splitlines()]
    assert {(x["requested_by"], x["reason"]) for x in history if x["action"] == "pruned"} == \
        {("ana@example.org", "CHG-9 maintenance window")}
    for tag, want in ((TAG, months[-1].image), (LIST_TAG, lists[-1])):
        assert skopeo_inspect_digest(reg.host, REPO, tag) == _digest(want)
