"""Reading bundles as the registry would: every name, byte and JSON key of a bundle is
hostile until checked. Staged folders and OCI layouts, built file by file here, and
the manifest parser they share."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile

import pytest

from regpatch import engine
from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle, open_source
from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout
from regpatch.digest import Digest
from regpatch.errors import (
    BundleError,
    DigestMismatch,
    ManifestError,
    SizeMismatch,
    SourceError,
    UnknownBundleFormat,
    UnsafePath,
    UsageError,
)
from regpatch.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    parse_manifest,
)


def blob(data: bytes, media_type: str = DOCKER_LAYER) -> dict:
    return {"mediaType": media_type, "size": len(data), "digest": str(Digest.of_bytes(data))}


def staged(folder, *, layers=(b"layer one" * 50, b"layer two" * 70), config=b'{"os":"windows"}',
           sidecars=True, manifest=None):
    """A staged folder by hand: layer files, <last>.config.json, <last>.manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"l{i}.tar.gz" for i in range(len(layers))]
    for name, data in zip(names, layers):
        (folder / name).write_bytes(data)
        if sidecars:
            (folder / f"{name}.digest").write_text(f"{Digest.of_bytes(data)}\r\n")
    (folder / f"{names[-1]}.config.json").write_bytes(config)
    doc = manifest or {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": blob(config, DOCKER_CONFIG),
                       "layers": [blob(d) for d in layers]}
    (folder / f"{names[-1]}.manifest.json").write_bytes(json.dumps(doc).encode())
    return folder


def load(folder, **kw):
    return load_bundle(LocalFolderSource(folder), **kw)


# --------------------------------------------------------------------------- staged folders

def test_a_hand_made_staged_folder_loads_with_its_sidecars(tmp_path):
    folder = staged(tmp_path / "b")
    (folder / "l0.tar.gz.digest").write_bytes(b"\xef\xbb\xbf" + Digest.of_bytes(b"layer one" * 50).hex.upper().encode())
    bundle = load(folder)
    assert bundle.format == "staged" and bundle.description == str(folder)
    assert sorted(f.name for f in bundle.files.values()) == ["l0.tar.gz", "l1.tar.gz", "l1.tar.gz.config.json"]


@pytest.mark.parametrize("breaker, error, message", [
    ("two_manifests", BundleError, "holds 2 *.manifest.json files (a.manifest.json, l1.tar.gz.manifest.json)"),
    ("no_config", BundleError, "holds 0 *.config.json files"),
    ("junk_sidecar", BundleError, "holds 'not a digest', not 'sha256:<64 hex>'"),
    ("same_sidecars", BundleError, "both name sha256:"),
    ("foreign_sidecar", BundleError, "which the manifest"),
    ("config_size", SizeMismatch, "size mismatch for config"),
    ("config_bytes", DigestMismatch, "digest mismatch for config"),
    ("config_not_json", ManifestError, "malformed JSON"),
    ("huge_manifest", SourceError, "is larger than 4194304 bytes; it cannot be a manifest or config"),
])
def test_staged_folders_that_do_not_add_up_are_refused(tmp_path, breaker, error, message):
    folder = staged(tmp_path / "b")
    if breaker == "two_manifests":
        shutil.copy(folder / "l1.tar.gz.manifest.json", folder / "a.manifest.json")
    elif breaker == "no_config":
        (folder / "l1.tar.gz.config.json").unlink()
    elif breaker == "junk_sidecar":
        (folder / "l0.tar.gz.digest").write_text("not a digest")
    elif breaker == "same_sidecars":
        shutil.copy(folder / "l0.tar.gz.digest", folder / "l1.tar.gz.digest")
    elif breaker == "foreign_sidecar":
        (folder / "l0.tar.gz.digest").write_text(str(Digest.of_bytes(b"another patch")))
    elif breaker == "config_size":
        (folder / "l1.tar.gz.config.json").write_bytes(b'{"os":"linux", "x": 1}')
    elif breaker == "config_bytes":
        (folder / "l1.tar.gz.config.json").write_bytes(b'{"os":"linux!!"}')
    elif breaker == "config_not_json":
        staged(tmp_path / "c", config=b"not json at all").rename(tmp_path / "c2")
        folder = tmp_path / "c2"
    elif breaker == "huge_manifest":
        (folder / "l1.tar.gz.manifest.json").write_bytes(b" " * (4 << 20) + b"{}")
    with pytest.raises(error) as e:
        load(folder)
    assert message in str(e.value)


