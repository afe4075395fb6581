"""Retention on a real storage in a tmp folder (no registry): half a year of monthly patches of
servercore:ltsc2019, a tagged manifest list patched four times (versions 2 and 3 share a child),
and images regpatch's history does not say it wrote (the first month and the first list version
were written by a patch whose state folder, and so its history, is elsewhere; the same for two
images of tools/agent, the first left untagged by the second). ``plan_prune`` plans, ``apply_prune``
unlinks and records, ``regpatch prune`` prints, a rollback to a pruned image says so."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.util import tree_hash

from regpatch import engine
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import SampleIndex, make_image, make_index, make_layer, monthly_servercore, write_oci_layout
from regpatch.digest import Digest
from regpatch.engine.prune import PrunePlan, apply_prune, plan_prune
from regpatch.hooks import install_checkpoint_hook
from regpatch.params import ChangeParams, RetentionParams
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget
from regpatch.storage.history import read_history
from regpatch.storage.store import RegistryStore

REPO, TAG, LIST_TAG, AGENT = "servercore", "ltsc2019", "multi", "tools/agent"
R, T, LT = Repository.parse(REPO), Tag.parse(TAG), Tag.parse(LIST_TAG)


def _d(sample) -> str:
    return str(sample.manifest_digest)


def _blobs(sample) -> dict[str, int]:
    """Every blob an image (or an index with its children) stores: digest -> size."""
    out = {_d(sample): len(sample.manifest_bytes)}
    if isinstance(sample, SampleIndex):
        for child in sample.children:
            out.update(_blobs(child))
    else:
        out.update({str(b.digest): b.size for b in sample.blobs})
    return out


def _patch(root: Path, bundle: Path, repo: str, tag: str, state_dir: Path | None = None) -> None:
    engine.patch(engine.PatchRequest(bundle=str(bundle), repository=Repository.parse(repo), tag=Tag.parse(tag),
                                     target=RegistryTarget.resolve(storage=str(root),
                                                                   state_dir=str(state_dir) if state_dir else None)))


class Year:
    def __init__(self, root: Path, months, lists, agents):
        self.root, self.months, self.lists, self.agents = root, months, lists, agents
        self.store = RegistryStore(root)
        self.layout = self.store.layout

    def revisions(self, repo: str = REPO) -> set[str]:
        folder = self.layout.revisions_dir(Repository.parse(repo))
        return {"sha256:" + p.name for p in folder.iterdir() if (p / "link").is_file()} if folder.is_dir() else set()

    def index_entries(self, tag: Tag) -> set[str]:
        folder = self.layout.tag_index_dir(R, tag)
        return {"sha256:" + p.name for p in folder.iterdir() if (p / "link").is_file()}

    def current(self, tag: Tag) -> bytes:
        return self.layout.tag_current_link(R, tag).read_bytes()

    def pruned_lines(self) -> list:
        return [e for e in read_history(self.layout, REPO) if e.action == "pruned"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The storage, built once by the engine; each test gets its own copy."""
    work = tmp_path_factory.mktemp("year")
    months = monthly_servercore(work / "months", months=6, base_size=4096, delta_size=1024)
    lists = []
    for v in range(1, 6):
        d = work / f"list-{v}"
        kids = []
        for n, osv in enumerate(("10.0.17763", "10.0.20348")):
            seed = 9000 + (3 if v == 2 and n == 1 else v) * 10 + n  # v2's second child is v3's
            layer = make_layer(d, f"layer-{n}.tar.gz", seed=seed, size=2048)
            kids.append(make_image(d, [layer], os="windows", os_version=f"{osv}.{seed}", seed=seed,
                                   name=f"child-{n}"))
        lists.append(make_index(d, kids))
    agents = []
    for n in (1, 2):
        layer = make_layer(work / f"agent-{n}", "layer.tar.gz", seed=500 + n, size=2048)
        agents.append(make_image(work / f"agent-{n}", [layer], seed=500 + n))

    root = work / "storage"
    (root / "docker/registry/v2").mkdir(parents=True)
    elsewhere = work / "other-state"  # another writer's patches: their history is not this storage's
    _patch(root, write_oci_layout(work / "month-01-layout", {TAG: months[0].image}), REPO, TAG, elsewhere)
    for m in months[1:]:
        _patch(root, m.staged, REPO, TAG)
    _patch(root, write_oci_layout(work / "list-1-layout", {LIST_TAG: lists[0]}), REPO, LIST_TAG, elsewhere)
    for v, index in enumerate(lists[1:], 2):
        _patch(root, write_oci_layout(work / f"list-{v}-layout", {LIST_TAG: index}), REPO, LIST_TAG)
    for n, img in enumerate(agents, 1):
        _patch(root, write_oci_layout(work / f"agent-{n}-layout", {"1": img}), AGENT, "1", elsewhere)
    return root, months, lists, agents


