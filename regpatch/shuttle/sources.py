"""Where the image is read: a registry's API (``docker://HOST/REPO:TAG``) or a local layout, ``dir:`` or
staged folder."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Protocol

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.model import REF_NAME, PatchBundle
from regpatch.bundle.open import load_bundle
from regpatch.digest import Digest
from regpatch.errors import (
    BlobMissing,
    DigestMismatch,
    InvalidReference,
    RegpatchError,
    SizeMismatch,
    SourceError,
    UsageError,
)
from regpatch.hashing import copy_and_hash
from regpatch.manifest import ALL_MANIFEST_TYPES, MAX_MANIFEST_SIZE, Descriptor, Manifest, load_json, parse_manifest
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.registry.client import RegistryClient
from regpatch.registry.credentials import load_credentials

log = logging.getLogger("regpatch.shuttle")


class _Buffer:
    """A write-only in-memory sink for small blobs (configs)."""

    def __init__(self):
        self.data = bytearray()

    def write(self, b) -> int:
        self.data += b
        return len(b)


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a source registry: the same options as the patch's verification pull.
    Credentials are not kept here (see ``regpatch.registry.credentials.load_credentials``)."""

    auth_file: Optional[str] = None
    ca_file: Optional[str] = None
    insecure: bool = False


@dataclass(frozen=True)
class DockerReference:
    host: str
    repository: Repository
    tag: Optional[Tag]
    digest: Optional[Digest]

    @property
    def ref(self):
        return self.digest or self.tag

    def __str__(self) -> str:
        return f"docker://{self.host}/{self.repository}" + (f"@{self.digest}" if self.digest
                                                            else f":{self.tag}")


_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def parse_docker_reference(value: str) -> DockerReference:
    """``docker://HOST[:PORT]/REPOSITORY[:TAG|@sha256:HEX]`` (the registry host is required)."""
    rule = "expected docker://HOST[:PORT]/REPOSITORY[:TAG] or docker://HOST[:PORT]/REPOSITORY@sha256:<hex>"
    if not value.startswith("docker://"):
        raise InvalidReference("image reference", value, rule)
    rest = value[len("docker://"):]
    host, sep, path = rest.partition("/")
    if not sep or not _HOST.fullmatch(host) or "@" in host:
        raise InvalidReference("image reference", value, rule + " (the registry host is required)")
    digest = tag = None
    if "@" in path:
        path, _, d = path.partition("@")
        digest = Digest.parse(d)
    else:
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, t = path.rpartition(":")
            tag = Tag.parse(t)
        else:
            tag = Tag.parse("latest")
    return DockerReference(host, Repository.parse(path), tag, digest)


class ImageSource(Protocol):
    description: str

    def top(self) -> Manifest: ...

    def child(self, desc: Descriptor, where: str) -> Manifest: ...

    def read_small(self, desc: Descriptor, limit: int) -> bytes: ...

    def has(self, desc: Descriptor) -> bool: ...

    def stream(self, desc: Descriptor, dst: BinaryIO, offset: int, hasher,
               progress: Callable[[int], None]) -> None:
        """Write the blob's bytes from ``offset`` to ``dst``, feeding ``hasher``."""


def _client(host: str, creds, options: RegistryOptions) -> RegistryClient:
    """The client of a source registry. ``--insecure`` keeps TLS and skips the certificate check
    (skopeo's ``--src-tls-verify=false``): https is tried first, without verification, and plain
    HTTP only when the registry does not answer over TLS."""
    if not options.insecure:
        return RegistryClient(host, credentials=creds, ca_file=options.ca_file)  # https, verified
    tls = RegistryClient(f"https://{host}", credentials=creds, insecure=True)
    if tls.ping():
        return tls
    plain = RegistryClient(f"http://{host}", credentials=creds, insecure=True)
    if plain.ping():
        tls.close()
        log.info("registry %s does not answer over TLS: plain HTTP (%s)", host, opt.insecure)
        return plain
    plain.close()
    return tls  # neither answers: the errors to come name https, what was asked for first