@pytest.mark.posix_only  # a FIFO
def test_sidecars_naming_no_file_are_ignored_with_a_warning_and_fifos_are_skipped(tmp_path, caplog):
    folder = staged(tmp_path / "b")
    (folder / "gone.tar.gz.digest").write_text(str(Digest.of_bytes(b"x")))
    os.mkfifo(folder / "a-pipe")
    with caplog.at_level(logging.WARNING, logger="regpatch.bundle"):
        bundle = load(folder)
    assert "gone.tar.gz.digest names no file of the bundle; ignored" in caplog.text
    assert "a-pipe" not in LocalFolderSource(folder).list() and bundle.top is not None


def test_a_staged_bundle_cannot_pick_an_image(tmp_path):
    with pytest.raises(UsageError, match="--image selects an image of an OCI layout"):
        load(staged(tmp_path / "b"), image="ltsc2019")


@pytest.mark.parametrize("files, error, message", [
    ({"manifest.json": b"[]", "repositories": b"{}"}, BundleError, "a docker save manifest.json is a non-empty JSON list"),
    ({"manifest.json": b"[]", "abc/layer.tar": b""}, BundleError, "a docker save manifest.json is a non-empty JSON list"),
    ({"readme.txt": b"hello"}, UnknownBundleFormat, r"is not a patch bundle \(folder with 1 files: readme.txt\); accepted bundles"),
])
def test_folders_that_are_no_bundle_say_what_they_are(tmp_path, files, error, message):
    for name, data in files.items():
        (tmp_path / "b" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "b" / name).write_bytes(data)
    with pytest.raises(error, match=message):
        load(tmp_path / "b")


def test_a_staged_manifest_list_finds_its_children_by_hash_and_patches(site, tmp_path):
    """The seed's staged format holding a manifest list: children and blobs without sidecars
    are matched by size, then by hash; everything lands, children first."""
    imgs = []
    for i, osv in enumerate(("10.0.17763.4", "10.0.20348.4")):
        layer = make_layer(tmp_path / f"i{i}", "l.tar.gz", seed=400 + i, size=(16 + 8 * i) << 10)
        imgs.append(make_image(tmp_path / f"i{i}", [layer], os="windows", os_version=osv, seed=400 + i))
    index = make_index(tmp_path / "idx", imgs)
    folder = tmp_path / "staged-index"
    folder.mkdir()
    shutil.copy(index.manifest_path, folder / "windows.manifest.json")
    for i, img in enumerate(imgs):
        shutil.copy(img.manifest_path, folder / f"child{i}.json")
        shutil.copy(img.config.path, folder / f"child{i}.cfg")
        shutil.copy(img.layers[0].path, folder / f"child{i}.tar.gz")
    (folder / "unrelated.bin").write_bytes(b"same size as nothing")
    result = engine.patch(site.request(folder))
    assert result.tag_moved and site.current() == str(index.manifest_digest).encode()
    for img in imgs:
        assert site.layout.blob_data(img.manifest_digest).read_bytes() == img.manifest_bytes


# --------------------------------------------------------------------------- OCI layouts

@pytest.fixture
def two_image_layout(tmp_path):
    imgs = {}
    for i, name in enumerate(("ltsc2019", "ltsc2022")):
        layer = make_layer(tmp_path / name, "l.tar.gz", seed=500 + i, size=8 << 10)
        imgs[name] = make_image(tmp_path / name, [layer], fmt="oci", os="windows", seed=500 + i)
    return write_oci_layout(tmp_path / "layout", imgs), imgs


def test_an_oci_layout_with_several_images_needs_image(two_image_layout):
    layout, imgs = two_image_layout
    with pytest.raises(UsageError, match=r"holds 2 images \(ltsc2019, ltsc2022\); choose one with --image"):
        load(layout)
    with pytest.raises(UsageError, match="has no image named 'ltsc2025'; it has: ltsc2019, ltsc2022"):
        load(layout, image="ltsc2025")
    assert load(layout, image="ltsc2022").top.digest == imgs["ltsc2022"].manifest_digest


