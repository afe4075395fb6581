"""regpatch gc's pieces that need no registry: the maintenance gate against the repository locks,
the reading of garbage-collect's output (a helper's output is untrusted input), regpatch's own
mark, the check of the registry's list against it, the maintenance window's steps and journal."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import pytest
from support.util import tree_hash

from regpatch import engine
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout
from regpatch.digest import Digest
from regpatch.engine.gc import (
    JOURNAL_LIMIT,
    Collector,
    GcJournal,
    GcReport,
    _eligible,
    _refuse_kept,
    blob_bytes,
    collector_for,
    kept_mark,
)
from regpatch.errors import GcRefused, LockTimeout, RestartError, UsageError
from regpatch.fleet.maintenance import MaintenanceResult, failed, maintain_registry, render_markdown
from regpatch.params import ChangeParams, MaintenanceParams, RegistryParams, RetentionParams
from regpatch.platform.children import Output
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget
from regpatch.storage.layout import Layout
from regpatch.storage.lock import maintenance_window, repository_lock
from regpatch.storage.store import RegistryStore

R = Repository.parse("servercore")
CHANGE = ChangeParams(requested_by="ana@example.org", reason="CHG-7 maintenance window")
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _out(*lines: str) -> Output:
    data = "\n".join(lines).encode()
    return Output(data, len(data))


def test_no_repository_lock_is_taken_while_a_maintenance_window_is_open(tmp_path):
    layout = Layout(tmp_path)
    with maintenance_window(layout, timeout=1):
        with pytest.raises(LockTimeout, match="maintenance window"):
            with repository_lock(layout, R, timeout=0.3):
                pass
    with repository_lock(layout, R, timeout=1):  # the window closed: the gate is open again
        pass


def test_a_maintenance_window_waits_for_the_run_that_holds_a_repository(tmp_path):
    layout = Layout(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def patch() -> None:
        with repository_lock(layout, R, timeout=1):
            holding.set()
            release.wait(5)

    t = threading.Thread(target=patch)
    t.start()
    holding.wait(5)
    try:
        with pytest.raises(LockTimeout, match="before the maintenance window"):
            with maintenance_window(layout, timeout=0.3):
                pass
    finally:
        release.set()
        t.join()
    with maintenance_window(layout, timeout=1):
        pass


def test_garbage_collects_list_is_read_exactly_and_checked_against_its_own_count():
    summary = "3 blobs marked, 2 blobs and 0 manifests eligible for deletion"
    ok = _out("servercore", "servercore: marking manifest " + D1, summary,
              "blob eligible for deletion: " + D1, "blob eligible for deletion: " + D2)
    assert [str(d) for d in _eligible(ok, "gc")] == [D1, D2]
    with pytest.raises(GcRefused, match="said 2 blob.* listed 1"):
        _eligible(_out(summary, "blob eligible for deletion: " + D1), "gc")
    with pytest.raises(GcRefused, match="not a digest"):
        _eligible(_out(summary.replace("2 blobs and", "1 blobs and"), "blob eligible for deletion: ../../x"), "gc")
    with pytest.raises(GcRefused, match="no '... eligible for deletion' summary"):
        _eligible(_out("blob eligible for deletion: " + D1), "gc")
    with pytest.raises(GcRefused, match="1 manifest"):  # only --delete-untagged deletes manifests
        _eligible(_out("1 blobs marked, 0 blobs and 1 manifests eligible for deletion"), "gc")


# --------------------------------------------------------------------------- on a real storage
# A storage written by the engine in a tmp folder: servercore:multi, a two-platform list, and
# servercore:ltsc2019 patched twice (its first image untagged, still linked). The registry's
# garbage-collect and its restart are the one external part of a gc: here they are stand-ins
# that do to the files what the real ones do (delete the blobs they list; stop, start).


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("gc")
    kids = []
    for n, osv in enumerate(("10.0.17763.1", "10.0.20348.1")):
        layer = make_layer(work / "list", f"layer-{n}.tar.gz", seed=40 + n, size=2048)
        kids.append(make_image(work / "list", [layer], os="windows", os_version=osv, seed=40 + n, name=f"child-{n}"))
    index = make_index(work / "list", kids)
    images = []
    for n in (1, 2):
        layer = make_layer(work / f"img-{n}", "layer.tar.gz", seed=60 + n, size=3072)
        images.append(make_image(work / f"img-{n}", [layer], seed=60 + n))
    root = work / "storage"
    (root / "docker/registry/v2").mkdir(parents=True)
    for tag, sample, name in (("multi", index, "list"), ("ltsc2019", images[0], "u1"), ("ltsc2019", images[1], "u2")):
        engine.patch(engine.PatchRequest(bundle=str(write_oci_layout(work / f"{name}-layout", {tag: sample})),
                                         repository=R, tag=Tag.parse(tag),
                                         target=RegistryTarget.resolve(storage=str(root))))
    return root, index, images


class Gc:
    def __init__(self, root: Path, index, images):
        self.root, self.index, (self.u1, self.u2) = root, index, images
        self.store = RegistryStore(root)
        self.layout = self.store.layout

    def blobs(self, sample) -> dict[Digest, int]:
        """An image's own blobs: manifest, config, layers."""
        return {sample.manifest_digest: len(sample.manifest_bytes), **{b.digest: b.size for b in sample.blobs}}

    def unlink(self, sample) -> None:
        """What a prune leaves: the image without its revision link."""
        assert self.store.remove_link(self.layout.revision_link(R, sample.manifest_digest))


