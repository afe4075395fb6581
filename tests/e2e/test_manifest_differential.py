"""Manifests read as the registry and its clients read them: every document regpatch
accepts, the real registry (Debian's docker-registry 2.8.2) accepts on a ``PUT`` and
skopeo (containers/image) pulls; every document regpatch refuses, the registry refuses
(400 MANIFEST_INVALID or unsupported: under the media type the document declares or,
without one, under either OCI type) or skopeo refuses to pull. Registry 2.8 checks the
fields of both kinds only for OCI types; a Docker schema 2 manifest or list carrying the
other kind's fields is taken by the registry and rejected by skopeo as ambiguous, so
regpatch refuses it.

The blobs the manifests name are uploaded first, so that a refusal is the registry's
reading of the document itself, not a missing blob.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from support.util import skopeo

from regpatch.errors import ManifestError
from regpatch.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, parse_manifest

REPO = "differential"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(client: httpx.Client, data: bytes) -> dict:
    r = client.post(f"/v2/{REPO}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    sep = "&" if "?" in location else "?"
    r = client.put(f"{location}{sep}digest={_digest(data)}", content=data,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return {"digest": _digest(data), "size": len(data)}


def _put(client: httpx.Client, doc: dict, media_type: str, ref: str) -> int:
    raw = json.dumps(doc).encode()
    return client.put(f"/v2/{REPO}/manifests/{ref}", content=raw, headers={"Content-Type": media_type}).status_code


@pytest.fixture
def world(registry):
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        config = _upload(client, json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": []}}).encode())
        layer = _upload(client, b"\x1f\x8b" + b"layer bytes" * 100)
        image = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, **config},
                 "layers": [{"mediaType": OCI_LAYER, **layer}]}
        raw = json.dumps(image).encode()
        assert _put(client, image, OCI_MANIFEST, "base") == 201
        child = {"mediaType": OCI_MANIFEST, "digest": _digest(raw), "size": len(raw),
                 "platform": {"architecture": "amd64", "os": "linux"}}
        yield client, config, layer, child


def _documents(config: dict, layer: dict, child: dict) -> dict[str, dict]:
    oci_config = {"mediaType": OCI_CONFIG, **config}
    oci_layers = [{"mediaType": OCI_LAYER, **layer}]
    docker_config = {"mediaType": DOCKER_CONFIG, **config}
    docker_layers = [{"mediaType": DOCKER_LAYER, **layer}]
    docker_child = {**child, "mediaType": OCI_MANIFEST}
    return {
        "oci-manifest": {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": oci_config, "layers": oci_layers},
        "oci-manifest-without-mediatype": {"schemaVersion": 2, "config": oci_config, "layers": oci_layers},
        "oci-index": {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]},
        "oci-index-without-mediatype": {"schemaVersion": 2, "manifests": [child]},
        "docker-manifest": {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": docker_config,
                            "layers": docker_layers},
        "docker-list": {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [docker_child]},
        # the CVE-2021-41190 class: fields of both kinds
        "both-without-mediatype": {"schemaVersion": 2, "config": oci_config, "layers": oci_layers,
                                   "manifests": [child]},
        "oci-manifest-with-manifests": {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": oci_config,
                                        "layers": oci_layers, "manifests": [child]},
        "oci-index-with-layers": {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child],
                                  "layers": oci_layers},
        "oci-index-with-config": {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child],
                                  "config": oci_config},
        "docker-manifest-with-manifests": {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                           "config": docker_config, "layers": docker_layers,
                                           "manifests": [docker_child]},
        "docker-list-with-layers": {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [docker_child],
                                    "layers": docker_layers},
        "docker-list-with-config": {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [docker_child],
                                    "config": docker_config},
        "layers-and-manifests-without-config": {"schemaVersion": 2, "layers": oci_layers, "manifests": [child]},
        "unknown-media-type": {"schemaVersion": 2, "mediaType": "application/vnd.example.manifest+json",
                               "config": oci_config, "layers": oci_layers},
        "schema-version-3": {"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": oci_config,
                             "layers": oci_layers},
    }


def _registry_accepts(client: httpx.Client, name: str, doc: dict, regpatch_type: str | None) -> str | None:
    """The tag the registry took it under (the type regpatch decided; for a document
    regpatch refuses: its declared type or, without one, either OCI type), or None."""
    if regpatch_type:
        types = [regpatch_type]
    elif isinstance(doc.get("mediaType"), str):
        types = [doc["mediaType"]]
    else:
        types = [OCI_MANIFEST, OCI_INDEX]
    for i, t in enumerate(types):
        if _put(client, doc, t, f"{name}-{i}") == 201:
            return f"{name}-{i}"
    return None


def _skopeo_pulls(host: str, tag: str, tmp) -> bool:
    p = skopeo("copy", "--all", f"docker://{host}/{REPO}:{tag}", f"dir:{tmp / tag}", check=False)
    return p.returncode == 0


def test_regpatch_accepts_a_manifest_exactly_when_the_registry_and_skopeo_do(world, registry, tmp_path):
    client, config, layer, child = world
    verdicts = {}
    for name, doc in _documents(config, layer, child).items():
        raw = json.dumps(doc).encode()
        try:
            mine: str | None = parse_manifest(raw, what=name).media_type
        except ManifestError:
            mine = None
        tag = _registry_accepts(client, name, doc, mine)
        pulled = tag is not None and _skopeo_pulls(registry.host, tag, tmp_path)
        verdicts[name] = (mine is not None, tag is not None, pulled)
    print("\nmanifest differential (regpatch, registry PUT, skopeo copy):")
    for name, (mine_ok, put_ok, pull_ok) in verdicts.items():
        print(f"  {name:40s} regpatch {'accepts' if mine_ok else 'refuses'}, "
              f"registry {'accepts' if put_ok else 'refuses'}, skopeo {'pulls' if pull_ok else 'refuses'}")
    assert all(mine == (put and pull) for mine, put, pull in verdicts.values()), verdicts
    assert sum(mine for mine, _, _ in verdicts.values()) == 6  # the six well-formed kinds


def test_a_bundle_index_that_names_an_image_as_an_index_is_refused():
    doc = {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 2},
           "layers": []}
    with pytest.raises(ManifestError, match="described as .* but the document is"):
        parse_manifest(json.dumps(doc).encode(), what="m", media_type_hint=OCI_INDEX)
