"""The reader of skopeo's ``dir:`` format (``version`` file, ``manifest.json``, blobs named by their hex digest)."""

from __future__ import annotations

from typing import Optional

from regpatch.bundle.model import BundleFile, BundleSource, PatchBundle, _is_hex
from regpatch.digest import Digest
from regpatch.errors import BundleError, UnknownBundleFormat, UsageError
from regpatch.manifest import MAX_MANIFEST_SIZE, parse_manifest
from regpatch.options import opt

DIR_VERSION_PREFIX = b"Directory Transport Version: 1."


def _load_dir(source: BundleSource, files: dict[str, int], image: Optional[str]) -> PatchBundle:
    where = source.description
    if "version" in files:
        version = source.read_bytes("version", 256)
        if not version.startswith(DIR_VERSION_PREFIX):
            raise UnknownBundleFormat(f"{source.describe('version')} holds {version[:60]!r}, not "
                                      "'Directory Transport Version: 1.x': not a dir: folder regpatch knows")
    if image:
        raise UsageError(f"{opt.image} selects an image of an OCI layout or a docker save archive; {where} is "
                         "a dir: folder holding one image (or one manifest list)")
    raw = source.read_bytes("manifest.json", MAX_MANIFEST_SIZE)
    top = parse_manifest(raw, what=source.describe("manifest.json"))
    bundle_files: dict[Digest, BundleFile] = {}
    for name, size in files.items():
        if "/" in name:
            continue
        hexpart = name[:-len(".manifest.json")] if name.endswith(".manifest.json") else name
        if _is_hex(hexpart):
            d = Digest("sha256", hexpart)
            if d in bundle_files:
                raise BundleError(f"{where} holds {d} twice ({bundle_files[d].name} and {name})")
            bundle_files[d] = BundleFile(name, size, d, False)
    # manifest.json is the top manifest's blob too (a child or a list may name it)
    bundle_files.setdefault(top.digest, BundleFile("manifest.json", len(raw), top.digest, True))
    return PatchBundle(source, "dir", top, bundle_files)