def edit_index(layout, change):
    index = json.loads((layout / "index.json").read_text())
    change(index)
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("breaker, error, message", [
    ("layout_not_json", ManifestError, "oci-layout: malformed JSON"),
    ("layout_v2", UnknownBundleFormat, "declares imageLayoutVersion '2.0.0'; 1.x is supported"),
    ("index_is_manifest", ManifestError, "index.json is not an image index"),
    ("no_images", BundleError, "holds no image (index.json lists no manifest)"),
    ("same_name_twice", BundleError, "names 2 different images 'ltsc2019'"),
    ("size_lies", SizeMismatch, "size mismatch for"),
    ("bytes_changed", DigestMismatch, "digest mismatch for"),
    ("blob_missing", BundleError, "but blobs/sha256/"),
])
def test_oci_layouts_that_do_not_add_up_are_refused(two_image_layout, breaker, error, message):
    layout, imgs = two_image_layout
    top = layout / "blobs" / "sha256" / imgs["ltsc2019"].manifest_digest.hex
    image = "ltsc2019"
    if breaker == "layout_not_json":
        (layout / "oci-layout").write_text("{not json")
    elif breaker == "layout_v2":
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    elif breaker == "index_is_manifest":
        (layout / "index.json").write_bytes(imgs["ltsc2019"].manifest_bytes)
    elif breaker == "no_images":
        edit_index(layout, lambda i: i.update(manifests=[]))
    elif breaker == "same_name_twice":
        edit_index(layout, lambda i: i["manifests"][1]["annotations"].update(
            {"org.opencontainers.image.ref.name": "ltsc2019"}))
    elif breaker == "size_lies":
        edit_index(layout, lambda i: i["manifests"][0].update(size=i["manifests"][0]["size"] + 1))
    elif breaker == "bytes_changed":
        raw = top.read_bytes()
        top.write_bytes(raw.replace(b'"schemaVersion":', b'"schemaVersion" :', 1)[:len(raw)])
    elif breaker == "blob_missing":
        top.unlink()
    with pytest.raises(error) as e:
        load(layout, image=image)
    assert message in str(e.value)


def test_blobs_not_named_by_a_digest_are_ignored_with_a_warning(two_image_layout, caplog):
    layout, imgs = two_image_layout
    (layout / "blobs" / "sha256" / "README").write_text("not a blob")
    with caplog.at_level(logging.WARNING, logger="regpatch.bundle"):
        assert load(layout, image="ltsc2019").top.digest == imgs["ltsc2019"].manifest_digest
    assert "blobs/sha256/README: not named by a sha256 digest" in caplog.text


# --------------------------------------------------------------------------- bundle sources

def test_symlinks_may_not_leave_the_bundle(tmp_path, site):
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the registry")
    folder = staged(tmp_path / "b")
    (folder / "escape.tar.gz").symlink_to(outside)
    before = site.docker_hash()
    with pytest.raises(UnsafePath, match="is a symlink to .*secret.txt, outside the bundle"):
        engine.patch(site.request(folder))
    assert site.docker_hash() == before
    (folder / "escape.tar.gz").unlink()
    (folder / "dir-escape").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafePath, match="outside the bundle"):
        LocalFolderSource(folder).list()
    (folder / "dir-escape").unlink()
    (folder / "dangling.tar.gz").symlink_to(folder / "nowhere")
    with pytest.raises(UnsafePath, match="is a dangling symlink"):
        LocalFolderSource(folder).list()
    (folder / "dangling.tar.gz").unlink()
    (folder / "inside.tar.gz").symlink_to(folder / "l0.tar.gz")  # inside: fine
    assert LocalFolderSource(folder).list()["inside.tar.gz"] == len(b"layer one" * 50)
    for bad in ("/etc/passwd", "../x", "a/../../x", "a\\b"):
        with pytest.raises(UnsafePath, match="is not a plain relative path"):
            LocalFolderSource(folder).open(bad)
    with pytest.raises(SourceError, match="does not exist"):
        LocalFolderSource(folder).open("absent.tar.gz")