@pytest.fixture
def year(built, tmp_path, monkeypatch) -> Year:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    root, months, lists, agents = built
    copy = tmp_path / "storage"
    shutil.copytree(root, copy, symlinks=True)
    return Year(copy, [m.image for m in months], lists, agents)


def _expected_freed(pruned: list, alive: list) -> tuple[int, int]:
    gone: dict[str, int] = {}
    for s in pruned:
        gone.update(_blobs(s))
    kept: set[str] = set()
    for s in alive:
        kept |= set(_blobs(s))
    freed = {d: n for d, n in gone.items() if d not in kept}
    return len(freed), sum(freed.values())


# --------------------------------------------------------------------------- the plan

def test_the_plan_keeps_each_tags_current_and_k_previous_images_and_what_regpatch_did_not_write(year):
    m, lists, agents = year.months, year.lists, year.agents
    before = tree_hash(year.root)
    plan = plan_prune(year.store, RetentionParams(keep=2))
    assert tree_hash(year.root) == before and not plan.applied  # a plan reads only

    planned = {i.digest: i for i in plan.images}
    assert set(planned) == {_d(m[1]), _d(m[2]), _d(lists[1])}  # months 2-3, list v2: older than the 2 kept
    for d in (_d(m[1]), _d(m[2])):
        assert planned[d].tag == TAG and planned[d].written_by_regpatch and planned[d].children == ()
    v2 = planned[_d(lists[1])]
    assert v2.tag == LIST_TAG and v2.children == (_d(lists[1].children[0]),)  # its other child is v3's too
    assert plan.skipped_unrecorded == 3  # month 1, list v1 (its children go with it), agent 1

    kept = set(plan.kept[REPO])
    assert {_d(m[5]), _d(m[4]), _d(m[3])} <= kept  # current and 2 previous
    assert _d(m[0]) not in kept and _d(m[0]) not in planned  # not kept by the policy, not regpatch's: skipped
    for index in (lists[4], lists[3], lists[2]):  # a kept index keeps its children
        assert {_d(index), *map(_d, index.children)} <= kept
    assert _d(lists[1].children[1]) in kept  # v2's child that v3 shares
    assert _d(lists[1].children[0]) not in kept
    assert plan.kept[AGENT] == [_d(agents[1])]  # its tag's; agent 1 is skipped (not regpatch's)

    blobs, size = _expected_freed([m[1], m[2], lists[1]],
                                  [m[0], m[3], m[4], m[5], lists[0], lists[2], lists[3], lists[4], *agents])
    assert (plan.freed_blobs, plan.freed_bytes) == (blobs, size) and size > 0
    base = str(m[1].layers[0].digest)  # months 1-3 share their base layer, and month 1 stays
    assert base == str(m[0].layers[0].digest)

    text = plan.render()
    assert f"would prune {_d(m[1])} of {REPO}:{TAG}" in text
    assert f"would prune {_d(lists[1])} of {REPO}:{LIST_TAG} (+1 child manifests)" in text
    assert "3 image(s) regpatch did not write are kept (--also-unrecorded" in text
    assert text.endswith("nothing was written (--apply to prune)")


