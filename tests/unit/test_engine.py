"""The engine, on real storages in tmp folders: the whole patch and rollback in plain Python."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from conftest import REPO, TAG, tree_hash

from regpatch import engine, interrupt
from regpatch.digest import Digest
from regpatch.engine import patch_run
from regpatch.errors import (
    BlobMissing,
    DigestMismatch,
    Interrupted,
    LockTimeout,
    ManifestError,
    StorageError,
    TagMoved,
    UsageError,
)
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget
from regpatch.storage.history import read_history
from regpatch.storage.lock import repository_lock


class Recorder(engine.LogObserver):
    """An observer that records the steps and can act in the middle of one."""

    def __init__(self, during=None):
        super().__init__(progress=lambda label, total: (lambda n: None))
        self.steps: list[str] = []
        self.during = during or {}

    def run(self, step, fn):
        self.steps.append(step)
        if step in self.during:
            self.during[step]()
        return fn()


def test_patch_writes_blobs_links_then_the_tag_and_records_it(site):
    obs = Recorder()
    result = engine.patch(site.request(), obs)
    assert obs.steps == list(engine.PATCH_STEPS)
    assert result.status == "complete" and result.changed and result.tag_moved
    assert (result.old, result.new) == (str(site.old), str(site.new))
    assert site.current() == str(site.new).encode()
    new = site.scenario["new"]
    for blob in new.blobs:
        data = site.layout.blob_data(blob.digest)
        assert data.read_bytes() == blob.path.read_bytes()
        assert site.layout.layer_link(Repository(REPO), blob.digest).read_bytes() == str(blob.digest).encode()
    assert site.layout.blob_data(site.new).read_bytes() == new.manifest_bytes  # never re-serialised
    # the old image stays whole: a patch never deletes
    assert site.layout.revision_link(Repository(REPO), site.old).read_bytes() == str(site.old).encode()
    history = read_history(site.layout, REPO, TAG)
    assert [(h.action, h.old, h.new) for h in history][-1] == ("patch", str(site.old), str(site.new))
    journal = json.loads(site.layout.journal(Repository(REPO), Tag(TAG)).read_text())
    assert journal["status"] == "complete" and journal["verified_url"] is None  # no URL: no pull
    report = (site.root / ".regpatch/reports")
    assert any(f"Patched: `{REPO}:{TAG}`" in p.read_text() for p in report.glob("*.md"))
    assert not list(site.v2.rglob(".regpatch-tmp-*"))


def test_rerun_changes_nothing_and_says_so(site):
    engine.patch(site.request())
    before = site.docker_hash()
    result = engine.patch(site.request())
    assert not result.changed and not result.blobs_copied and "nothing to do" in result.summary_line()
    assert site.docker_hash() == before


def test_storage_recreated_at_the_same_path_is_patched_again(site, tmp_path):
    """No marker, journal or earlier result stands in for the storage: a storage restored
    from a backup (the old image only) is patched in full by the same command."""
    engine.patch(site.request())
    shutil.rmtree(site.root / "docker")
    (site.root / "docker/registry/v2").mkdir(parents=True)
    engine.patch(site.request(site.scenario["old_layout"]))
    result = engine.patch(site.request())
    assert result.changed and len(result.blobs_copied) == 3
    assert site.current() == str(site.new).encode()
    for blob in site.scenario["new"].blobs:
        assert site.layout.blob_data(blob.digest).read_bytes() == blob.path.read_bytes()


def test_blobs_removed_after_a_rollback_are_written_again(site):
    """A rollback then a garbage collection (which removes the untagged new image's blobs):
    the same patch again copies them, whatever the journal says."""
    engine.patch(site.request())
    engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), RegistryTarget.resolve(storage=str(site.root))))
    assert site.current() == str(site.old).encode()
    for blob in site.scenario["new"].layers:
        shutil.rmtree(site.layout.blob_dir(blob.digest))
    result = engine.patch(site.request())
    assert sorted(d for d, _ in result.blobs_copied) == sorted(str(b.digest) for b in site.scenario["new"].layers)
    assert site.current() == str(site.new).encode()


def test_a_tag_moved_by_another_writer_is_never_overwritten(site):
    """Someone pushes the same tag while the patch verifies: the patch stops with both
    digests named and leaves the tag as the other writer set it."""
    other = Digest.of_bytes(b"someone else's manifest")
    current = site.layout.tag_current_link(Repository(REPO), Tag(TAG))
    obs = Recorder(during={"publish-tag": lambda: current.write_text(str(other))})
    with pytest.raises(TagMoved) as e:
        engine.patch(site.request(), obs)
    assert str(site.old) in str(e.value) and str(other) in str(e.value)
    assert current.read_text() == str(other)
    assert e.value.result.status == "failed" and not e.value.result.tag_moved
    assert read_history(site.layout, REPO, TAG)[-1].new == str(site.old)  # no patch recorded


def test_an_incomplete_image_is_refused_before_the_tag_moves(site):
    new_layer = site.scenario["new"].layers[0].digest
    link = site.layout.layer_link(Repository(REPO), new_layer)
    obs = Recorder(during={"verify-pull": lambda: link.unlink()})
    with pytest.raises(StorageError, match="not linked"):
        engine.patch(site.request(), obs)
    assert site.current() == str(site.old).encode()
    # the same command resumes and finishes
    assert engine.patch(site.request()).tag_moved


def test_interrupt_stops_at_a_chunk_boundary_and_the_rerun_resumes(site, tmp_path):
    from regpatch.demo.images import make_image, make_layer, write_staged_bundle

    big = make_layer(tmp_path / "big", "base.tar.gz", seed=7, size=24 << 20, compresslevel=0)
    img = make_image(tmp_path / "big", [big], os="windows")
    bundle = write_staged_bundle(tmp_path / "bundle", img)
    seen = {"n": 0}

    def progress(label, total):
        def advance(n):
            seen["n"] += n
            if seen["n"] > 4 << 20:
                interrupt.request_stop(signal.SIGTERM)
        return advance

    obs = engine.LogObserver(progress=progress)
    before = site.docker_hash()
    with pytest.raises(Interrupted) as e:
        engine.patch(site.request(bundle), obs)
    assert e.value.exit_code == 143
    assert site.docker_hash() == before  # staging only: nothing under docker/ yet
    assert not list((site.root / ".regpatch/staging").glob(".regpatch-tmp-*"))
    journal = json.loads(site.layout.journal(Repository(REPO), Tag(TAG)).read_text())
    assert journal["status"] == "interrupted"
    interrupt.reset()
    result = engine.patch(site.request(bundle))
    assert result.tag_moved and site.current() == str(img.manifest_digest).encode()


def test_dry_run_reads_only(site):
    before, state = site.docker_hash(), tree_hash(site.root / ".regpatch")
    result = engine.patch(site.request(dry_run=True))
    assert result.dry_run and result.status == "dry-run" and len(result.blobs_copied) == 3
    assert "copy" in result.plan_text
    assert site.docker_hash() == before and tree_hash(site.root / ".regpatch") == state


@pytest.mark.parametrize("breaker, error", [
    ("corrupt_layer", DigestMismatch),
    ("missing_layer", BlobMissing),
    ("bad_json", ManifestError),
])
def test_bad_bundles_leave_the_storage_byte_for_byte_unchanged(site, tmp_path, breaker, error):
    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["staged"], bundle)
    if breaker == "corrupt_layer":
        data = bytearray((bundle / "delta.tar.gz").read_bytes())
        data[100] ^= 0xFF
        (bundle / "delta.tar.gz").write_bytes(bytes(data))
    elif breaker == "missing_layer":
        (bundle / "delta.tar.gz").unlink()
        (bundle / "delta.tar.gz.digest").unlink()
    else:
        (bundle / "delta.tar.gz.manifest.json").write_text('{"schemaVersion": 2, "layers": [')
    before = site.docker_hash()
    with pytest.raises(error):
        engine.patch(site.request(bundle))
    assert site.docker_hash() == before
    assert site.current() == str(site.old).encode()


def test_the_repository_lock_lives_with_the_storage(site, tmp_path):
    """Two runs naming different state folders still exclude each other."""
    with repository_lock(site.layout, Repository(REPO), timeout=1):
        with pytest.raises(LockTimeout, match="being patched by another run"):
            engine.patch(site.request(state_dir=str(tmp_path / "elsewhere"), lock_timeout=0.2))
    assert (site.root / ".regpatch/locks").is_dir()
    assert site.current() == str(site.old).encode()


@pytest.mark.parametrize("kw, message", [
    (dict(lock_timeout=float("nan")), "lock timeout"),
    (dict(lock_timeout=-1), "lock timeout"),
    (dict(verify_command="skopeo inspect docker://x"), "must contain {ref}"),
    (dict(verify_command="skopeo inspect docker://{ref}"), "needs the registry's URL"),
    (dict(restart="reboot"), "invalid restart spec"),
    (dict(restart="process:pidfile=/run/r.pid,config=c.yml,timeout=nan"), "timeout"),
])
def test_bad_arguments_fail_before_anything_is_read(site, kw, message):
    before = tree_hash(site.root)
    with pytest.raises(UsageError, match=message):
        engine.patch(site.request(**kw))
    assert tree_hash(site.root) == before


def test_registry_url_with_credentials_is_refused_without_echoing_them(site):
    target = RegistryTarget.resolve(storage=str(site.root), url="http://bob:s3cret@127.0.0.1:1")
    with pytest.raises(UsageError) as e:
        engine.patch(site.request(target=target))
    assert "s3cret" not in str(e.value)


def test_rollback_goes_back_and_refuses_unknown_images(site):
    engine.patch(site.request())
    target = RegistryTarget.resolve(storage=str(site.root))
    result = engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), target))
    assert (result.old, result.new, result.changed) == (str(site.new), str(site.old), True)
    assert site.current() == str(site.old).encode()
    assert [h.action for h in read_history(site.layout, REPO, TAG)][-2:] == ["patch", "rollback"]
    unknown = Digest.of_bytes(b"nothing")
    with pytest.raises(StorageError, match="no revision link"):
        engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), target, to=unknown))
    # a rollback with nothing recorded before the current digest names --to
    with pytest.raises(UsageError, match="--to"):
        engine.rollback(engine.RollbackRequest(Repository(REPO), Tag("other"), target))
    # a malformed current link (the registry answers an error for the tag) is named as such
    site.layout.tag_current_link(Repository(REPO), Tag(TAG)).write_bytes(str(site.old).encode() + b"\r\n")
    with pytest.raises(UsageError, match="current link of servercore:ltsc2019 is malformed.*--to"):
        engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), target))


def test_a_killed_run_that_moved_the_tag_is_recorded_by_the_rerun(site, monkeypatch):
    """The tag moved, then the process died before its history line: the re-run records
    the change once (the journal remembers what the tag held before)."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill between the tag and the history line

    with monkeypatch.context() as m:
        m.setattr(patch_run, "record_history", killed)
        with pytest.raises(KeyboardInterrupt):
            engine.patch(site.request())
    assert site.current() == str(site.new).encode()
    engine.patch(site.request())
    entries = [(h.action, h.old, h.new) for h in read_history(site.layout, REPO, TAG)]
    assert entries.count(("patch", str(site.old), str(site.new))) == 1


def test_index_bundle_writes_every_child_first(site, tmp_path):
    from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout

    imgs = []
    for i, osv in enumerate(("10.0.17763.3", "10.0.20348.3")):
        layer = make_layer(tmp_path / f"i{i}", "l.tar.gz", seed=300 + i, size=32 << 10)
        imgs.append(make_image(tmp_path / f"i{i}", [layer], os="windows", os_version=osv, seed=300 + i))
    index = make_index(tmp_path / "idx", imgs)
    layout = write_oci_layout(tmp_path / "layout", {"multi": index})
    result = engine.patch(site.request(layout))
    assert result.tag_moved and site.current() == str(index.manifest_digest).encode()
    for img in imgs:
        assert site.layout.revision_link(Repository(REPO), img.manifest_digest).is_file()


def test_two_runs_installing_the_same_blob_never_trip_over_each_other(site, tmp_path):
    """The staging folder is shared by every run on a storage (patches of two repositories
    at once): when one installs a blob first, the other finds it in place and verifies it."""
    from regpatch.storage.store import RegistryStore

    blob = site.scenario["new"].layers[0]
    first, second = RegistryStore(site.root), RegistryStore(site.root)
    staged = first.stage_blob(blob.digest, blob.size, lambda: open(blob.path, "rb"), what="base")
    assert second.staged_path(blob.digest) == staged
    assert first.install_staged(blob.digest, staged, size=blob.size) is True
    assert second.install_staged(blob.digest, staged, size=blob.size) is False
    assert site.layout.blob_data(blob.digest).read_bytes() == blob.path.read_bytes()


def test_four_repositories_patched_at_once_all_succeed(site, tmp_path):
    import threading

    results, errors = [], []

    def one(n):
        try:
            results.append(engine.patch(site.request(repository=f"repo{n}")))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for n in range(4):
        assert site.current_of(f"repo{n}") == str(site.new).encode()


def test_a_storage_without_a_registry_tree_needs_init(tmp_path, scenario_files, site):
    from regpatch.errors import StorageNotFound

    typo = tmp_path / "var-lib-registy"
    typo.mkdir()
    with pytest.raises(StorageNotFound, match="pass --init"):
        engine.patch(site.request(target=RegistryTarget.resolve(storage=str(typo))))
    assert list(typo.iterdir()) == []  # not even the state folder
    result = engine.patch(site.request(target=RegistryTarget.resolve(storage=str(typo)), init=True))
    assert result.tag_moved and (typo / "docker/registry/v2").is_dir()


def test_a_repair_in_place_needs_a_restart_when_the_registry_caches_sizes(site):
    """A blob held with the wrong size is replaced; a registry with a blob descriptor cache
    would serve the old size: with a URL and no restart strategy, refused before any write."""
    blob = site.scenario["new"].layers[0]
    data = site.layout.blob_data(blob.digest)
    data.parent.mkdir(parents=True)
    data.write_bytes(b"truncated")
    before = site.docker_hash()
    target = RegistryTarget.resolve(storage=str(site.root), url="http://127.0.0.1:9")
    with pytest.raises(UsageError, match="give --restart"):
        engine.patch(site.request(target=target))
    assert site.docker_hash() == before
    # without a URL nothing can be served stale by this run: repaired, with a warning
    result = engine.patch(site.request())
    assert any("replaced" in w for w in result.warnings)
    assert data.read_bytes() == blob.path.read_bytes()


def test_consume_renames_layer_files_into_the_storage_and_notes_it(site, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["staged"], bundle)
    layers = {p.name: p.read_bytes() for p in bundle.glob("*.tar.gz")}
    result = engine.patch(site.request(bundle, consume=True))
    assert result.tag_moved
    assert not list(bundle.glob("*.tar.gz"))  # taken, not copied
    assert (bundle / "delta.tar.gz.manifest.json").is_file() and (bundle / "delta.tar.gz.config.json").is_file()
    notes = [json.loads(l) for l in (bundle / "regpatch-consumed.jsonl").read_text().splitlines()]
    assert sorted(n["file"] for n in notes) == sorted(layers)
    for blob in site.scenario["new"].layers:
        data = site.layout.blob_data(blob.digest)
        assert data.read_bytes() == blob.path.read_bytes() and oct(data.stat().st_mode & 0o777) == "0o644"
    # the consumed bundle still describes the patch: the same command again changes nothing
    before = site.docker_hash()
    assert not engine.patch(site.request(bundle, consume=True)).changed
    assert site.docker_hash() == before


def test_consume_gives_a_corrupt_file_back_and_writes_nothing(site, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["staged"], bundle)
    data = bytearray((bundle / "base.tar.gz").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "base.tar.gz").write_bytes(bytes(data))
    before = site.docker_hash()
    with pytest.raises(DigestMismatch):
        engine.patch(site.request(bundle, consume=True))
    assert (bundle / "base.tar.gz").read_bytes() == bytes(data)  # renamed back where it was
    assert site.docker_hash() == before


@pytest.mark.posix_only  # a tmpfs mount
def test_consume_refuses_a_bundle_on_another_filesystem(site, tmp_path):
    import subprocess

    mnt = tmp_path / "other-fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.fail("cannot mount a tmpfs (the tests run as root)")
    try:
        bundle = mnt / "bundle"
        shutil.copytree(site.scenario["staged"], bundle)
        with pytest.raises(UsageError, match="not on the filesystem of the storage"):
            engine.patch(site.request(bundle, consume=True))
        assert (bundle / "base.tar.gz").is_file()
        assert engine.patch(site.request(bundle)).tag_moved  # without --consume: copied
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_state_folder_full_of_other_files_is_refused(site, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0\n")
    with pytest.raises(UsageError, match="holds other files .*passwd"):
        engine.patch(site.request(state_dir=str(etc)))
    assert sorted(p.name for p in etc.iterdir()) == ["passwd"]
    fresh = tmp_path / "state"
    engine.patch(site.request(state_dir=str(fresh)))
    assert (fresh / ".regpatch-state").is_file()
    engine.patch(site.request(state_dir=str(fresh)))  # its own folder: used again


def test_a_new_tag_is_listed_only_once_it_points_at_a_proven_image(site):
    """The tag's index link is written with current/link, after verification: a failed
    patch of a new tag leaves no empty tag folder for the registry to list."""
    new_layer = site.scenario["new"].layers[0].digest
    link = site.layout.layer_link(Repository(REPO), new_layer)
    obs = Recorder(during={"verify-pull": lambda: link.unlink()})
    with pytest.raises(StorageError):
        engine.patch(site.request(tag="brand-new"), obs)
    assert not site.layout.tag_dir(Repository(REPO), Tag("brand-new")).exists()
    engine.patch(site.request(tag="brand-new"))
    assert site.current_of(REPO, "brand-new") == str(site.new).encode()


def test_another_repositorys_blob_is_linked_only_when_the_bundle_proves_it(site, tmp_path):
    """A manifest that names a blob the storage holds for another repository: linked when the
    bundle carries the very bytes, refused when it does not (unless the operator allows it)."""
    from regpatch.errors import CrossRepositoryBlob

    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["old_layout"], bundle)
    old_layers = site.scenario["old"].layers
    # the layout without the layers' bytes: the storage holds them, for servercore only
    for layer in old_layers:
        (bundle / "blobs/sha256" / layer.digest.hex).unlink()
    before = site.docker_hash()
    with pytest.raises(CrossRepositoryBlob, match="not linked in public/app"):
        engine.patch(site.request(bundle, repository="public/app", tag="latest"))
    assert site.docker_hash() == before
    # a bundle that carries them proves it may link them
    result = engine.patch(site.request(site.scenario["old_layout"], repository="public/app", tag="latest"))
    assert result.tag_moved and "link (bundle proves)" in result.plan_text
    # the operator may allow it explicitly
    result = engine.patch(site.request(bundle, repository="other/app", tag="x", allow_cross_repository=True))
    assert result.tag_moved


def test_a_patch_back_to_an_earlier_image_says_so_in_the_plan(site):
    """Re-applying an image the tag was moved off is allowed and said plainly: after a
    rollback, "applies the rolled-back image again"; after a patch, "goes back to an
    older image"."""
    engine.patch(site.request())  # old -> new
    target = RegistryTarget.resolve(storage=str(site.root))
    engine.rollback(engine.RollbackRequest(Repository(REPO), Tag(TAG), target))  # new -> old
    again = engine.patch(site.request())
    assert any("was rolled back from" in w and "applies the rolled-back image again" in w
               for w in again.warnings), again.warnings
    back = engine.patch(site.request(site.scenario["old_layout"]))  # new -> old by a bundle
    assert any("goes back to an older image" in w for w in back.warnings), back.warnings
