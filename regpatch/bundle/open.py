"""Patch bundle readers: every on-disk image format operators carry across the gap.

All produce a ``PatchBundle``: the top manifest (exact bytes), and a way to
find the bundle file that holds any digest. Formats (``detect_format``):

- ``oci-layout``: an OCI image layout folder (``oci-layout``, ``index.json``,
  ``blobs/sha256``); as ``oci-archive`` when it is packed in a tar (plain or
  compressed), read in place (``archive.py``);
- ``dir``: skopeo's ``dir:`` folder (``version``, ``manifest.json``, blobs
  named by hex, children of a list as ``<hex>.manifest.json``), as skopeo,
  ``podman save --format docker-dir`` and ``skopeo sync`` write it;
- ``docker-archive``: a ``docker save`` archive (tar or unpacked folder): its
  layers are uncompressed, so it is converted the way ``docker push`` would
  (``dockersave.py``), and the manifest digest is new;
- ``staged``: the seed's staged folder.

Digests are kept byte for byte for all but ``docker-archive``. Nothing is
hashed here beyond manifests and configs, except staged files without a
``.digest`` sidecar (matched to descriptors by size first, then by hash) and
the layers of a ``docker save`` archive (compressed to learn their digest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from regpatch.bundle.archive import LocalArchiveFile, SourceArchiveFile, open_archive
from regpatch.bundle.dockersave import load_docker_save
from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.model import ACCEPTED_FORMATS, ARCHIVE_SUFFIXES, BundleSource, PatchBundle, _is_hex
from regpatch.bundle.oci import _load_oci_layout
from regpatch.bundle.s3 import S3Source
from regpatch.bundle.skopeo_dir import _load_dir
from regpatch.bundle.staged import _is_manifest_name, _load_staged, _reachable_names
from regpatch.errors import UnknownBundleFormat, UsageError
from regpatch.manifest import MAX_MANIFEST_SIZE
from regpatch.options import opt

if TYPE_CHECKING:
    pass

log = logging.getLogger("regpatch.bundle")


FORMATS = ("oci-layout", "oci-archive", "dir", "docker-archive", "staged")
FOREIGN_KEEP, FOREIGN_INCLUDE = "keep", "include"


def detect_format(source: BundleSource) -> str:
    """Which format a source holds ("oci-layout", "dir", "docker-archive", "staged"), from its
    file names and a few small files; UnknownBundleFormat naming what it found otherwise."""
    files = source.list()
    if "oci-layout" in files and "index.json" in files:
        return "oci-layout"  # docker 25+ 'docker save' archives are OCI layouts too: digests kept
    if "manifest.json" in files:
        head = source.read_bytes("manifest.json", MAX_MANIFEST_SIZE).lstrip()
        if head[:1] == b"[":
            return "docker-archive"
        if "version" in files:
            return "dir"
        if head[:1] == b"{" and any(_is_hex(n) for n in files):
            log.warning("%s has manifest.json and blobs named by hex but no 'version' file: read as a "
                        "dir: folder", source.description)
            return "dir"
    if any(_is_manifest_name(n) for n in files if "/" not in n):
        return "staged"
    raise UnknownBundleFormat(_unknown_folder(source, files))


def _unknown_folder(source: BundleSource, files: dict[str, int]) -> str:
    where = source.description
    archive = getattr(source, "compression", None) is not None
    kind = "archive" if archive else "folder"
    if "repositories" in files or any(n.endswith("/layer.tar") for n in files):
        return (f"{where} is an old 'docker save' {kind} without manifest.json (Docker before 1.10); "
                "load it (docker load / podman load) and save it again, or export it with "
                "'skopeo copy docker-daemon:IMAGE oci-archive:FILE.tar'")
    tops = sorted({n.split("/", 1)[0] for n in files})
    if len(tops) == 1 and any("/" in n for n in files):
        return (f"{where} holds only the folder {tops[0]!r}: pass that folder (unpack the archive, "
                "or re-create it from inside the folder: tar -C FOLDER -cf FILE.tar .)")
    if any(n in ("etc", "usr", "bin") or n.startswith(("etc/", "usr/", "bin/")) for n in files):
        return (f"{where} looks like a root filesystem (a single layer), not an image: build an image "
                "from it (podman import FILE; podman save --format oci-archive) first")
    if "index.json" in files and "oci-layout" not in files:
        return (f"{where} has index.json but no oci-layout file: it is not a complete OCI image "
                "layout; copy it again with skopeo copy ... oci:DIR")
    shown = ", ".join(sorted(files)[:6]) + (", ..." if len(files) > 6 else "")
    return (f"{where} is not a patch bundle ({kind} with {len(files)} files: {shown or 'none'}); "
            + ACCEPTED_FORMATS)


def load_bundle(source: BundleSource, *, image: Optional[str] = None, scratch: Optional[Path] = None,
                foreign_layers: str = FOREIGN_KEEP, gzip_level: Optional[int] = None) -> PatchBundle:
    """Read a bundle of any format (``detect_format``) and select its image.

    ``image``: of a bundle holding several (OCI layout/archive: ref name;
    docker save archive: one of its RepoTags). ``scratch``, ``foreign_layers``
    and ``gzip_level`` only matter for docker save archives (``dockersave``):
    converted layers are written into ``scratch`` (a folder on the registry's
    filesystem, e.g. beside its staging folder; without it they are compressed
    twice: once to learn the digest, once while staged).
    """
    if foreign_layers not in (FOREIGN_KEEP, FOREIGN_INCLUDE):
        raise UsageError(f"foreign layers: {foreign_layers!r} is neither 'keep' nor 'include'")
    fmt = detect_format(source)
    files = source.list()
    if fmt == "oci-layout":
        bundle = _load_oci_layout(source, files, image)
    elif fmt == "dir":
        bundle = _load_dir(source, files, image)
    elif fmt == "docker-archive":
        bundle = load_docker_save(source, image=image, scratch=scratch, foreign_layers=foreign_layers,
                                  gzip_level=gzip_level)
    else:
        if image:
            raise UsageError(f"{opt.image} selects an image of an OCI layout or a docker save archive; "
                             f"{source.description} is a staged bundle with a single manifest")
        bundle = _load_staged(source, files)
    if fmt != "docker-archive":
        source.want(_reachable_names(bundle))
    return bundle


# -- staged folder (the seed's format) -----------------------------------------


# -- OCI image layout ------------------------------------------------------------


# -- dir: (skopeo's directory transport) -------------------------------------------


def open_source(bundle: str, *, s3=None) -> BundleSource:
    """Map the BUNDLE argument to a source (``s3``: optional ``S3Options`` for s3:// URLs).

    A folder or S3 prefix is read as a folder; a file, or an S3 key naming an
    archive (``.tar``, ``.tar.gz``, ``.tar.zst``, ...), as an archive read in place.
    """
    if bundle.startswith("s3://"):
        if bundle.rstrip("/").lower().endswith(ARCHIVE_SUFFIXES) and not bundle.endswith("/"):
            obj = S3Source.for_object(bundle.rstrip("/"), s3)
            name = next(iter(obj.list()))
            return open_archive(SourceArchiveFile(obj, name))
        return S3Source(bundle, s3)
    path = Path(bundle)
    if path.is_file():
        return open_archive(LocalArchiveFile(path))
    if not path.exists():
        raise UsageError(f"bundle {bundle} does not exist")
    if not path.is_dir():
        raise UnknownBundleFormat(f"bundle {bundle} is neither a file nor a folder; " + ACCEPTED_FORMATS)
    return LocalFolderSource(path)