@pytest.fixture
def gc(built, tmp_path, monkeypatch) -> Gc:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    root, index, images = built
    shutil.copytree(root, tmp_path / "storage", symlinks=True)
    return Gc(tmp_path / "storage", index, images)


URL = RegistryTarget.resolve(storage="x", url="http://127.0.0.1:1").url


def _target(gc: Gc, url: str | None = URL) -> RegistryTarget:
    return RegistryTarget.resolve(storage=str(gc.root), url=url)


def test_the_mark_holds_an_index_childs_layers_even_when_the_child_has_no_revision_link(gc):
    child = gc.index.children[0]
    gc.unlink(child)  # the cause of distribution issue 3004: the registry's own mark misses its layers
    mark, kept = kept_mark(gc.store)
    assert set(gc.blobs(child)) <= mark and set(gc.blobs(gc.index.children[1])) <= mark
    assert set(gc.blobs(gc.u1)) | set(gc.blobs(gc.u2)) | {gc.index.manifest_digest} <= mark
    refs = [(k.repository, k.reference, k.digest) for k in kept]
    assert (R.name, "ltsc2019", str(gc.u2.manifest_digest)) in refs
    assert (R.name, "multi", str(gc.index.manifest_digest)) in refs
    assert (R.name, str(gc.u1.manifest_digest), str(gc.u1.manifest_digest)) in refs  # linked, untagged
    assert str(child.manifest_digest) not in [k.reference for k in kept]
    assert all(k.complete for k in kept) and len(mark) == len(
        {d for s in (gc.u1, gc.u2, *gc.index.children) for d in gc.blobs(s)} | {gc.index.manifest_digest})

    gc.layout.blob_data(gc.u1.layers[0].digest).unlink()  # a blob it needs is gone already
    _, kept = kept_mark(gc.store)
    incomplete = [k for k in kept if not k.complete]
    assert [k.digest for k in incomplete] == [str(gc.u1.manifest_digest)]
    text = GcReport(storage=str(gc.root), kept_images=kept).render()
    assert f"warning: {R.name}@{gc.u1.manifest_digest} was already incomplete before the collection" in text
    assert "nothing was stopped or deleted" in text


