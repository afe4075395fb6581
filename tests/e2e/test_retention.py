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
from regpatch.platform import children

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

    # the prune: links go, the history says so, a second run has nothing to do
    code, done = _prune(reg, capsys, "--apply")
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
    code, again = _prune(reg, capsys, "--apply")
    assert code == 0 and again["images"] == []

    # a rollback to a pruned image says so
    code = regpatch_main(["rollback", "--repository", REPO, "--tag", TAG, "--to", _digest(months[4].image),
                          "--storage", str(reg.root), "--registry-url", reg.url, "--local"])
    err = capsys.readouterr().err
    assert code == 4 and f"{REPO}@{_digest(months[4].image)} was pruned on " in err.strip().splitlines()[-1]

    # the registry's own garbage collection frees what the plan said, measured on the filesystem
    reg.stop()
    gc = children.run(["docker-registry", "garbage-collect", str(reg.config_path)],
                      stdout=children.Capture(1 << 20, "tail"), stderr=children.Capture(1 << 20, "tail"))
    assert gc.returncode == 0, gc.stderr.lines()
    reg.start()
    assert before_bytes - _blob_bytes(reg) == plan["freed_bytes"]

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
    assert sorted(x["old"] for x in lines if x["action"] == "pruned") == sorted(planned)  # once each
