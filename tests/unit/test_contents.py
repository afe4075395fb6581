"""regpatch contents: what a storage holds, read strictly, written deterministically.

Storages are built in tmp_path with RegistryStore's own writes (the same files a
registry has after a push); no registry process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.util import tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_layer
from regpatch.digest import Digest
from regpatch.errors import StorageNotFound, UsageError
from regpatch.reference import Repository, Tag
from regpatch.storage.contents import (
    FORMAT,
    parse_contents,
    read_contents_file,
    read_storage,
    union_blobs,
    write_contents,
)
from regpatch.storage.store import RegistryStore


def put_image(store: RegistryStore, repo: str, tag: str, img) -> None:
    """What a push leaves in the storage: blobs, _layers links, revision, tag links."""
    lay, r, t = store.layout, Repository.parse(repo), Tag.parse(tag)
    for b in img.blobs:
        store.write_file(lay.blob_data(b.digest), Path(b.path).read_bytes(), durable=False)
        store.write_link(lay.layer_link(r, b.digest), b.digest)
    store.write_file(lay.blob_data(img.manifest_digest), img.manifest_bytes, durable=False)
    store.write_link(lay.revision_link(r, img.manifest_digest), img.manifest_digest)
    store.write_link(lay.tag_index_link(r, t, img.manifest_digest), img.manifest_digest)
    store.write_link(lay.tag_current_link(r, t), img.manifest_digest)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    base = make_layer(d / "l", "base", seed=1, size=40_000)
    d1 = make_layer(d / "l", "delta1", seed=2, size=10_000)
    d2 = make_layer(d / "l", "delta2", seed=3, size=12_000)
    old = make_image(d / "old", [base, d1], os="windows", os_version="10.0.17763.1", seed=2)
    new = make_image(d / "new", [base, d2], os="windows", os_version="10.0.17763.2", seed=3)
    return old, new


@pytest.fixture
def store(tmp_path, images):
    old, new = images
    (tmp_path / "root").mkdir()
    s = RegistryStore(tmp_path / "root")
    put_image(s, "servercore", "ltsc2019", old)
    put_image(s, "windows/nanoserver", "1809", new)
    return s


def test_lists_blobs_tags_and_revisions(store, images):
    old, new = images
    c = read_storage(store)
    want = {b.digest: b.size for img in images for b in img.blobs}
    want.update({img.manifest_digest: len(img.manifest_bytes) for img in images})
    assert dict(c.blobs) == want
    assert set(c.repositories) == {"servercore", "windows/nanoserver"}  # nested names found
    sc = c.repositories["servercore"]
    assert dict(sc.tags) == {"ltsc2019": old.manifest_digest}
    assert sc.revisions == (old.manifest_digest,)
    assert c.skipped == ()
    doc = json.loads(c.to_json())
    assert doc["format"] == FORMAT
    assert doc["repositories"]["windows/nanoserver"]["tags"] == {"1809": str(new.manifest_digest)}


def test_same_storage_same_bytes_and_reads_only(tmp_path, store, images):
    before = tree_hash(store.root)
    first = read_storage(store).to_json()
    assert tree_hash(store.root) == before
    # the same content written in another order, in another folder: the same bytes
    (tmp_path / "other").mkdir()
    other = RegistryStore(tmp_path / "other")
    put_image(other, "windows/nanoserver", "1809", images[1])
    put_image(other, "servercore", "ltsc2019", images[0])
    assert read_storage(other).to_json() == first
    text = first.decode()
    assert text.endswith("}\n") and text.isascii()
    keys = list(json.loads(first)["blobs"])
    assert keys == sorted(keys)


def test_links_are_read_the_way_the_registry_reads_them(store, images):
    old, new = images
    lay, r = store.layout, Repository.parse("servercore")
    # a trailing newline (the registry answers HTTP 500 for it) and UTF-16: the tag is left out
    nl = lay.tag_current_link(r, Tag.parse("nl"))
    nl.parent.mkdir(parents=True)
    nl.write_bytes(str(new.manifest_digest).encode() + b"\n")
    u16 = lay.tag_current_link(r, Tag.parse("u16"))
    u16.parent.mkdir(parents=True)
    u16.write_bytes(str(new.manifest_digest).encode("utf-16"))
    # a revision whose link names another digest, and one with a newline
    other = Digest.of_bytes(b"other")
    bad_rev = lay.revision_link(r, other)
    bad_rev.parent.mkdir(parents=True)
    bad_rev.write_bytes(str(old.manifest_digest).encode())
    rev_nl = lay.revision_link(r, new.manifest_digest)
    rev_nl.parent.mkdir(parents=True)
    rev_nl.write_bytes(str(new.manifest_digest).encode() + b"\n")
    # names that fail their grammar never become paths
    (lay.tags_dir(r) / "bad tag!").mkdir()
    (lay.repositories_root / "Upper").mkdir()
    (lay.repositories_root / "Upper" / "_manifests").mkdir()
    (lay.revisions_dir(r) / "not-a-digest").mkdir()
    c = read_storage(store)
    sc = c.repositories["servercore"]
    assert dict(sc.tags) == {"ltsc2019": old.manifest_digest}
    assert sc.revisions == (old.manifest_digest,)
    assert "Upper" not in c.repositories
    joined = "\n".join(c.skipped)
    for needle in ("servercore:nl", "servercore:u16", f"servercore@{other}", "'bad tag!'", "'Upper'",
                   f"servercore@{new.manifest_digest}"):
        assert needle in joined, joined


def test_blob_folders_without_data_and_symlinks_are_left_out(tmp_path, store):
    lay = store.layout
    d = Digest.of_bytes(b"never uploaded")
    lay.blob_dir(d).mkdir(parents=True)                    # no data file
    e = Digest.of_bytes(b"a folder as data")
    lay.blob_data(e).mkdir(parents=True)                   # data is not a file
    (lay.blobs_root() / "zz").mkdir()                      # not hex
    outside = tmp_path / "outside"
    outside.mkdir()
    (lay.repositories_root / "linked").symlink_to(outside)  # never followed
    (outside / "_manifests").mkdir()
    c = read_storage(store)
    assert d not in c.blobs and e not in c.blobs
    assert "linked" not in c.repositories
    assert any("not a regular file" in s for s in c.skipped)


def test_repository_filter(store, images):
    c = read_storage(store, ["servercore"])
    assert set(c.repositories) == {"servercore"}
    assert len(c.blobs) == 7  # blobs are always all: the site holds them whatever the repository
    with pytest.raises(UsageError, match="repository app is not in the registry storage"):
        read_storage(store, ["app"])


def test_not_a_storage(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageNotFound, match="holds no docker/registry/v2"):
        read_storage(RegistryStore(tmp_path / "empty"))


def test_file_round_trip_and_union(tmp_path, store, images):
    c = read_storage(store)
    out = tmp_path / "site-a.contents.json"
    digest = write_contents(c, out, storage_root=store.root)
    assert digest == Digest.of_bytes(out.read_bytes())
    back = read_contents_file(out)
    assert back.name == "site-a.contents.json" and back.sha256 == digest
    assert back.contents.to_json() == out.read_bytes()
    assert union_blobs([back]) == dict(c.blobs)
    with pytest.raises(UsageError, match="inside the registry storage"):
        write_contents(c, store.layout.v2 / "x.json", storage_root=store.root)


@pytest.mark.parametrize("doc, message", [
    (b"\xff\xfe{", "not JSON"),
    (b"[]", "'format'"),
    (json.dumps({"format": "other"}).encode(), "'format'"),
    (json.dumps({"format": FORMAT, "blobs": {"sha256:abc": 1}, "repositories": {}}).encode(), "blobs key"),
    (json.dumps({"format": FORMAT, "blobs": {str(Digest.of_bytes(b"")): -1}, "repositories": {}}).encode(),
     "not a size"),
    (json.dumps({"format": FORMAT, "blobs": {str(Digest.of_bytes(b"")): True}, "repositories": {}}).encode(),
     "not a size"),
    (json.dumps({"format": FORMAT, "blobs": {}, "repositories": {"../etc": {"tags": {}, "revisions": []}}})
     .encode(), "repository name"),
    (json.dumps({"format": FORMAT, "blobs": {}, "repositories": {"a": {"tags": {"x y": "z"}, "revisions": []}}})
     .encode(), "tag"),
    (json.dumps({"format": FORMAT, "blobs": {}, "repositories": {}, "extra": 1}).encode(), "unknown keys"),
])
def test_hostile_contents_files_are_refused(doc, message):
    with pytest.raises(UsageError, match=message):
        parse_contents(doc, "site.json")


def test_cli_writes_the_file_and_nothing_else(tmp_path, store, capsys):
    before = tree_hash(store.root)
    out = tmp_path / "site.json"
    assert regpatch_main(["contents", "--storage", str(store.root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {Digest.of_bytes(out.read_bytes()).hex}" in printed
    assert "7 blobs" in printed and "2 repositories, 2 tags" in printed
    assert tree_hash(store.root) == before
    assert out.read_bytes() == read_storage(store).to_json()
    code = regpatch_main(["contents", "--storage", str(store.root), "--out",
                          str(store.layout.v2 / "c.json")])
    assert code == 2 and not (store.layout.v2 / "c.json").exists()
    assert regpatch_main(["contents", "--storage", str(tmp_path / "nope"), "--out", str(out)]) == 4
