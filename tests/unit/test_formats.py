"""Bundle formats with real files: dir:, OCI archives (plain, gzip, zstd), docker save archives,
the tar reader, the deterministic gzip, detection and its messages, inspect.

The inputs here are written by Python (tarfile, regpatch.demo.images) in the layouts
the tools use; tests/e2e/test_formats.py does the same with skopeo and podman."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from regpatch.bundle.archive import PlainTarSource, StreamTarSource
from regpatch.bundle.gzipper import compress_stream
from regpatch.bundle.inspect import inspect_bundle
from regpatch.bundle.open import detect_format, load_bundle, open_source
from regpatch.bundle.tarstream import TarError, TarReader, index_tar
from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout
from regpatch.errors import BundleError, DigestMismatch, ManifestError, UnknownBundleFormat, UnsafePath, UsageError
from regpatch.manifest import DOCKER_FOREIGN_LAYER
from regpatch.storage.store import RegistryStore


def new_store(path: Path) -> RegistryStore:
    path.mkdir()
    return RegistryStore(path)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def sample(tmp_path):
    base = make_layer(tmp_path / "s", "base", seed=1, size=200_000, oci=True)
    delta = make_layer(tmp_path / "s", "delta", seed=2, size=50_000, oci=True)
    img = make_image(tmp_path / "s", [base, delta], fmt="oci", name="img")
    win = make_image(tmp_path / "s", [base], fmt="oci", os="windows", os_version="10.0.17763.1", name="win")
    index = make_index(tmp_path / "s", [img, win], fmt="oci")
    layout = write_oci_layout(tmp_path / "layout", {"img": img, "list": index})
    return {"img": img, "win": win, "index": index, "layout": layout}


def pack(folder: Path, dest: Path, *, compress: str = "", prefix: str = "") -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for p in sorted(folder.rglob("*")):
            t.add(p, prefix + p.relative_to(folder).as_posix(), recursive=False)
    data = raw.getvalue()
    if compress == "gzip":
        data = gzip.compress(data)
    elif compress == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    dest.write_bytes(data)
    return dest


def one_image_layout(sample, tmp_path, name="only"):
    return write_oci_layout(tmp_path / f"layout-{name}", {name: sample["index"]})


# -- OCI archives -------------------------------------------------------------------------

@pytest.mark.parametrize("compress", ["", "gzip", "zstd"])
def test_oci_archive_keeps_digests_and_stages_in_place(sample, tmp_path, compress):
    archive = pack(one_image_layout(sample, tmp_path), tmp_path / "a.tar", compress=compress, prefix="./")
    src = open_source(str(archive))
    assert isinstance(src, StreamTarSource if compress else PlainTarSource)
    bundle = load_bundle(src)
    assert bundle.format == "oci-archive"
    assert bundle.top.digest == sample["index"].manifest_digest
    child = bundle.read_manifest(bundle.top.manifests[0], "test")
    assert child.digest == sample["img"].manifest_digest
    store = new_store(tmp_path / "reg")
    layer = sample["img"].layers[0]
    f = bundle.find(bundle.top.manifests[0]) and bundle.files[layer.digest]
    before = set(os.listdir(tmp_path)) - {"reg"}
    src.stage_blob(store, layer.digest, layer.size, f.name, what="test") if compress else \
        store.stage_blob(layer.digest, layer.size, lambda: src.open(f.name), what="test")
    assert store.staged_path(layer.digest).read_bytes() == Path(layer.path).read_bytes()
    assert set(os.listdir(tmp_path)) - {"reg"} == before  # nothing unpacked beside the archive
    if compress:  # the same pass staged every other wanted blob the registry lacks
        assert src.passes == 2
        for b in sample["img"].blobs + sample["win"].blobs:
            assert store.staged_path(b.digest) is not None
        delta = sample["img"].layers[1]
        src.stage_blob(store, delta.digest, delta.size, bundle.files[delta.digest].name, what="t")
        assert src.passes == 2  # already staged: no third pass


def test_compressed_archive_member_corruption_is_a_digest_mismatch(sample, tmp_path):
    layout = one_image_layout(sample, tmp_path)
    layer = sample["img"].layers[0]
    blob = layout / "blobs/sha256" / layer.digest.hex
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    src = open_source(str(pack(layout, tmp_path / "a.tar.zst", compress="zstd")))
    bundle = load_bundle(src)
    store = new_store(tmp_path / "reg")
    with pytest.raises(DigestMismatch, match=layer.digest.hex):
        src.stage_blob(store, layer.digest, layer.size, bundle.files[layer.digest].name, what="layer")
    assert store.staged_path(layer.digest) is None
    with pytest.raises(DigestMismatch):
        src.hash(bundle.files[layer.digest].name, expected=layer.digest, expected_size=layer.size)


def test_plain_archive_member_is_copied_by_range_and_checked(sample, tmp_path):
    """A local member is staged by a kernel copy of exactly its bytes: the bytes after it
    (the next tar header) are not part of it; a corrupt member is a digest mismatch; an
    archive cut short is refused when it is opened."""
    layout = one_image_layout(sample, tmp_path)
    archive = pack(layout, tmp_path / "a.tar")
    layer = sample["img"].layers[0]
    src = open_source(str(archive))
    name = load_bundle(src).files[layer.digest].name
    with src.open(name) as f:
        fd, offset = f.file_region
        assert os.pread(fd, 16, offset) == Path(layer.path).read_bytes()[:16]
    store = new_store(tmp_path / "reg")
    store.stage_blob(layer.digest, layer.size, lambda: src.open(name), what="layer")
    assert store.staged_path(layer.digest).read_bytes() == Path(layer.path).read_bytes()
    data = bytearray(archive.read_bytes())
    member = src._files[name]
    data[member.offset + 10] ^= 1
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    bsrc = open_source(str(bad))
    with pytest.raises(DigestMismatch, match=layer.digest.hex):
        new_store(tmp_path / "reg2").stage_blob(layer.digest, layer.size, lambda: bsrc.open(name), what="x")
    short = tmp_path / "short.tar"
    short.write_bytes(bytes(data[:member.offset + 100]))
    with pytest.raises(BundleError, match="truncated|ends inside"):
        open_source(str(short))


def test_oci_archive_with_several_images_needs_image(sample, tmp_path):
    archive = pack(sample["layout"], tmp_path / "two.tar")
    with pytest.raises(UsageError, match="choose one with --image"):
        load_bundle(open_source(str(archive)))
    assert load_bundle(open_source(str(archive)), image="img").top.digest == sample["img"].manifest_digest


# -- dir: ------------------------------------------------------------------------------------

def write_dir(folder: Path, top_raw: bytes, children: list, blobs: list) -> Path:
    folder.mkdir()
    (folder / "version").write_text("Directory Transport Version: 1.1\n")
    (folder / "manifest.json").write_bytes(top_raw)
    for c in children:
        (folder / f"{c.manifest_digest.hex}.manifest.json").write_bytes(c.manifest_bytes)
    for b in blobs:
        (folder / b.digest.hex).write_bytes(Path(b.path).read_bytes())
    return folder


def test_dir_list_is_not_misread_as_staged(sample, tmp_path):
    idx = sample["index"]
    blobs = {b.digest: b for c in idx.children for b in c.blobs}.values()
    folder = write_dir(tmp_path / "d", idx.manifest_bytes, list(idx.children), list(blobs))
    assert detect_format(open_source(str(folder))) == "dir"
    bundle = load_bundle(open_source(str(folder)))
    assert bundle.format == "dir" and bundle.top.digest == idx.manifest_digest
    for d in bundle.top.manifests:
        assert bundle.read_manifest(d, "t").digest == d.digest
    with pytest.raises(UsageError, match="dir: folder"):
        load_bundle(open_source(str(folder)), image="x")


def test_dir_with_a_foreign_version_is_refused(sample, tmp_path):
    img = sample["img"]
    folder = write_dir(tmp_path / "d", img.manifest_bytes, [], list(img.blobs))
    (folder / "version").write_text("Directory Transport Version: 2.0\n")
    with pytest.raises(UnknownBundleFormat, match="Directory Transport Version"):
        load_bundle(open_source(str(folder)))


# -- docker save -------------------------------------------------------------------------------

def docker_save(tmp_path: Path, *, layers: list[bytes], foreign: dict | None = None, tags=("site/app:1",),
                bad_config_name=False, bad_diff=False) -> Path:
    folder = tmp_path / "saved"
    folder.mkdir(parents=True)
    diff_ids = [sha(l) for l in layers]
    if bad_diff:
        diff_ids[0] = sha(b"something else")
    config = json.dumps({"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cname = ("0" * 64 if bad_config_name else hashlib.sha256(config).hexdigest()) + ".json"
    (folder / cname).write_bytes(config)
    names = []
    for i, l in enumerate(layers):
        d = folder / f"l{i}"
        d.mkdir()
        (d / "layer.tar").write_bytes(l)
        names.append(f"l{i}/layer.tar")
    entry = {"Config": cname, "RepoTags": list(tags), "Layers": names}
    if foreign:
        entry["LayerSources"] = foreign
    (folder / "manifest.json").write_text(json.dumps([entry]))
    return folder


def layer_tar(seed: int, size: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo(f"f{seed}")
        ti.size = size
        t.addfile(ti, io.BytesIO(random.Random(seed).randbytes(size // 2) + bytes(size - size // 2)))
    return raw.getvalue()


@pytest.mark.parametrize("as_archive", ["", "plain", "gzip"])
def test_docker_save_is_converted_deterministically(tmp_path, as_archive):
    layers = [layer_tar(1, 3 << 20), layer_tar(2, 10_000)]
    folder = docker_save(tmp_path, layers=layers)
    bundle_path = folder if not as_archive else pack(folder, tmp_path / "s.tar",
                                                      compress="gzip" if as_archive == "gzip" else "")
    scratch = tmp_path / "scratch"
    b1 = load_bundle(open_source(str(bundle_path)), scratch=scratch)
    b2 = load_bundle(open_source(str(bundle_path)))  # no scratch: hashed only
    assert b1.format == "docker-archive" and b1.top.digest == b2.top.digest
    conv = b1.conversion
    assert conv.image_id == b1.top.config.digest and "NEW manifest digest" in b1.notes[0]
    assert str(conv.image_id) in b1.notes[0] and str(b1.top.digest) in b1.notes[0]
    for desc, raw in zip(b1.top.layers, layers):
        f1, f2 = b1.files[desc.digest], b2.files[desc.digest]
        data = b1.source.open(f1.name).read()          # from the scratch folder
        assert b1.source.local_path(f1.name) is not None
        assert b2.source.open(f2.name).read() == data   # compressed again, identically
        assert sha(data) == str(desc.digest) and len(data) == desc.size
        assert gzip.decompress(data) == raw
        assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
    b1.close()
    assert not any(scratch.iterdir())


def test_docker_save_foreign_layers_keep_or_include(tmp_path):
    base, delta = layer_tar(3, 100_000), layer_tar(4, 20_000)
    foreign = {sha(base): {"mediaType": DOCKER_FOREIGN_LAYER, "size": 4242, "digest": "sha256:" + "a" * 64,
                           "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:" + "a" * 64]}}
    folder = docker_save(tmp_path, layers=[base, delta], foreign=foreign)
    kept = load_bundle(open_source(str(folder)))
    first = kept.top.layers[0]
    assert first.media_type == DOCKER_FOREIGN_LAYER and first.size == 4242 and first.urls
    assert first.digest not in kept.files and "foreign layers kept" in kept.notes[0]
    inc = load_bundle(open_source(str(folder)), foreign_layers="include")
    assert inc.top.layers[0].media_type.endswith("diff.tar.gzip") and not inc.top.layers[0].urls
    assert inc.top.layers[0].digest in inc.files and "included as distributable" in inc.notes[0]
    with pytest.raises(UsageError):
        load_bundle(open_source(str(folder)), foreign_layers="drop")
    info = inspect_bundle(open_source(str(folder)))
    assert [b.foreign for b in info.blobs if b.kind == "layer"] == [True, False]
    assert info.images[0].platforms[0].os_version == "10.0.17763.1"


def test_docker_save_checks_config_id_and_diff_ids(tmp_path):
    with pytest.raises(DigestMismatch, match="config"):
        load_bundle(open_source(str(docker_save(tmp_path / "a", layers=[layer_tar(1, 1000)],
                                                bad_config_name=True))))
    with pytest.raises(DigestMismatch, match="diff_ids"):
        load_bundle(open_source(str(docker_save(tmp_path / "b", layers=[layer_tar(1, 1000)], bad_diff=True))))


def test_a_refused_docker_save_leaves_no_conversion_folder(tmp_path):
    """Before, the refused archive's ``docker-save-<pid>-<random>`` folder stayed in the
    storage's scratch folder (removed only by a later conversion, once this process was gone)."""
    scratch = tmp_path / "scratch"
    saved = docker_save(tmp_path / "b", layers=[layer_tar(1, 1000), layer_tar(2, 1000)], bad_diff=True)
    with pytest.raises(DigestMismatch, match="diff_ids"):
        load_bundle(open_source(str(saved)), scratch=scratch)
    assert scratch.is_dir() and list(scratch.iterdir()) == []


