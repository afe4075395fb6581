"""The storage as operators keep it: symlinked folders at the anchors are followed,
symlinks anywhere else are refused, --state-dir stays out of docker/, and OS errors
become errors of the hierarchy with their exit code and what to do."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from hardening_helpers import REPO, TAG, empty_storage, plan, simple_bundle, write_blob

LAYER = b"layer bytes"  # simple_bundle's layer
from support.util import tree_hash

from regpatch.digest import Digest
from regpatch.errors import NoSpace, RegpatchError, StorageError, UnsafePath, UsageError, os_error
from regpatch.storage.store import RegistryStore

V2 = ("docker", "registry", "v2")


def _move_to(root: Path, rel: str, elsewhere: Path) -> Path:
    """Make ``root/rel`` a symlink to ``elsewhere`` (created), as an operator growing a disk."""
    link = root.joinpath(rel)
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    if link.exists():
        os.rename(link, elsewhere)  # what was there moves to the other disk
    else:
        elsewhere.mkdir()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


def _apply(store: RegistryStore, p) -> None:
    """Write what a plan says (blobs by their bytes, links), with the store's own writers."""
    for m in p.manifests:
        store.write_manifest_blob(m.manifest.digest, m.manifest.raw)
    for b in p.to_copy:
        staged = store.stage_blob(b.digest, b.size, lambda b=b: p.source.open(b.source.name),
                                  what=b.source.name)
        store.install_staged(b.digest, staged, size=b.size)
    for link in p.links:
        store.write_link(link.path, link.digest)


@pytest.mark.parametrize("anchor", ["docker", "docker/registry", "docker/registry/v2",
                                    "docker/registry/v2/blobs", "docker/registry/v2/blobs/sha256",
                                    "docker/registry/v2/repositories"])
def test_operator_symlinks_at_the_anchors_are_followed(tmp_path, anchor, caplog):
    root = empty_storage(tmp_path / "root")
    other = _move_to(root, anchor, tmp_path / "disk2" / "moved")
    store = RegistryStore(root)
    with caplog.at_level(logging.INFO, logger="regpatch.store"):
        p = plan(simple_bundle(tmp_path / "bundle"), store)
        _apply(store, p)
    assert store.read_link(store.layout.tag_current_link(REPO, TAG)) == p.new
    assert store.blob_size(p.new) == len(p.top.raw)
    assert any(other.rglob("*")), "nothing landed behind the operator's symlink"
    assert os.path.islink(root / anchor)
    assert f"is a symlink to {other}" in caplog.text
    assert caplog.text.count(f"is a symlink to {other}") == 1  # logged once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        for name in dirnames + filenames:  # nothing regpatch created is a symlink
            path = Path(dirpath, name)
            assert not path.is_symlink() or path == root / anchor


def test_a_symlinked_root_and_state_folder_are_followed(tmp_path):
    real = empty_storage(tmp_path / "real")
    (tmp_path / "root").symlink_to(real)
    state = tmp_path / "state-real"
    state.mkdir()
    (tmp_path / "state").symlink_to(state)
    store = RegistryStore(tmp_path / "root", state_dir=tmp_path / "state")
    _apply(store, plan(simple_bundle(tmp_path / "bundle"), store))
    assert (state / "verified").is_dir()


@pytest.mark.parametrize("planted", [
    "docker/registry/v2/repositories/app",
    "docker/registry/v2/repositories/app/_layers",
    "docker/registry/v2/repositories/app/_layers/sha256",
    "docker/registry/v2/repositories/app/_manifests/tags/v1",
    "docker/registry/v2/blobs/sha256/{hex2}",
    "docker/registry/v2/blobs/sha256/{hex2}/{hex}",
    ".regpatch/staging",
])
def test_symlinks_below_the_anchors_are_refused_before_anything_is_read_or_written(tmp_path, planted):
    root = empty_storage(tmp_path / "root")
    bundle = simple_bundle(tmp_path / "bundle")
    d = Digest.of_bytes(LAYER)
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    link = root / planted.format(hex2=d.hex[:2], hex=d.hex)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    before, outside_before = tree_hash(root), tree_hash(outside)
    store = RegistryStore(root)
    with pytest.raises(UnsafePath) as e:
        _apply(store, plan(bundle, store))
    assert str(link) in str(e.value) and "is a symlink" in str(e.value)
    assert e.value.exit_code == 3
    assert tree_hash(outside) == outside_before
    if not planted.startswith(".regpatch"):
        assert tree_hash(root) == before  # refused at plan time


@pytest.mark.posix_only  # a FIFO
def test_a_planted_data_symlink_or_fifo_is_never_read(tmp_path):
    root = empty_storage(tmp_path / "root")
    store = RegistryStore(root)
    d = Digest.of_bytes(LAYER)
    data = store.layout.blob_data(d)
    data.parent.mkdir(parents=True)
    os.mkfifo(data)  # opening it for reading would block forever
    with pytest.raises(UnsafePath, match="FIFO"):
        store.blob_size(d)
    data.unlink()
    data.symlink_to("/etc/passwd")
    with pytest.raises(UnsafePath, match="is a symlink"):
        store.read_blob(d, 100)


def test_anchor_symlink_to_a_file_or_nowhere_or_a_loop(tmp_path):
    root = empty_storage(tmp_path / "root")
    blobs = root.joinpath(*V2, "blobs")
    d = write_blob(RegistryStore(root), b"x")
    for target, needle in ((tmp_path / "a-file", "not a folder"), (tmp_path / "nowhere", "ENOENT"),
                           (blobs, "ELOOP")):
        if blobs.is_symlink() or blobs.exists():
            os.rename(blobs, tmp_path / f"old-{len(list(tmp_path.iterdir()))}")
        if target.name == "a-file":
            target.write_text("x")
        blobs.symlink_to(target)
        with pytest.raises(StorageError) as e:
            RegistryStore(root).blob_size(d)
        assert needle in str(e.value) and e.value.exit_code == 4
        blobs.unlink()


