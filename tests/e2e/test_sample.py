"""Sample images are real: deterministic tar.gz layers, valid configs, and
they survive a push to a real registry and a verifying pull by skopeo/podman."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
import tempfile

import pytest
from support.util import skopeo, skopeo_inspect_digest, skopeo_inspect_raw, skopeo_pull

from regpatch.demo.images import (
    make_image,
    make_index,
    make_layer,
    push_with_skopeo,
    scenario_servercore,
    write_oci_layout,
    write_staged_bundle,
)
from regpatch.digest import Digest
from regpatch.manifest import (
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    parse_manifest,
)


def sha256_file(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_layer_is_a_deterministic_tar_gz(tmp_path):
    a = make_layer(tmp_path / "a", "base", seed=7, size=300_000)
    b = make_layer(tmp_path / "b", "base.tar.gz", seed=7, size=300_000)
    c = make_layer(tmp_path / "c", "base", seed=8, size=300_000)
    assert a.path.name == b.path.name == "base.tar.gz"
    assert a.digest == b.digest and a.diff_id == b.diff_id and a.size == b.size
    assert c.digest != a.digest
    raw = a.path.read_bytes()
    assert str(a.digest) == sha256_file(a.path) and a.size == len(raw)
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    tar_bytes = gzip.decompress(raw)
    assert a.diff_id == Digest.of_bytes(tar_bytes)
    assert a.media_type == DOCKER_LAYER
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"regpatch", "regpatch/base-7.txt", "regpatch/base-7.bin"}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values())
        data = tar.extractfile("regpatch/base-7.bin").read()
        assert b"seed=7" in tar.extractfile("regpatch/base-7.txt").read()
    assert len(data) == 300_000
    # content is Random(seed).randbytes generated in 1 MiB chunks
    assert data == random.Random(7).randbytes(300_000)


def test_uncompressed_layer_and_oci_media_type(tmp_path):
    layer = make_layer(tmp_path, "big", seed=1, size=3 << 20, compresslevel=0, oci=True)
    assert layer.media_type == OCI_LAYER
    assert layer.size > 3 << 20  # stored, not compressed
    assert layer.diff_id == Digest.of_bytes(gzip.decompress(layer.path.read_bytes()))


@pytest.mark.parametrize("fmt,media_type", [("docker", DOCKER_MANIFEST), ("oci", OCI_MANIFEST)])
def test_image_manifest_and_config_are_valid(tmp_path, fmt, media_type):
    layers = [make_layer(tmp_path, "base", seed=1, size=1000), make_layer(tmp_path, "delta", seed=2, size=500)]
    img = make_image(tmp_path, layers, fmt=fmt, os="windows", os_version="10.0.17763.1", seed=3)
    assert img.media_type == media_type
    assert img.manifest_digest == Digest.of_bytes(img.manifest_bytes)
    assert img.manifest_path.read_bytes() == img.manifest_bytes
    assert img.manifest_bytes.endswith(b"}\n") and b"\n   " in img.manifest_bytes  # pretty
    m = parse_manifest(img.manifest_bytes, what="sample")
    assert m.config.digest == img.config.digest == Digest.of_bytes(img.config.path.read_bytes())
    assert [d.digest for d in m.layers] == [l.digest for l in layers]
    assert [d.size for d in m.layers] == [l.size for l in layers]
    config = json.loads(img.config.path.read_bytes())
    assert config["architecture"] == "amd64" and config["os"] == "windows"
    assert config["os.version"] == "10.0.17763.1"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [str(l.diff_id) for l in layers]}
    compact = make_image(tmp_path / "compact", layers, fmt=fmt, pretty=False)
    assert b"\n" not in compact.manifest_bytes


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_pushed_image_pulls_back_with_same_digest(tmp_path, registry, fmt):
    layers = [make_layer(tmp_path, "base", seed=11, size=200_000),
              make_layer(tmp_path, "delta", seed=12, size=50_000)]
    img = make_image(tmp_path, layers, fmt=fmt)
    layout = write_oci_layout(tmp_path / "layout", {"v1": img})
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for blob in img.blobs:
        assert sha256_file(layout / "blobs" / "sha256" / blob.digest.hex) == str(blob.digest)

    push_with_skopeo(layout, "v1", registry.host, "sample/app", "v1")

    assert skopeo_inspect_digest(registry.host, "sample/app", "v1") == str(img.manifest_digest)
    pulled = skopeo_pull(registry.host, "sample/app", "v1", tmp_path / "pulled")
    assert (pulled / "manifest.json").read_bytes() == img.manifest_bytes
    for blob in img.blobs:
        assert sha256_file(pulled / blob.digest.hex) == str(blob.digest)
    # the blobs are in the registry's storage, where DESIGN.md says
    data = registry.root / "docker/registry/v2/blobs/sha256" / img.manifest_digest.hex[:2] / img.manifest_digest.hex / "data"
    assert data.read_bytes() == img.manifest_bytes


def test_windows_index_pushes_and_pulls_with_all(tmp_path, registry):
    ltsc2019 = make_image(tmp_path, [make_layer(tmp_path, "ltsc2019", seed=1, size=100_000)],
                          os="windows", os_version="10.0.17763.1", seed=1)
    ltsc2022 = make_image(tmp_path, [make_layer(tmp_path, "ltsc2022", seed=2, size=80_000)],
                          os="windows", os_version="10.0.20348.1", seed=2)
    index = make_index(tmp_path, [ltsc2019, ltsc2022])
    assert index.media_type == DOCKER_LIST
    doc = json.loads(index.manifest_bytes)
    assert [c["platform"] for c in doc["manifests"]] == [
        {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1"},
        {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.1"}]
    layout = write_oci_layout(tmp_path / "layout", {"servercore": index})

    push_with_skopeo(layout, "servercore", registry.host, "windows/servercore", "ltsc")

    assert skopeo_inspect_digest(registry.host, "windows/servercore", "ltsc") == str(index.manifest_digest)
    for child in (ltsc2019, ltsc2022):
        assert skopeo_inspect_raw(registry.host, "windows/servercore", str(child.manifest_digest)) \
            == child.manifest_bytes
    pulled = skopeo_pull(registry.host, "windows/servercore", "ltsc", tmp_path / "pulled")
    assert (pulled / "manifest.json").read_bytes() == index.manifest_bytes
    for child in (ltsc2019, ltsc2022):
        assert (pulled / f"{child.manifest_digest.hex}.manifest.json").read_bytes() == child.manifest_bytes
        for blob in child.blobs:
            assert sha256_file(pulled / blob.digest.hex) == str(blob.digest)
    # no linux/amd64 child: a plain (platform-choosing) pull must refuse
    proc = skopeo("copy", f"docker://{registry.host}/windows/servercore:ltsc", f"dir:{tmp_path / 'one'}",
                  check=False)
    assert proc.returncode != 0 and b"no image found in manifest list" in proc.stderr


def test_oci_index_pushes_with_ref_name(tmp_path, registry):
    imgs = [make_image(tmp_path, [make_layer(tmp_path, f"l{i}", seed=i, size=10_000)], fmt="oci",
                       os="windows", os_version=v, seed=i)
            for i, v in enumerate(["10.0.17763.1", "10.0.20348.1"])]
    index = make_index(tmp_path, imgs, fmt="oci")
    assert index.media_type == OCI_INDEX
    other = make_image(tmp_path, [make_layer(tmp_path, "x", seed=9, size=1000)], fmt="oci")
    layout = write_oci_layout(tmp_path / "layout", {"idx": index, "other": other})
    push_with_skopeo(layout, "idx", registry.host, "oci/index", "t")
    assert skopeo_inspect_digest(registry.host, "oci/index", "t") == str(index.manifest_digest)
    with pytest.raises(RuntimeError, match="has no ref 'missing'"):
        push_with_skopeo(layout, "missing", registry.host, "oci/index", "t")


def test_podman_pulls_and_extracts_the_layers(tmp_path, registry):
    layers = [make_layer(tmp_path, "base", seed=21, size=64_000), make_layer(tmp_path, "delta", seed=22, size=32_000)]
    img = make_image(tmp_path, layers)
    push_with_skopeo(write_oci_layout(tmp_path / "layout", {"x": img}), "x", registry.host, "podman/x", "1")
    ref = f"{registry.host}/podman/x:1"
    # a private podman storage; podman wants a runroot path shorter than 50 characters
    with tempfile.TemporaryDirectory(prefix="rp-run-") as runroot:
        podman = ["podman", "--root", str(tmp_path / "p-root"), "--runroot", runroot,
                  "--storage-driver", "vfs"]
        for args in (["pull", "--quiet", "--tls-verify=false", ref], ["create", "--name", "x", ref, "true"],
                     ["export", "-o", str(tmp_path / "fs.tar"), "x"]):
            proc = subprocess.run(podman + args, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"podman {args[0]} failed: {proc.stderr}"
    with tarfile.open(tmp_path / "fs.tar") as tar:
        assert tar.extractfile("regpatch/base-21.bin").read() == random.Random(21).randbytes(64_000)
        assert tar.extractfile("regpatch/delta-22.bin").read() == random.Random(22).randbytes(32_000)


def test_staged_bundle_files_are_what_they_claim(tmp_path):
    layers = [make_layer(tmp_path, "b", seed=1, size=20_000), make_layer(tmp_path, "d", seed=2, size=10_000)]
    img = make_image(tmp_path, layers, os="windows", os_version="10.0.17763.1")
    staged = write_staged_bundle(tmp_path / "staged", img)
    assert sorted(p.name for p in staged.iterdir()) == [
        "base.tar.gz", "base.tar.gz.digest", "delta.tar.gz", "delta.tar.gz.config.json",
        "delta.tar.gz.digest", "delta.tar.gz.manifest.json"]
    for name, layer in zip(["base.tar.gz", "delta.tar.gz"], layers):
        sidecar = (staged / f"{name}.digest").read_bytes()
        assert sidecar == f"{layer.digest}\r\n".encode()
        assert sidecar.decode().strip() == sha256_file(staged / name)
    manifest = (staged / "delta.tar.gz.manifest.json").read_bytes()
    assert manifest == img.manifest_bytes
    m = parse_manifest(manifest, what="staged manifest")
    assert m.config.digest == Digest.parse(sha256_file(staged / "delta.tar.gz.config.json"))
    assert [str(d.digest) for d in m.layers] == [sha256_file(staged / n) for n in ("base.tar.gz", "delta.tar.gz")]

    bare = write_staged_bundle(tmp_path / "bare", img, names=["one.tgz", "two.tgz"], sidecars=False)
    assert sorted(p.name for p in bare.iterdir()) == [
        "one.tgz", "two.tgz", "two.tgz.config.json", "two.tgz.manifest.json"]


def test_scenario_servercore_old_and_new_both_pull(tmp_path, registry):
    s = scenario_servercore(tmp_path / "s", base_size=40_000, delta_size=10_000)
    old, new = s["old"], s["new"]
    assert {b.digest for b in old.blobs}.isdisjoint(b.digest for b in new.blobs)
    assert old.manifest_digest != new.manifest_digest
    assert (s["staged"] / "delta.tar.gz.manifest.json").read_bytes() == new.manifest_bytes
    push_with_skopeo(s["old_layout"], s["ref"], registry.host, s["repository"], s["tag"])
    assert skopeo_inspect_digest(registry.host, s["repository"], s["tag"]) == str(old.manifest_digest)
    push_with_skopeo(s["new_layout"], s["ref"], registry.host, s["repository"], "next")
    assert skopeo_inspect_digest(registry.host, s["repository"], "next") == str(new.manifest_digest)
    pulled = skopeo_pull(registry.host, s["repository"], str(old.manifest_digest), tmp_path / "old")
    assert (pulled / "manifest.json").read_bytes() == old.manifest_bytes