@pytest.mark.parametrize("how", ["same-name", "symlink", "archive"])
def test_a_layer_listed_twice_for_two_diff_ids_is_refused(tmp_path, how):
    """One layer file listed twice in Layers with two different diff ids: before, only the
    first was checked and the published config contradicted its layers."""
    a, b = layer_tar(5, 2000), layer_tar(6, 3000)
    folder = docker_save(tmp_path, layers=[a, b])
    doc = json.loads((folder / "manifest.json").read_text())
    if how == "symlink":
        (folder / "l1" / "layer.tar").unlink()
        (folder / "l1" / "layer.tar").symlink_to("../l0/layer.tar")
    else:
        doc[0]["Layers"][1] = doc[0]["Layers"][0]
    (folder / "manifest.json").write_text(json.dumps(doc))
    path = pack(folder, tmp_path / "s.tar") if how == "archive" else folder
    with pytest.raises(ManifestError, match=r"is listed as Layers\[0\] and Layers\[1\] for two different diff ids"):
        load_bundle(open_source(str(path)))


def test_docker_save_image_choice_and_hostile_names(tmp_path):
    folder = docker_save(tmp_path, layers=[layer_tar(1, 1000)], tags=("docker.io/library/app:1",))
    assert load_bundle(open_source(str(folder)), image="app:1").conversion.image == "docker.io/library/app:1"
    with pytest.raises(UsageError, match="has no image"):
        load_bundle(open_source(str(folder)), image="other:1")
    doc = json.loads((folder / "manifest.json").read_text())
    doc[0]["Layers"] = ["../../etc/passwd"]
    (folder / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="plain relative"):
        load_bundle(open_source(str(folder)))
    (folder / "manifest.json").write_text('[{"Config": "x", "Config": "y"}]')
    with pytest.raises(ManifestError, match="twice"):
        load_bundle(open_source(str(folder)))