def test_a_kept_blob_on_the_list_is_refused_naming_the_image_that_needs_it(gc):
    child = gc.index.children[0]
    gc.unlink(child)
    mark, kept = kept_mark(gc.store)
    with pytest.raises(GcRefused, match=rf"1 blob\(s\) a kept image needs \({child.layers[0].digest}, needed by "
                                        rf"{R.name}:multi\) with the registry stopped: an index's child"):
        _refuse_kept([child.layers[0].digest], mark, kept, gc.store, " with the registry stopped")
    with pytest.raises(GcRefused, match=rf"2 blob\(s\) .*needed by {R.name}@{gc.u1.manifest_digest}\): "):
        _refuse_kept([gc.u1.config.digest, gc.u1.layers[0].digest], mark, kept, gc.store, "")
    _refuse_kept([Digest.parse(D1), Digest.parse(D2)], mark, kept, gc.store, "")  # not kept: nothing to say


def test_the_gc_journal_is_read_only_when_it_is_regpatchs(gc):
    path = gc.layout.gc_journal
    assert GcJournal.load(gc.store) is None
    journal = GcJournal(storage=str(gc.root))
    journal.mark(gc.store, "stopped")
    loaded = GcJournal.load(gc.store)
    assert (loaded.storage, loaded.step, loaded.status, loaded.started) == (str(gc.root), "stopped", "running",
                                                                             journal.started)
    for junk in (b"{not json", b"[1, 2]", json.dumps({"storage": "x", "bogus": 1}).encode(), b"\xff\xfe",
                 json.dumps({"storage": "x", "step": "s" * (JOURNAL_LIMIT + 10)}).encode()):
        path.write_bytes(junk)
        assert GcJournal.load(gc.store) is None, junk[:40]


def test_the_collector_is_found_or_refused_and_its_config_names_the_storage(gc, tmp_path):
    fresh = tmp_path / "fresh"
    (fresh / "docker/registry/v2").mkdir(parents=True)
    store = RegistryStore(fresh)
    with pytest.raises(UsageError, match=r"'.*no-such-registry' was not found .*give --registry-binary PATH"):
        collector_for(store, RegistryTarget.resolve(storage=str(fresh)), str(tmp_path / "no-such-registry"))
    assert not (fresh / ".regpatch").exists()  # refused before any write

    binary = sys.executable  # any program on disk stands for the registry's binary: it is not run here
    collector = collector_for(store, RegistryTarget.resolve(storage=str(fresh)), binary)
    assert collector == Collector(shutil.which(binary), store.layout.gc_config)
    text = store.layout.gc_config.read_text()
    assert f"rootdirectory: {json.dumps(str(fresh.resolve()))}" in text and "version: 0.1" in text
    assert (store.layout.state / RegistryStore.STATE_MARK).is_file()

    config = tmp_path / "config.yml"
    config.write_text("the operator's: never read or written by collector_for\n")
    own = collector_for(gc.store, RegistryTarget(storage=str(gc.root), config=str(config)), binary)
    assert own == Collector(shutil.which(binary), config) and not gc.layout.gc_config.exists()


def test_a_collector_that_cannot_start_says_so(tmp_path):
    missing = str(tmp_path / "registry")
    with pytest.raises(RestartError, match=f"'{missing} garbage-collect --dry-run .*' could not start"):
        Collector(missing, tmp_path / "config.yml").run(dry_run=True)


def test_blob_bytes_is_the_size_of_every_stored_blob(gc):
    stored = {}
    for s in (gc.u1, gc.u2, *gc.index.children):
        stored.update(gc.blobs(s))
    stored[gc.index.manifest_digest] = len(gc.index.manifest_bytes)
    assert blob_bytes(gc.store) == sum(stored.values())
    gc.layout.blob_data(gc.u1.layers[0].digest).unlink()
    assert blob_bytes(gc.store) == sum(stored.values()) - gc.u1.layers[0].size


def test_truncated_output_without_a_summary_says_so():
    with pytest.raises(GcRefused, match="longer than regpatch keeps"):
        _eligible(Output(b"blob eligible for deletion: " + D1.encode(), 1 << 30), "gc")