def test_keep_is_the_rollback_depth(year):
    m, lists = year.months, year.lists
    one = {i.digest for i in plan_prune(year.store, RetentionParams(keep=1)).images}
    assert one == {_d(m[1]), _d(m[2]), _d(m[3]), _d(lists[1]), _d(lists[2])}
    many = plan_prune(year.store, RetentionParams(keep=10))
    assert many.images == [] and many.freed_bytes == 0 and many.freed_blobs == 0


def test_keep_days_keeps_what_regpatch_wrote_recently(year):
    m, lists = year.months, year.lists
    young = plan_prune(year.store, RetentionParams(keep=2, keep_days=1))
    assert young.images == []  # everything was written today
    later = datetime.now(timezone.utc) + timedelta(days=30)
    old = plan_prune(year.store, RetentionParams(keep=2, keep_days=1), now=later)
    assert {i.digest for i in old.images} == {_d(m[1]), _d(m[2]), _d(lists[1])}


def test_images_regpatch_did_not_write_go_only_when_asked_and_never_a_tagged_one(year):
    m, lists, agents = year.months, year.lists, year.agents
    plan = plan_prune(year.store, RetentionParams(keep=0, also_unrecorded=True), [R])
    gone = {i.digest: i for i in plan.images}
    assert set(gone) == {*map(_d, m[:5]), *map(_d, lists[:4])}  # the tags' current images stay
    assert not set(gone) & set(map(_d, agents))  # another repository
    first = gone[_d(m[0])]
    assert not first.written_by_regpatch and first.tag == TAG  # named by the tag index it is in
    assert set(gone[_d(lists[0])].children) == set(map(_d, lists[0].children))
    assert plan.skipped_unrecorded == 0

    agent = plan_prune(year.store, RetentionParams(keep=0, also_unrecorded=True), [Repository.parse(AGENT)])
    assert [(i.digest, i.tag, i.written_by_regpatch) for i in agent.images] == [(_d(agents[0]), "1", False)]
    blobs, size = _expected_freed([agents[0]], [agents[1]])
    assert (agent.freed_blobs, agent.freed_bytes) == (blobs, size)


# --------------------------------------------------------------------------- apply

def test_apply_unlinks_records_and_a_second_run_has_nothing_to_do(year):
    m, lists = year.months, year.lists
    current, list_current = year.current(T), year.current(LT)
    plan = plan_prune(year.store, RetentionParams(keep=2))
    planned = {i.digest for i in plan.images}
    blob_paths = {d: year.layout.blob_data(Digest.parse(d)) for d in _blobs(m[1])}

    done = apply_prune(year.store, plan, RetentionParams(keep=2),
                       change=ChangeParams(requested_by="ana@example.org", reason="CHG-7 retention"))
    assert done.applied and {i.digest for i in done.images} == planned
    assert (done.freed_blobs, done.freed_bytes) == (plan.freed_blobs, plan.freed_bytes)
    revisions = year.revisions()
    assert not revisions & planned and _d(lists[1].children[0]) not in revisions
    assert {_d(m[0]), _d(lists[0]), _d(lists[1].children[1])} <= revisions  # not regpatch's; v3's child
    assert not year.index_entries(T) & planned and _d(lists[1]) not in year.index_entries(LT)
    assert _d(m[3]) in year.index_entries(T)  # a kept image keeps its tag index entry
    assert year.current(T) == current and year.current(LT) == list_current  # a tag is never touched
    assert all(p.is_file() for p in blob_paths.values())  # blobs are the garbage collection's
    assert year.revisions(AGENT) == {_d(a) for a in year.agents}

    lines = year.pruned_lines()
    assert sorted(e.old for e in lines) == sorted(planned)
    by_old = {e.old: e for e in lines}
    assert by_old[_d(m[1])].tag == TAG and by_old[_d(m[1])].new == _d(m[5])
    assert by_old[_d(lists[1])].tag == LIST_TAG and by_old[_d(lists[1])].new == _d(lists[4])
    assert all(e.source == "regpatch prune (keep 2 previous per tag)" for e in lines)
    assert {(e.requested_by, e.reason) for e in lines} == {("ana@example.org", "CHG-7 retention")}  # who, why
    assert "pruned 3 image(s)" in done.render() and "nothing was written" not in done.render()

    again = plan_prune(year.store, RetentionParams(keep=2))
    assert again.images == [] and again.freed_bytes == 0
    tree = tree_hash(year.root / "docker")
    redo = apply_prune(year.store, plan, RetentionParams(keep=2))  # the old plan: nothing left of it
    assert redo.images == [] and tree_hash(year.root / "docker") == tree
    assert len(year.pruned_lines()) == len(planned)


