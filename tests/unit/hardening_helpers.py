"""Small hand-made bundles and storages for the hardening tests (real files in tmp_path).

The manifests are written byte by byte here, so a test can put in exactly the
hostile detail it is about (a duplicate key, a nested array, a layer URL).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle
from regpatch.digest import Digest
from regpatch.engine.plan import make_plan
from regpatch.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST
from regpatch.reference import Repository, Tag
from regpatch.storage.store import RegistryStore

REPO, TAG = Repository.parse("app"), Tag.parse("v1")
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data: bytes, media_type: str, urls: Optional[list[str]] = None) -> dict:
    d = {"mediaType": media_type, "size": len(data), "digest": digest_of(data)}
    if urls is not None:
        d["urls"] = urls
    return d


def manifest_bytes(layers: list[dict], *, config: bytes = CONFIG, oci: bool = False) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
           "config": descriptor(config, OCI_CONFIG if oci else DOCKER_CONFIG), "layers": layers}
    return json.dumps(doc, indent=2).encode()


def staged_bundle(dest: Path, manifest: bytes, files: dict[str, bytes], *,
                  config: bytes = CONFIG, sidecars: bool = True) -> Path:
    """A staged folder: ``files`` (with ``.digest`` sidecars), ``app.manifest.json``,
    ``app.config.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
        if sidecars:
            (dest / f"{name}.digest").write_text(digest_of(data))
    (dest / "app.manifest.json").write_bytes(manifest)
    (dest / "app.config.json").write_bytes(config)
    return dest


def simple_bundle(dest: Path, layer: bytes = b"layer bytes", **kw) -> Path:
    return staged_bundle(dest, manifest_bytes([descriptor(layer, DOCKER_LAYER)]), {"layer.tar.gz": layer}, **kw)


def empty_storage(root: Path) -> Path:
    (root / "docker" / "registry" / "v2").mkdir(parents=True)
    return root


def plan(bundle: Path, store: RegistryStore, **kw):
    return make_plan(load_bundle(LocalFolderSource(bundle)), store, REPO, TAG, **kw)


def write_blob(store: RegistryStore, data: bytes) -> Digest:
    d = Digest.of_bytes(data)
    store.write_manifest_blob(d, data)
    return d