# -- the tar reader ------------------------------------------------------------------------------

def tar_bytes(entries) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data, kind, link in entries:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = link
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return raw.getvalue()


def test_tar_reader_long_names_links_and_offsets(tmp_path):
    long = "d/" + "x" * 150 + "/file"
    data = tar_bytes([(long, b"hello", tarfile.REGTYPE, ""), ("l", b"", tarfile.SYMTYPE, long),
                      ("./dir/", b"", tarfile.DIRTYPE, "")])
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    members = index_tar(lambda o, n: data[o:o + n], what="t")
    assert [(m.name, m.kind) for m in members] == [(long, "file"), ("l", "symlink"), ("dir", "dir")]
    assert data[members[0].offset:members[0].offset + 5] == b"hello"
    src = open_source(str(path))
    assert src.list() == {long: 5, "l": 5}
    assert src.read_bytes("l", 10) == b"hello" and src.canonical("l") == long
    with src.open(long) as f:
        assert f.read() == b"hello"
        with pytest.raises(OSError):
            f.fileno()  # never handed to a kernel copy (it would copy past the member)


@pytest.mark.parametrize("entries,error", [
    ([("../evil", b"x", tarfile.REGTYPE, "")], UnsafePath),
    ([("/abs", b"x", tarfile.REGTYPE, "")], UnsafePath),
    ([("a", b"x", tarfile.REGTYPE, ""), ("./a", b"y", tarfile.REGTYPE, "")], BundleError),
    ([("l", b"", tarfile.SYMTYPE, "../../etc/passwd")], UnsafePath),
])
def test_tar_reader_refuses_unsafe_archives(tmp_path, entries, error):
    path = tmp_path / "t.tar"
    path.write_bytes(tar_bytes(entries) if entries[0][0] != "/abs" else _raw_abs())
    with pytest.raises(error):
        open_source(str(path))


