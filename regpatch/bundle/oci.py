"""The OCI image layout reader (``oci-layout``, ``index.json``, ``blobs/sha256``): one image picked by its
``org.opencontainers.image.ref.name`` annotation when the layout holds several."""

from __future__ import annotations

import logging
from typing import Optional

from regpatch.bundle.model import REF_NAME, BundleFile, BundleSource, PatchBundle
from regpatch.digest import Digest
from regpatch.errors import BundleError, InvalidReference, ManifestError, UnknownBundleFormat, UsageError
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, load_json, parse_manifest
from regpatch.options import opt

log = logging.getLogger("regpatch.bundle")


def _load_oci_layout(source: BundleSource, files: dict[str, int], image: Optional[str]) -> PatchBundle:
    where = source.description
    layout = load_json(source.read_bytes("oci-layout", 4096), what=f"{where}/oci-layout")
    if not isinstance(layout, dict):
        raise ManifestError(f"{where}/oci-layout is not a JSON object")
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise UnknownBundleFormat(f"{where}/oci-layout declares imageLayoutVersion {version!r}; 1.x is supported")
    index = parse_manifest(source.read_bytes("index.json", MAX_MANIFEST_SIZE), what=f"{where}/index.json")
    if not isinstance(index, ImageIndex):
        raise ManifestError(f"{where}/index.json is not an image index")
    candidates = list(index.manifests)
    if not candidates:
        raise BundleError(f"OCI layout {where} holds no image (index.json lists no manifest)")
    names = [d.annotation(REF_NAME) or "(unnamed)" for d in candidates]
    if image is not None:
        chosen = [d for d in candidates if d.annotation(REF_NAME) == image]
        if not chosen:
            raise UsageError(f"OCI layout {where} has no image named {image!r}; it has: {', '.join(names)}")
        if len(chosen) > 1 and len({d.digest for d in chosen}) > 1:
            raise BundleError(f"OCI layout {where} names {len(chosen)} different images {image!r}")
        desc = chosen[0]
    elif len(candidates) == 1:
        desc = candidates[0]
    else:
        raise UsageError(f"OCI layout {where} holds {len(candidates)} images ({', '.join(names)}); "
                         f"choose one with {opt.image}")

    bundle_files: dict[Digest, BundleFile] = {}
    for name, size in files.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
            try:
                d = Digest.parse("sha256:" + parts[2])
            except InvalidReference:
                log.warning("ignoring %s: not named by a sha256 digest", source.describe(name))
                continue
            bundle_files[d] = BundleFile(name, size, d, False)
    fmt = "oci-archive" if getattr(source, "compression", None) else "oci-layout"
    bundle = PatchBundle(source, fmt, None, bundle_files)  # type: ignore[arg-type]
    top = bundle.read_manifest(desc, f"{where}/index.json")
    if top is None:
        raise BundleError(f"OCI layout {where}: index.json names {desc.digest}, but "
                          f"blobs/sha256/{desc.digest.hex} is missing")
    bundle.top = top
    return bundle