def test_bundle_arguments_that_are_files_say_what_to_do_instead(tmp_path):
    def tar(name, members):
        path = tmp_path / name
        src = tmp_path / (name + ".d")
        src.mkdir()
        with tarfile.open(path, "w") as t:
            for m in members:
                (src / m).parent.mkdir(parents=True, exist_ok=True)
                (src / m).write_text("x")
                t.add(src / m, arcname=m)
        return path

    # archives are read in place now (issue 11): what is wrong inside them is named
    cases = {tar("saved.tar", ["manifest.json", "repositories", "abc/layer.tar"]): "'docker save' archive",
             tar("oci.tar", ["oci-layout", "index.json"]): "oci-layout: malformed JSON",
             tar("other.tar", ["readme"]): r"is not a patch bundle \(archive with 1 files: readme\)"}
    plain = tmp_path / "notes.txt"
    plain.write_text("just a file")
    cases[plain] = "too short for a tar archive; accepted bundles"
    for path, message in cases.items():
        with pytest.raises(BundleError, match=message):
            load_bundle(open_source(str(path)))
    with pytest.raises(UsageError, match="bundle .*absent does not exist"):
        open_source(str(tmp_path / "absent"))
    with pytest.raises(UsageError, match="does not exist or is not a folder"):
        LocalFolderSource(plain)


# --------------------------------------------------------------------------- the manifest parser

def manifest(**fields) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": blob(b"{}", DOCKER_CONFIG),
           "layers": [blob(b"x")]}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


@pytest.mark.parametrize("raw, message", [
    (b" " * (4 << 20) + b"{}", "larger than the 4 MiB a registry accepts"),
    (b'{"schemaVersion": 2, "x": "\xff"}', "is not UTF-8 text (invalid start byte at byte 27)"),
    (b'{"schemaVersion": 2,', "malformed JSON"),
    (b"[2]", "a manifest must be a JSON object"),
    (manifest(schemaVersion=1), "Docker schema 1 manifests are not supported"),
    (manifest(mediaType="application/vnd.docker.distribution.manifest.v1+prettyjws"), "schema 1"),
    (manifest(schemaVersion=3), "schemaVersion must be 2, got 3"),
    (manifest(mediaType="application/x-custom"), "unsupported manifest media type 'application/x-custom'"),
    (manifest(config=None), "an image manifest needs a 'config' descriptor"),
    (manifest(layers={"a": 1}), "an image manifest needs a 'layers' list"),
    (manifest(layers=["sha256:abc"]), "layers[0]: a descriptor must be a JSON object"),
    (manifest(layers=[{"digest": "md5:abc", "size": 1}]), "layers[0]: invalid digest 'md5:abc'"),
    (manifest(layers=[{**blob(b"x"), "size": -1}]), "'size' must be a non-negative integer, got -1"),
    (manifest(layers=[{**blob(b"x"), "size": True}]), "'size' must be a non-negative integer, got True"),
    (manifest(layers=[{**blob(b"x"), "mediaType": 5}]), "'mediaType' must be a string"),
    (manifest(layers=[{**blob(b"x"), "urls": "http://x"}]), "'urls' must be a list of strings"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}).encode(),
     "an image index needs a 'manifests' list"),
    (json.dumps({"schemaVersion": 2, "manifests": [blob(b"{}", "text/plain")]}).encode(),
     "manifests[0]: unsupported child media type 'text/plain'"),
])
def test_manifests_the_registry_would_refuse_are_refused_first(raw, message):
    with pytest.raises(ManifestError) as e:
        parse_manifest(raw, what="bundle/x.manifest.json")
    assert str(e.value).startswith("bundle/x.manifest.json") and message in str(e.value)


def test_manifests_are_read_never_rewritten():
    raw = json.dumps({"schemaVersion": 2, "config": blob(b"{}", DOCKER_CONFIG),
                      "layers": [{**blob(b"x"), "urls": ["https://mirror/x"], "annotations": {"k": "v"}}]},
                     indent=3).encode()
    m = parse_manifest(raw, what="x")
    assert (m.media_type, m.raw, m.digest) == (OCI_MANIFEST, raw, Digest.of_bytes(raw))  # mediaType inferred
    # urls on an ordinary layer do not make it foreign (only the media type does)
    assert not m.layers[0].is_foreign and m.layers[0].annotation("k") == "v" and not m.is_index
    index = parse_manifest(json.dumps({"schemaVersion": 2, "manifests": [
        {**blob(raw, OCI_MANIFEST), "platform": {"os": "windows", "architecture": "amd64",
                                                 "os.version": "10.0.17763.1"}}]}).encode(), what="i")
    assert index.is_index and index.media_type == OCI_INDEX
    assert str(index.manifests[0].platform) == "windows/amd64 10.0.17763.1"
    assert str(Platform("linux", "arm64", variant="v8")) == "linux/arm64/v8"
