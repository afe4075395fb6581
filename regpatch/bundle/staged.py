"""The reader of the seed's staged folder: the layers, the config and the manifest under the names the
manual procedure gives them, with ``.digest`` sidecars (or hashed when a sidecar is missing)."""

from __future__ import annotations

import logging

from regpatch.bundle.model import MAX_CONFIG_SIZE, BundleFile, BundleSource, PatchBundle
from regpatch.digest import Digest
from regpatch.errors import BundleError, DigestMismatch, InvalidReference, ManifestError, RegpatchError, SizeMismatch
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, ImageManifest, Manifest, load_json, parse_manifest

log = logging.getLogger("regpatch.bundle")


def _reachable_names(bundle: PatchBundle) -> list[str]:
    """Bundle files of every blob of the top image(s): what a patch may read."""
    top = bundle.top
    images = [top]
    if isinstance(top, ImageIndex):
        for i, d in enumerate(top.manifests):
            try:
                child = bundle.read_manifest(d, f"{bundle.description} manifests[{i}]")
            except RegpatchError:
                child = None
            if isinstance(child, ImageManifest):
                images.append(child)
    names = []
    for img in images:
        if isinstance(img, ImageManifest):
            for d in img.blobs():
                f = bundle.files.get(d.digest)
                if f is not None:
                    names.append(f.name)
    return names


def _is_manifest_name(name: str) -> bool:
    return name.endswith(".manifest.json")


def _read_sidecar(source: BundleSource, name: str) -> Digest:
    raw = source.read_bytes(name, 1024)
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if len(text) == 64 and ":" not in text:
        text = "sha256:" + text
    try:
        return Digest.parse(text.lower())
    except InvalidReference:
        raise BundleError(f"digest sidecar {source.describe(name)} holds {text[:80]!r}, "
                          "not 'sha256:<64 hex>'") from None


def _load_staged(source: BundleSource, files: dict[str, int]) -> PatchBundle:
    top_level = {n: s for n, s in files.items() if "/" not in n}
    manifests = sorted(n for n in top_level if _is_manifest_name(n))
    if len(manifests) != 1:
        raise BundleError(f"staged bundle {source.description} holds {len(manifests)} *.manifest.json "
                          f"files ({', '.join(manifests)}); it must hold exactly one")
    mname = manifests[0]
    raw = source.read_bytes(mname, MAX_MANIFEST_SIZE)
    top = parse_manifest(raw, what=source.describe(mname))

    bundle_files: dict[Digest, BundleFile] = {}
    unmatched: dict[str, int] = {}
    sidecars = {n for n in top_level if n.endswith(".digest")}
    for name, size in sorted(top_level.items()):
        if name in sidecars or name == mname:
            continue
        if name + ".digest" in sidecars:
            claimed = _read_sidecar(source, name + ".digest")
            if claimed in bundle_files:
                raise BundleError(f"{source.describe(name)}.digest and "
                                  f"{source.describe(bundle_files[claimed].name)}.digest both name {claimed}; "
                                  "one of the sidecars is wrong")
            bundle_files[claimed] = BundleFile(name, size, claimed, False)
        else:
            unmatched[name] = size
    for sc in sorted(sidecars):
        if sc[: -len(".digest")] not in top_level:
            log.warning("digest sidecar %s names no file of the bundle; ignored", source.describe(sc))

    bundle = PatchBundle(source, "staged", top, bundle_files, unmatched)

    configs = sorted(n for n in top_level if n.endswith(".config.json"))
    if isinstance(top, ImageManifest):
        if len(configs) != 1:
            raise BundleError(f"staged bundle {source.description} holds {len(configs)} *.config.json "
                              f"files ({', '.join(configs)}); it must hold exactly one")
        cname = configs[0]
        craw = source.read_bytes(cname, MAX_CONFIG_SIZE)
        what = source.describe(cname)
        if len(craw) != top.config.size:
            raise SizeMismatch(f"config {what}", top.config.size, len(craw))
        cdigest = Digest.of_bytes(craw)
        if cdigest != top.config.digest:
            raise DigestMismatch(f"config {what}", top.config.digest, cdigest, len(craw))
        if not isinstance(load_json(craw, what=f"config {what}"), dict):
            raise ManifestError(f"config {what} is not a JSON object")
        unmatched.pop(cname, None)
        bundle_files[cdigest] = BundleFile(cname, len(craw), cdigest, True)

    referenced = _referenced_digests(top)
    for d, f in bundle_files.items():
        if not f.verified and d not in referenced and isinstance(top, ImageManifest):
            raise BundleError(f"sidecar {source.describe(f.name)}.digest names {d}, which the manifest "
                              f"{source.describe(mname)} does not reference; the sidecar or the manifest "
                              "belongs to another patch")
    return bundle


def _referenced_digests(top: Manifest) -> set[Digest]:
    if isinstance(top, ImageManifest):
        return {d.digest for d in top.blobs()}
    return {d.digest for d in top.manifests}