def test_state_dir_inside_docker_is_refused(tmp_path):
    root = empty_storage(tmp_path / "root")
    for state in (root / "docker" / "state", root.joinpath(*V2, "repositories", "regpatch"), root / "docker"):
        with pytest.raises(UsageError, match="inside the registry's storage tree"):
            RegistryStore(root, state_dir=state)
    # through the operator's symlink: blobs live on another disk, the state folder there too
    other = _move_to(root, "docker/registry/v2/blobs", tmp_path / "disk2" / "blobs")
    with pytest.raises(UsageError):
        RegistryStore(root, state_dir=other / "regpatch-state")
    # a symlink to docker/ given as the state folder
    (tmp_path / "sneaky").symlink_to(root / "docker" / "registry")
    with pytest.raises(UsageError):
        RegistryStore(root, state_dir=tmp_path / "sneaky")
    assert RegistryStore(root, state_dir=tmp_path / "state").layout.state == tmp_path / "state"
    assert RegistryStore(root, state_dir=root / "regpatch-state")


# -- OS errors -------------------------------------------------------------------------

def test_enotdir_when_a_file_stands_where_a_folder_must_be(tmp_path):
    root = empty_storage(tmp_path / "root")
    store = RegistryStore(root)
    layers = store.layout.repository(REPO) / "_layers"
    layers.parent.mkdir(parents=True)
    layers.write_text("not a folder")
    d = Digest.of_bytes(LAYER)
    with pytest.raises(StorageError) as e:
        store.write_link(store.layout.layer_link(REPO, d), d)
    msg = str(e.value)
    assert "[ENOTDIR]" in msg and "storage layout is damaged" in msg and e.value.exit_code == 4
    assert str(store.layout.layer_link(REPO, d)) in msg


def test_enametoolong_for_the_state_folder(tmp_path):
    root = empty_storage(tmp_path / "root")
    with pytest.raises(StorageError) as e:  # found when the state folder is first looked at
        store = RegistryStore(root, state_dir=tmp_path / ("s" * 300))
        store.write_file(store.layout.history, b"x")
    assert "[ENAMETOOLONG]" in str(e.value) and "shorter" in str(e.value)


def test_eexist_and_eisdir_map_to_storage_errors(tmp_path):
    root = empty_storage(tmp_path / "root")
    store = RegistryStore(root)
    d = Digest.of_bytes(b"x")
    store.layout.blob_data(d).mkdir(parents=True)  # a folder where the blob's data file goes
    with pytest.raises(StorageError) as e:
        store.write_manifest_blob(d, b"x")
    assert "[EISDIR]" in str(e.value) or "[EEXIST]" in str(e.value) or "[ENOTEMPTY]" in str(e.value)


@pytest.mark.parametrize("code,cls,needle", [
    (errno.ENOSPC, NoSpace, "free space"), (errno.EDQUOT, NoSpace, "quota"),
    (errno.EROFS, StorageError, "read-only"), (errno.EACCES, StorageError, "owns the registry storage"),
    (errno.EPERM, StorageError, "immutable"), (errno.ENOTDIR, StorageError, "damaged"),
    (errno.ENAMETOOLONG, StorageError, "shorter"), (errno.ELOOP, StorageError, "symlink"),
    (errno.EIO, StorageError, "dmesg"), (errno.EMFILE, StorageError, "ulimit"),
    (errno.ENXIO, StorageError, "check the storage"),
])
def test_every_errno_has_a_category_and_advice(code, cls, needle):
    e = os_error(OSError(code, os.strerror(code), "/srv/registry/docker/x\nforged"), doing="writing")
    assert type(e) is cls and e.exit_code == 4
    text = str(e)
    assert needle in text and errno.errorcode[code] in text and "\n" not in text
    assert text.startswith("writing /srv/registry/docker/x\\nforged failed")


def test_os_error_names_the_path_given_and_the_one_the_os_named():
    e = os_error(OSError(errno.EXDEV, "Invalid cross-device link", "/a/tmp", None, "/b/final"),
                 doing="installing", path="/b/final")
    assert str(e).startswith("installing /b/final failed (at /a/tmp): [EXDEV]")


def test_store_never_raises_a_bare_oserror(tmp_path):
    """Every public reader and writer of the store maps OS errors (here ENOTDIR)."""
    root = empty_storage(tmp_path / "root")
    store = RegistryStore(root)
    d = Digest.of_bytes(b"x")
    blob_dir = store.layout.blob_dir(d)
    blob_dir.parent.mkdir(parents=True)
    blob_dir.write_text("a file where the blob's folder goes")
    link = store.layout.revision_link(REPO, d)
    link.parent.parent.mkdir(parents=True)
    link.parent.write_text("a file where the link's folder goes")
    calls = [lambda: store.blob_size(d), lambda: store.read_blob(d, 10), lambda: store.verify_blob(d, 1),
             lambda: store.read_link(link), lambda: store.link_ok(link, d), lambda: store.write_link(link, d),
             lambda: store.write_manifest_blob(d, b"x")]
    for call in calls:
        with pytest.raises(RegpatchError) as e:
            call()
        assert isinstance(e.value, StorageError) and "ENOTDIR" in str(e.value), str(e.value)