def test_maintenance_refuses_a_missing_binary_before_any_write(gc, tmp_path, capsys):
    before = tree_hash(gc.root)
    missing = str(tmp_path / "no-registry")
    with pytest.raises(UsageError, match="--registry-binary"):
        maintain_registry(RegistryParams(storage=str(gc.root)), RetentionParams(),
                          MaintenanceParams(registry_binary=missing), CHANGE, apply=True)
    code = regpatch_main(["gc", "--storage", str(gc.root), "--registry-binary", missing, "--apply"])
    err = capsys.readouterr().err
    assert code == 2 and f"the registry's binary '{missing}' was not found" in err
    assert tree_hash(gc.root) == before


def test_the_maintenance_table_says_what_each_registry_did():
    done = MaintenanceResult("site-a", True, pruned=[f"{R.name}@{D1}"], freed_bytes=3 << 20, proven=["a", "b"],
                             downtime_seconds=2.345)
    dry = MaintenanceResult("site-b", False, freed_bytes=1024)
    bad = failed("site-c", GcRefused(f"would delete {D2}"))
    assert done.ok and not bad.ok and bad.error == f"would delete {D2}"
    lines = render_markdown([done, dry, bad], "Maintenance").splitlines()
    assert lines[0] == "# Maintenance"
    assert lines[4] == "| site-a | done | 1 | 3.0 MiB | 2.3 s | 2 |"
    assert lines[5] == "| site-b | dry run | 0 | 1.0 KiB (would) | - | 0 |"
    assert lines[6] == "| site-c | **failed** | 0 | 0 B (would) | - | 0 |"
    assert lines[8] == f"- site-c: would delete {D2}" and lines[10] == f"- site-a: unlinked {R.name}@{D1}"
    many = MaintenanceResult("x", True, pruned=[f"r@{D1}"] * 21)
    assert render_markdown([many], "t").rstrip().endswith(" ...")
    assert failed("y", KeyboardInterrupt()).error == "KeyboardInterrupt"


def test_the_mark_passes_over_what_is_not_a_linked_manifest_and_flags_a_missing_one(gc):
    ghost = Digest.parse(D1)  # linked, its manifest blob gone (a half-deleted storage)
    gc.store.write_link(gc.layout.revision_link(R, ghost), ghost)
    (gc.layout.revisions_dir(R) / "not-a-digest").mkdir()
    (gc.layout.repositories / "empty" / "_manifests").mkdir(parents=True)  # a repository with nothing linked
    mark, kept = kept_mark(gc.store)
    assert ghost in mark and [k.digest for k in kept if not k.complete] == [D1]
    assert {k.repository for k in kept} == {R.name}


def test_regpatch_gc_refuses_a_restart_that_cannot_stop_the_registry(gc, capsys):
    docker = tree_hash(gc.root / "docker")
    code = regpatch_main(["gc", "--storage", str(gc.root), "--registry-url", URL, "--registry-binary",
                          sys.executable, "--apply"])
    err = capsys.readouterr().err
    assert code == 2 and "'no restart' cannot stop it on its own: give --restart process:" in err
    assert tree_hash(gc.root / "docker") == docker
    with pytest.raises(UsageError, match="cannot stop it on its own"):
        maintain_registry(RegistryParams(storage=str(gc.root), registry_url=URL), RetentionParams(),
                          MaintenanceParams(registry_binary=sys.executable), CHANGE, apply=True)
    assert tree_hash(gc.root / "docker") == docker  # the policy kept every image: nothing was unlinked


def test_a_gc_is_refused_before_any_write_without_a_stoppable_restart_or_a_url(gc):
    from support.util import tree_hash

    from regpatch.engine.gc import Collector, run_gc
    from regpatch.registry.restart import NoRestart, ProcessRestart

    before = tree_hash(gc.root)
    collector = Collector(sys.executable, gc.root / "config.yml")  # never run: the refusals come first
    with pytest.raises(UsageError, match="'no restart' cannot stop it on its own"):
        run_gc(gc.store, _target(gc), NoRestart(), collector, lock_timeout=1)
    with pytest.raises(UsageError, match="proves every kept image by pulling it afterwards"):
        run_gc(gc.store, _target(gc, url=None), ProcessRestart(gc.root / "registry.pid", gc.root / "config.yml"),
               collector, lock_timeout=1)
    assert tree_hash(gc.root) == before