def test_apply_does_only_what_the_plan_showed_and_what_the_storage_still_allows(year, caplog):
    m, lists = year.months, year.lists
    plan = plan_prune(year.store, RetentionParams(keep=2))
    _patch(year.root, write_oci_layout(year.root.parent / "m2", {TAG: m[1]}), REPO, TAG)  # month 2 back on the tag
    with caplog.at_level(logging.INFO, logger="regpatch.engine"):
        done = apply_prune(year.store, plan, RetentionParams(keep=2))
    # month 2 is the tag's now (kept); month 4 left the rollback depth but was not in the plan shown
    assert {i.digest for i in done.images} == {_d(m[2]), _d(lists[1])}
    assert {_d(m[1]), _d(m[3])} <= year.revisions() and _d(m[2]) not in year.revisions()
    assert f"kept {REPO}@{_d(m[1])}: the storage changed since the plan" in caplog.text


def test_a_tag_moved_onto_an_image_while_it_is_unlinked_gets_its_links_back(year, caplog):
    """Another writer (the registry's API) moves the tag onto the image between its 'pruned' line
    and its unlinking: the links are written back and the prune is not reported."""
    plan = plan_prune(year.store, RetentionParams(keep=2))
    moved: list[str] = []

    def another_writer(label: str) -> None:
        if label == "history" and not moved:
            e = read_history(year.layout, REPO)[-1]
            assert e.action == "pruned"
            moved.append(e.old)
            year.store.write_link(year.layout.tag_current_link(R, Tag.parse(e.tag)), Digest.parse(e.old))

    install_checkpoint_hook(another_writer)
    try:
        with caplog.at_level(logging.WARNING, logger="regpatch.engine"):
            done = apply_prune(year.store, plan, RetentionParams(keep=2))
    finally:
        install_checkpoint_hook(None)
    (target,) = moved
    img = next(i for i in plan.images if i.digest == target)
    assert target not in {i.digest for i in done.images} and len(done.images) == len(plan.images) - 1
    assert {target, *img.children} <= year.revisions()  # written back
    assert target in year.index_entries(Tag.parse(img.tag))
    assert year.store.current_tag(R, Tag.parse(img.tag)) == Digest.parse(target)
    assert f"kept {REPO}@{target}: tag {img.tag} was moved to it while it was being pruned" in caplog.text


class Killed(BaseException):
    """kill -9 stand-in: nothing after the checkpoint runs (no except clause catches it)."""


def test_a_prune_killed_after_each_unlink_is_finished_and_recorded_once(year):
    planned = {i.digest for i in plan_prune(year.store, RetentionParams(keep=2)).images}
    state = {"unlinks": 0}

    def kill_at_first_unlink(label: str) -> None:
        if label == "unlink":
            state["unlinks"] += 1
            raise Killed()

    kills = 0
    for _ in range(40):
        install_checkpoint_hook(kill_at_first_unlink)
        try:
            apply_prune(year.store, plan_prune(year.store, RetentionParams(keep=2)), RetentionParams(keep=2))
            break
        except Killed:
            kills += 1
        finally:
            install_checkpoint_hook(None)
    # months 2 and 3: a tag index entry and a revision link each; v2: those and its child's revision link
    assert kills == 7 and not year.revisions() & planned
    lines = year.pruned_lines()
    assert sorted(e.old for e in lines) == sorted(planned)  # once each, however often it was killed