def _raw_abs() -> bytes:
    data = bytearray(tar_bytes([("Xabs", b"x", tarfile.REGTYPE, "")]))
    data[0:4] = b"/abs"
    data[148:156] = b"        "
    data[148:155] = ("%06o\0" % sum(data[:512])).encode()
    return bytes(data)


def test_tar_reader_bounds_metadata_and_detects_corruption():
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("a")
        ti.pax_headers = {"comment": "x" * (2 << 20)}
        t.addfile(ti, io.BytesIO(b""))
    with pytest.raises(TarError, match="pax header"):
        list(TarReader(io.BytesIO(pax.getvalue()), what="t").members())
    data = bytearray(tar_bytes([("a", b"x" * 10, tarfile.REGTYPE, "")]))
    data[100] ^= 0xFF
    with pytest.raises(TarError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(data)), what="t").members())
    truncated = tar_bytes([("a", b"x" * 5000, tarfile.REGTYPE, "")])[:2048]
    reader = TarReader(io.BytesIO(truncated), what="t")
    m = reader.next()
    with pytest.raises(TarError, match="ends inside"):
        reader.member_stream(m).read()


# -- gzip ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7, 3 << 20])
def test_parallel_gzip_is_valid_and_independent_of_threads(size):
    rnd = random.Random(size).randbytes(size // 2)
    data = rnd + b"abc" * ((size - len(rnd)) // 3) + b"z" * ((size - len(rnd)) % 3)
    outs = []
    for threads in (1, 2, 4):
        buf = io.BytesIO()
        stats = compress_stream(io.BytesIO(data), buf.write, threads=threads)
        outs.append(buf.getvalue())
        assert stats.raw_digest == sha(data) and stats.out_digest == sha(buf.getvalue())
    assert outs[0] == outs[1] == outs[2]
    assert gzip.decompress(outs[0]) == data
    assert zlib.decompress(outs[0], 31) == data


# -- detection -----------------------------------------------------------------------------------

def test_refusals_name_what_was_found_and_what_to_do(tmp_path):
    z = tmp_path / "b.zip"
    z.write_bytes(b"PK\x03\x04" + bytes(600))
    with pytest.raises(UnknownBundleFormat, match="zip file: unzip it"):
        open_source(str(z))
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("x")
    (rootfs / "bin").mkdir()
    (rootfs / "bin" / "sh").write_text("x")
    with pytest.raises(UnknownBundleFormat, match="root filesystem"):
        load_bundle(open_source(str(pack(rootfs, tmp_path / "rootfs.tar.gz", compress="gzip"))))
    nested = tmp_path / "n"
    (nested / "inner").mkdir(parents=True)
    (nested / "inner" / "index.json").write_text("{}")
    with pytest.raises(UnknownBundleFormat, match="holds only the folder 'inner'"):
        load_bundle(open_source(str(pack(nested, tmp_path / "n.tar"))))
    old = tmp_path / "old"
    (old / "abc").mkdir(parents=True)
    (old / "abc" / "layer.tar").write_bytes(b"")
    (old / "repositories").write_text("{}")
    with pytest.raises(UnknownBundleFormat, match="without manifest.json"):
        load_bundle(open_source(str(old)))


def test_inspect_lists_images_platforms_and_foreign(sample, tmp_path):
    info = inspect_bundle(open_source(str(sample["layout"])))
    assert [i.name for i in info.images] == ["img", "list"]
    assert info.images[1].platforms[1].os_version == "10.0.17763.1"
    digests = {b.digest for b in info.blobs}
    assert str(sample["index"].manifest_digest) in digests
    layer_sizes = {str(b.digest): b.size for c in sample["index"].children for b in c.blobs}
    assert all(next(x for x in info.blobs if x.digest == d).size == s for d, s in layer_sizes.items())
    doc = json.loads(info.to_json())
    assert doc["total_bytes"] == sum(b["size"] for b in doc["blobs"])
    verified = inspect_bundle(open_source(str(sample["layout"])), image="list", verify=True)
    assert verified.verified and all(b.verified for b in verified.blobs)
    blob = sample["layout"] / "blobs/sha256" / sample["img"].layers[1].digest.hex
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        inspect_bundle(open_source(str(sample["layout"])), image="list", verify=True)


def test_inspect_escapes_every_string_it_prints(tmp_path):
    """os.version and other platform strings come from the bundle: a terminal escape or a
    newline in them must not reach the operator's terminal (or forge a line)."""
    layer = make_layer(tmp_path / "l", "layer", seed=7, size=4000)
    hostile = "10.0.17763.1\x1b[2J\nforged: line\u202e"
    img = make_image(tmp_path / "img", [layer], os="windows", os_version=hostile, seed=7)
    layout = write_oci_layout(tmp_path / "layout", {"app\x1b]0;title\x07": img})
    text = inspect_bundle(open_source(str(layout))).render()
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert not any(line.startswith("forged") for line in text.splitlines())
    assert "os.version 10.0.17763.1\\x1b[2J\\nforged: line" in text
    as_json = inspect_bundle(open_source(str(layout))).to_json()
    assert "\x1b" not in as_json and "\u202e" not in as_json  # JSON escapes them (ASCII only)