class RegistryImageSource:
    """An image in a registry, read through its v2 API (``RegistryClient``)."""

    def __init__(self, ref: DockerReference, options: RegistryOptions):
        self.ref = ref
        self.description = str(ref)
        creds = load_credentials(ref.host, auth_file=Path(options.auth_file) if options.auth_file else None)
        self.client = _client(ref.host, creds, options)

    def close(self) -> None:
        self.client.close()

    def top(self) -> Manifest:
        fetched = self.client.get_manifest(self.ref.repository, self.ref.ref)
        return parse_manifest(fetched.raw, what=f"manifest {self.description}",
                              media_type_hint=fetched.media_type)

    def child(self, desc: Descriptor, where: str) -> Manifest:
        fetched = self.client.get_manifest(self.ref.repository, desc.digest, accept=[desc.media_type]
                                           if desc.media_type else ALL_MANIFEST_TYPES)
        if len(fetched.raw) != desc.size:
            raise SizeMismatch(f"manifest {self.ref.repository}@{desc.digest} ({where})", desc.size,
                               len(fetched.raw))
        return parse_manifest(fetched.raw, what=f"manifest {self.ref.repository}@{desc.digest}",
                              media_type_hint=desc.media_type)

    def read_small(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise SourceError(f"blob {desc.digest} of {self.description} is {desc.size} bytes, more "
                              f"than {limit}")
        buf = _Buffer()
        self.client.fetch_blob(self.ref.repository, desc, buf)
        return bytes(buf.data)

    def has(self, desc: Descriptor) -> bool:
        return True  # asked by GET; a 404 on a foreign layer is handled by the caller

    def stream(self, desc, dst, offset, hasher, progress) -> None:
        self.client.fetch_blob(self.ref.repository, desc, dst, offset=offset, hasher=hasher,
                               progress=progress)


class LocalImageSource:
    """An image of a local folder read by ``load_bundle`` (OCI layout, staged, ``dir:``)."""

    def __init__(self, bundle: PatchBundle, description: str):
        self.bundle = bundle
        self.description = description

    def close(self) -> None:
        pass

    def top(self) -> Manifest:
        return self.bundle.top

    def child(self, desc: Descriptor, where: str) -> Manifest:
        m = self.bundle.read_manifest(desc, where)
        if m is None:
            raise BlobMissing(desc.digest, where, f"the source {self.description} lacks it")
        return m

    def _file(self, desc: Descriptor):
        f = self.bundle.find(desc)
        if f is None:
            raise BlobMissing(desc.digest, f"source {self.description}", "the source lacks it")
        if f.size != desc.size:
            raise SizeMismatch(self.bundle.source.describe(f.name), desc.size, f.size)
        return f

    def read_small(self, desc: Descriptor, limit: int) -> bytes:
        f = self._file(desc)
        data = self.bundle.source.read_bytes(f.name, limit)
        actual = Digest.of_bytes(data)
        if actual != desc.digest:
            raise DigestMismatch(self.bundle.source.describe(f.name), desc.digest, actual, len(data))
        return data

    def has(self, desc: Descriptor) -> bool:
        return self.bundle.find(desc) is not None

    def stream(self, desc, dst, offset, hasher, progress) -> None:
        f = self._file(desc)
        with self.bundle.source.open(f.name) as src:
            if offset:
                src.seek(offset)
            copy_and_hash(src, dst, what=self.bundle.source.describe(f.name), hasher=hasher,
                          already=offset, expected=desc.digest, expected_size=desc.size,
                          progress=progress)


def open_image_source(source: str, *, image: Optional[str], registry: RegistryOptions):
    """SOURCE -> (ImageSource, default ref name, default repository, default tag)."""
    if source.startswith("docker://"):
        if image:
            raise UsageError(f"{opt.image} selects an image of an OCI layout; a docker:// SOURCE names "
                             "its image itself")
        ref = parse_docker_reference(source)
        return (RegistryImageSource(ref, registry), str(ref.tag or "image"), ref.repository.name,
                ref.tag.name if ref.tag else None)
    if source.startswith("s3://"):
        raise UsageError("a bundle SOURCE is an image: docker://HOST/REPO:TAG, an OCI layout folder "
                         "(oci:PATH) or a dir: folder; s3:// is a DEST")
    path = source
    for prefix in ("oci:", "dir:"):
        if source.startswith(prefix):
            path = source[len(prefix):]
            break
    if not Path(path).is_dir():
        raise UsageError(f"bundle SOURCE {path} is not a folder (docker://HOST/REPO:TAG, an OCI "
                         "layout folder or a dir: folder)")
    loaded = load_bundle(LocalFolderSource(path), image=image)
    name = image
    if name is None and loaded.format == "oci-layout":
        names = _layout_ref_names(loaded)
        name = names[0] if len(names) == 1 else None
    return LocalImageSource(loaded, str(path)), name or "image", None, None


def _layout_ref_names(loaded: PatchBundle) -> list[str]:
    try:
        index = load_json(loaded.source.read_bytes("index.json", MAX_MANIFEST_SIZE), what="index.json")
        return [str((m.get("annotations") or {}).get(REF_NAME)) for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get(REF_NAME)]
    except (ValueError, AttributeError, RegpatchError):
        return []