# --------------------------------------------------------------------------- the command line

def _prune(year: Year, capsys, *extra: str) -> tuple[int, dict]:
    code = regpatch_main(["prune", "--storage", str(year.root), "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, json.loads(out)


def test_regpatch_prune_plans_without_writing_then_applies(year, capsys):
    m, lists = year.months, year.lists
    before = tree_hash(year.root)
    _, plan = _prune(year, capsys)
    assert tree_hash(year.root) == before and plan["applied"] is False
    assert {i["digest"] for i in plan["images"]} == {_d(m[1]), _d(m[2]), _d(lists[1])}
    assert plan["skipped_unrecorded"] == 3 and plan["freed_bytes"] > 0
    code = regpatch_main(["prune", "--storage", str(year.root), "--keep", "1", "--repository", REPO])
    out = capsys.readouterr().out
    assert code == 0 and "would prune 5 image(s)" in out and tree_hash(year.root) == before
    assert "tools/agent" not in out

    _, done = _prune(year, capsys, "--apply")
    assert done["applied"] is True and done["freed_bytes"] == plan["freed_bytes"]
    assert {i["digest"] for i in done["images"]} == {i["digest"] for i in plan["images"]}
    code = regpatch_main(["prune", "--storage", str(year.root), "--apply"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1].startswith("pruned 0 image(s)")
    assert "--apply to prune" not in out

    code = regpatch_main(["prune", "--storage", str(year.root), "--keep", "-1"])
    assert code == 2 and "--keep" in capsys.readouterr().err


def test_a_rollback_to_a_pruned_image_says_when_it_was_pruned(year, capsys):
    m = year.months
    _prune(year, capsys, "--apply")
    code = regpatch_main(["rollback", "--repository", REPO, "--tag", TAG, "--to", _d(m[1]),
                          "--storage", str(year.root), "--local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4, err
    assert f"{REPO}@{_d(m[1])} was pruned on " in err[-1] and "keep 2 previous per tag" in err[-1]
    assert year.current(T) == _d(m[5]).encode()
    code = regpatch_main(["rollback", "--repository", REPO, "--tag", TAG, "--to", _d(m[3]),
                          "--storage", str(year.root), "--local"])  # a kept one rolls back
    assert code == 0, capsys.readouterr().err
    assert year.current(T) == _d(m[3]).encode()


def test_an_empty_plan_renders_what_it_keeps():
    plan = PrunePlan(kept={"a": ["sha256:" + "1" * 64]})
    assert plan.render().splitlines() == [
        "a: keeps 1 image(s)",
        "would prune 0 image(s); the registry's garbage collection would then free 0 blob(s), 0 B; "
        "nothing was written (--apply to prune)"]


def test_an_image_pushed_by_digest_only_is_pruned_without_a_history_line(year, caplog):
    first = Digest.parse(_d(year.months[0]))
    assert year.store.remove_link(year.layout.tag_index_link(R, T, first))  # no tag ever held it
    (year.layout.revisions_dir(R) / "not-a-digest").mkdir()  # not a revision: passed over
    (year.layout.repositories / "empty" / "_manifests").mkdir(parents=True)  # nothing linked
    policy = RetentionParams(keep=2, also_unrecorded=True)
    plan = plan_prune(year.store, policy, [R])
    img = next(i for i in plan.images if i.digest == str(first))
    assert img.tag is None and not img.written_by_regpatch and f"would prune {first} of {REPO}\n" in plan.render()
    with caplog.at_level(logging.INFO, logger="regpatch.engine"):
        apply_prune(year.store, plan, policy)
    assert str(first) not in year.revisions() and f"{REPO}@{first} was never tagged" in caplog.text
    assert str(first) not in {e.old for e in year.pruned_lines()}
    assert plan_prune(year.store, policy).kept["empty"] == []
