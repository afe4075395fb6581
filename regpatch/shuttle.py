"""Making delta bundles on the connected side (``regpatch bundle``).

``make_bundle`` reads one image (a tag or digest in a registry through its
API, or a local OCI layout / ``dir:`` / staged folder through
``bundle.formats.load_bundle``) and writes an OCI image layout to a folder or
``s3://bucket/prefix`` holding the image's manifests and only the configs and
layers that none of the ``--have`` contents files lists, plus
``regpatch-bundle.json`` and, with a signing key, its detached signature (see
``signing``).

Every blob is streamed from the source into the destination while it is
hashed (memory flat, a few MiB per blob in flight) and only becomes a blob of
the layout once its digest and size match:

* folder: bytes go to ``DEST/.regpatch-partial/sha256-<hex>`` and are renamed
  to ``blobs/sha256/<hex>`` after the check. A re-run hashes a partial file
  left by an interrupted run and fetches only the rest (a ``Range`` GET from
  a registry, a seek in a local file); a blob already in ``blobs/`` is hashed
  and kept when it matches;
* S3: a multipart upload (``S3Options.part_size`` parts) completed only after
  the digest matched, aborted otherwise, with the digest in the object's
  metadata: a re-run skips objects with the right size and that metadata,
  and an interrupted blob starts again.

Write order: blobs, ``oci-layout``, ``index.json``, then the old signature is
removed, ``regpatch-bundle.json`` written and signed last. A destination is
accepted when it is new, empty, or a bundle an earlier run wrote (it holds
``regpatch-bundle.json`` or the partial marker); blobs of the earlier bundle
that this one does not carry are removed from it, since the site refuses
unlisted files.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Protocol, Sequence

from .bundle.formats import REF_NAME, MAX_CONFIG_SIZE, PatchBundle, load_bundle
from .bundle.source import LocalFolderSource
from .contents import ContentsFile, read_contents_file, union_blobs
from .digest import Digest, copy_and_hash, new_hasher
from .errors import (BlobMissing, DigestMismatch, InvalidReference, ManifestError, RegpatchError,
                     SizeMismatch, SourceError, UsageError, VerificationError)
from .manifest import (ALL_MANIFEST_TYPES, load_json, MAX_MANIFEST_SIZE, OCI_INDEX, Descriptor, ImageIndex,
                       ImageManifest, Manifest, parse_manifest)
from .reference import Repository, Tag
from .signing import (DESCRIPTOR, SIGNATURE, BlobEntry, BundleDescriptor, ContentsRef, ManifestEntry,
                      fingerprint, load_private_key, sign_bytes, utc_now)

log = logging.getLogger("regpatch.shuttle")

PARTIAL_DIR = ".regpatch-partial"
S3_MARKER = ".regpatch-incomplete"
OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
META_DIGEST = "regpatch-sha256"
BLOB_WORKERS = 2

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return f"regpatch {version('regpatch')}"
    except Exception:  # running from a source tree
        return "regpatch"


# =========================================================================== sources

@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a source registry: the same options as the patch's verification pull.
    Credentials are not kept here (see ``registry_api.load_credentials``)."""

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


class RegistryImageSource:
    """An image in a registry, read through its v2 API (``RegistryClient``)."""

    def __init__(self, ref: DockerReference, options: RegistryOptions):
        from .registry_api import RegistryClient, load_credentials

        self.ref = ref
        self.description = str(ref)
        creds = load_credentials(ref.host, auth_file=Path(options.auth_file) if options.auth_file else None)
        self.client = RegistryClient(ref.host, credentials=creds, ca_file=options.ca_file,
                                     insecure=options.insecure)

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
            raise UsageError("--image selects an image of an OCI layout; a docker:// SOURCE names "
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


# =========================================================================== destinations

class _Buffer:
    """A write-only in-memory sink for small blobs (configs)."""

    def __init__(self):
        self.data = bytearray()

    def write(self, b) -> int:
        self.data += b
        return len(b)


class Destination(Protocol):
    description: str

    def prepare(self) -> None: ...

    def has_blob(self, digest: Digest, size: int) -> bool: ...

    def put_blob(self, digest: Digest, size: int, feed: Callable, progress) -> int:
        """Write a blob through ``feed(dst, offset, hasher, progress)``; returns bytes resumed."""

    def put_file(self, name: str, data: bytes) -> None: ...

    def remove(self, name: str) -> None: ...

    def blob_names(self) -> set[str]: ...

    def finish(self) -> None: ...


def _verify(hasher, digest: Digest, size: int, written: int, what: str) -> None:
    if written != size:
        raise SizeMismatch(what, size, written)
    actual = Digest("sha256", hasher.hexdigest())
    if actual != digest:
        raise DigestMismatch(what, digest, actual, written)


class FolderDestination:
    def __init__(self, path: str):
        self.path = Path(path)
        self.description = str(self.path)
        self.blobs = self.path / "blobs" / "sha256"
        self.partial = self.path / PARTIAL_DIR

    def prepare(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise UsageError(f"--out {p} is a file; give a new or empty folder")
        if p.is_dir():
            entries = set(os.listdir(p))
            if entries and not ({DESCRIPTOR, PARTIAL_DIR} & entries):
                raise UsageError(f"--out {p} is a folder holding other files; give a new or empty "
                                 "folder (or the folder of an earlier bundle to update it)")
        self.partial.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)

    def _blob(self, digest: Digest) -> Path:
        return self.blobs / digest.hex

    def has_blob(self, digest: Digest, size: int) -> bool:
        path = self._blob(digest)
        try:
            if os.path.getsize(path) != size:
                os.unlink(path)
                return False
        except FileNotFoundError:
            return False
        try:
            with open(path, "rb", buffering=0) as f:
                copy_and_hash(f, None, what=str(path), expected=digest, expected_size=size)
        except (DigestMismatch, SizeMismatch) as e:
            log.warning("%s; written again", e)
            os.unlink(path)
            return False
        return True

    def put_blob(self, digest: Digest, size: int, feed, progress) -> int:
        partial = self.partial / f"sha256-{digest.hex}"
        hasher, offset = new_hasher(), 0
        try:
            have = os.path.getsize(partial)
        except FileNotFoundError:
            have = -1
        if 0 < have <= size:
            with open(partial, "rb", buffering=0) as f:
                _, offset = copy_and_hash(f, None, what=str(partial), hasher=hasher)
            log.info("resuming %s after %s B already written", digest, f"{offset:,}")
        elif have >= 0:
            os.unlink(partial)
        with open(partial, "ab", buffering=0) as dst:
            written = _Counter(dst, offset)
            try:
                feed(written, offset, hasher, progress)
                _verify(hasher, digest, size, written.n, f"blob {digest} written to {partial}")
            except (DigestMismatch, SizeMismatch):
                dst.close()
                os.unlink(partial)  # wrong bytes: never resumed
                raise
            os.fsync(dst.fileno())
        os.replace(partial, self._blob(digest))
        _fsync_dir(self.blobs)
        return offset

    def put_file(self, name: str, data: bytes) -> None:
        final = self.path / name
        tmp = self.partial / f"file-{name}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.path)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path / name)
        except FileNotFoundError:
            pass

    def blob_names(self) -> set[str]:
        """Regular files under blobs/sha256 (what the site would see listed)."""
        try:
            entries = list(os.scandir(self.blobs))
        except FileNotFoundError:
            return set()
        out = set()
        for e in entries:
            if e.is_file(follow_symlinks=False):
                out.add(f"blobs/sha256/{e.name}")
            else:
                log.warning("%s is not a regular file; remove it from the bundle folder", e.path)
        return out

    def finish(self) -> None:
        for name in os.listdir(self.partial):
            os.unlink(self.partial / name)
        os.rmdir(self.partial)
        _fsync_dir(self.path)


class _Counter:
    """Counts the bytes written through it (``dst.write`` may write less than asked)."""

    def __init__(self, dst, start: int = 0):
        self.dst, self.n = dst, start

    def write(self, b) -> int:
        n = self.dst.write(b)
        n = len(b) if n is None else n
        self.n += n
        return n


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Destination:
    """``s3://bucket/prefix``: the same client, retries and credentials as S3 bundle sources."""

    def __init__(self, url: str, options):
        from .bundle.s3 import S3Source

        self._s3 = S3Source(url, options)
        self.description = self._s3.url
        self.part_size = options.part_size if options else 8 << 20

    def _key(self, name: str) -> str:
        return self._s3.key(name)

    def _call(self, what: str, fn):
        return self._s3._call(what, fn)

    @property
    def _client(self):
        return self._s3._client

    def _list(self, under: str = "") -> dict[str, int]:
        """Objects under the prefix (or under ``prefix/under/``): relative name -> size."""
        root = self._s3.prefix + "/" if self._s3.prefix else ""
        base = root + (under.strip("/") + "/" if under else "")
        out: dict[str, int] = {}
        token = None
        while True:
            kw = {"Bucket": self._s3.bucket, "Prefix": base}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(f"listing {self.description}/{under}",
                              lambda: self._client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                out[obj["Key"][len(root):]] = int(obj["Size"])
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def prepare(self) -> None:
        names = set(self._list())
        if names and not ({DESCRIPTOR, S3_MARKER} & names):
            raise UsageError(f"--out {self.description} already holds other objects; give an empty "
                             "prefix (or the prefix of an earlier bundle to update it)")
        self.put_file(S3_MARKER, b"a regpatch bundle is being written here\n")

    def _head(self, name: str) -> Optional[dict]:
        from botocore.exceptions import ClientError

        def head():
            try:
                return self._client.head_object(Bucket=self._s3.bucket, Key=self._key(name))
            except ClientError as e:
                if (e.response.get("Error") or {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        return self._call(f"HEAD {self.description}/{name}", head)

    def has_blob(self, digest: Digest, size: int) -> bool:
        head = self._head(f"blobs/sha256/{digest.hex}")
        return bool(head) and int(head.get("ContentLength", -1)) == size \
            and (head.get("Metadata") or {}).get(META_DIGEST) == str(digest)

    def put_blob(self, digest: Digest, size: int, feed, progress) -> int:
        name = f"blobs/sha256/{digest.hex}"
        upload = _MultipartWriter(self, name, digest, self.part_size)
        hasher = new_hasher()
        try:
            feed(upload, 0, hasher, progress)
            _verify(hasher, digest, size, upload.n, f"blob {digest} for {self.description}/{name}")
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return 0

    def put_file(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._call(f"PUT {self.description}/{name}",
                   lambda: self._client.put_object(Bucket=self._s3.bucket, Key=key, Body=data))

    def remove(self, name: str) -> None:
        key = self._key(name)
        self._call(f"DELETE {self.description}/{name}",
                   lambda: self._client.delete_object(Bucket=self._s3.bucket, Key=key))

    def blob_names(self) -> set[str]:
        return {n for n in self._list("blobs/sha256")}

    def finish(self) -> None:
        self.remove(S3_MARKER)


class _MultipartWriter:
    """Buffers one part (``part_size``) at a time; the object exists only after ``complete``."""

    def __init__(self, dest: S3Destination, name: str, digest: Digest, part_size: int):
        self.dest, self.name, self.digest, self.part_size = dest, name, digest, part_size
        self.key = dest._key(name)
        self.buf = bytearray()
        self.n = 0
        self.upload_id: Optional[str] = None
        self.parts: list[dict] = []

    def write(self, b) -> int:
        self.buf += b
        self.n += len(b)
        while len(self.buf) >= self.part_size:
            part = bytes(self.buf[:self.part_size])
            del self.buf[:self.part_size]
            self._upload(part)
        return len(b)

    def _upload(self, part: bytes) -> None:
        d, s3 = self.dest, self.dest._s3
        if self.upload_id is None:
            resp = d._call(f"start upload of {d.description}/{self.name}", lambda: d._client.create_multipart_upload(
                Bucket=s3.bucket, Key=self.key, Metadata={META_DIGEST: str(self.digest)}))
            self.upload_id = resp["UploadId"]
        number = len(self.parts) + 1
        resp = d._call(f"PUT part {number} of {d.description}/{self.name}", lambda: d._client.upload_part(
            Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=part))
        self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def complete(self) -> None:
        d, s3 = self.dest, self.dest._s3
        if self.upload_id is None:  # small: one PUT
            body = bytes(self.buf)
            d._call(f"PUT {d.description}/{self.name}", lambda: d._client.put_object(
                Bucket=s3.bucket, Key=self.key, Body=body, Metadata={META_DIGEST: str(self.digest)}))
            return
        if self.buf:
            self._upload(bytes(self.buf))
            self.buf.clear()
        d._call(f"complete upload of {d.description}/{self.name}", lambda: d._client.complete_multipart_upload(
            Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}))
        self.upload_id = None

    def abort(self) -> None:
        if self.upload_id is None:
            return
        d, s3 = self.dest, self.dest._s3
        try:
            d._client.abort_multipart_upload(Bucket=s3.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as e:  # best effort; the object was never completed
            log.warning("could not abort the upload of %s/%s: %s", d.description, self.name, type(e).__name__)
        self.upload_id = None


def open_destination(out: str, s3=None) -> Destination:
    if out.startswith("s3://"):
        return S3Destination(out, s3)
    return FolderDestination(out)


# =========================================================================== making the bundle

@dataclass
class BundleReport:
    dest: str
    descriptor: BundleDescriptor
    signed_with: Optional[str] = None
    written: list[tuple[str, int]] = field(default_factory=list)   # blobs written by this run
    reused: list[tuple[str, int]] = field(default_factory=list)    # already complete in DEST
    resumed_bytes: int = 0
    removed: list[str] = field(default_factory=list)               # stale files of an earlier bundle
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        d = self.descriptor
        assumed = sum(b.size for b in d.assumed)
        lines = [f"bundle {self.dest}: {d.summary()}",
                 f"  image {d.image.digest} ({d.image.media_type}), "
                 + ", ".join(m.platform_text or str(m.digest)[:19] for m in d.manifests),
                 f"  carried: {len(d.blobs)} blobs, {d.bytes_carried:,} B; assumed present at the site: "
                 f"{len(d.assumed)} blobs, {assumed:,} B",
                 f"  this run: {len(self.written)} blobs written, {len(self.reused)} already complete, "
                 f"{self.resumed_bytes:,} B resumed, {self.seconds:.2f}s",
                 f"  signed with {self.signed_with}" if self.signed_with else "  NOT signed (no --sign-key)"]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def parse_platform(value: str) -> dict:
    """``OS/ARCH[/VARIANT][:OSVERSION]`` -> {'os', 'architecture', 'variant', 'os.version'}."""
    m = re.fullmatch(r"([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?(?::([0-9A-Za-z._-]+))?", value or "")
    if not m:
        raise UsageError(f"--platform {value!r}: expected OS/ARCH[/VARIANT][:OSVERSION], e.g. "
                         "windows/amd64 or windows/amd64:10.0.17763.5458")
    out = {"os": m.group(1), "architecture": m.group(2)}
    if m.group(3):
        out["variant"] = m.group(3)
    if m.group(4):
        out["os.version"] = m.group(4)
    return out


def _platform_of(p) -> dict:
    if p is None:
        return {}
    return {k: v for k, v in (("os", p.os), ("architecture", p.architecture), ("variant", p.variant),
                              ("os.version", p.os_version)) if v}


def _matches(want: dict, have: dict) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _platform_from_config(raw: bytes) -> dict:
    try:
        doc = load_json(raw, what="config")
    except ManifestError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out = {}
    for k in ("os", "architecture", "variant", "os.version"):
        v = doc.get(k)
        if isinstance(v, str) and v and len(v) <= 128 and v.isprintable():
            out[k] = v
    return out


def _select(src, top: Manifest, platform: Optional[str]):
    """(top manifest, [(image manifest, platform dict)]) after --platform."""
    if isinstance(top, ImageIndex):
        children = []
        for i, d in enumerate(top.manifests):
            children.append((d, _platform_of(d.platform)))
        if platform:
            want = parse_platform(platform)
            chosen = [(d, p) for d, p in children if _matches(want, p)]
            if len(chosen) != 1:
                have = "; ".join(_text(p) or str(d.digest) for d, p in children)
                raise UsageError(f"--platform {platform} matches {len(chosen)} of the manifests of "
                                 f"{src.description} ({have}); give OS/ARCH[/VARIANT][:OSVERSION] "
                                 "matching exactly one")
            d, p = chosen[0]
            child = src.child(d, f"index {top.digest}")
            if not isinstance(child, ImageManifest):
                raise ManifestError(f"{src.description}: nested image indexes are not supported")
            return child, [(child, p)]
        images = []
        for i, (d, p) in enumerate(children):
            child = src.child(d, f"index {top.digest} manifests[{i}]")
            if not isinstance(child, ImageManifest):
                raise ManifestError(f"{src.description}: nested image indexes are not supported")
            images.append((child, p))
        return top, images
    cfg = src.read_small(top.config, MAX_CONFIG_SIZE)
    p = _platform_from_config(cfg)
    if platform and not _matches(parse_platform(platform), p):
        raise UsageError(f"--platform {platform}: {src.description} is a single image for "
                         f"{_text(p) or 'an unknown platform'}")
    return top, [(top, p)]


def _text(p: dict) -> str:
    s = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
    return s + (f" {p['os.version']}" if p.get("os.version") else "")


def make_bundle(source: str, out: str, *, have: Sequence[str] = (), sign_key: Optional[str] = None,
                image: Optional[str] = None, platform: Optional[str] = None,
                repository: Optional[str] = None, tag: Optional[str] = None,
                registry: RegistryOptions = RegistryOptions(), s3=None,
                progress: ProgressFactory = _no_progress, workers: int = BLOB_WORKERS) -> BundleReport:
    """Write a (delta) bundle of SOURCE to OUT; see the module docstring.

    ``have``: contents files of the site (``regpatch contents``); the configs
    and layers they list are left out and recorded as assumed present.
    ``sign_key``: a PEM private key file (Ed25519 or P-256); the signature is
    written to ``regpatch-bundle.json.sig``. ``repository``/``tag``: the
    intended target on the site (default: those of a docker:// SOURCE).
    """
    t0 = time.monotonic()
    # everything that can fail without I/O on the image fails first
    key = load_private_key(sign_key) if sign_key else None
    if repository is not None:
        Repository.parse(repository)
    if tag is not None:
        Tag.parse(tag)
    if platform is not None:
        parse_platform(platform)
    contents: list[ContentsFile] = [read_contents_file(h) for h in have]
    have_blobs = union_blobs(contents)
    dest = open_destination(out, s3)
    src, name, default_repo, default_tag = open_image_source(source, image=image, registry=registry)
    repository = repository or default_repo
    tag = tag or default_tag
    report_warnings: list[str] = []
    try:
        top, images = _select(src, src.top(), platform)
        manifests: dict[Digest, bytes] = {top.digest: top.raw}
        for img, _ in images:
            manifests[img.digest] = img.raw
        media = {top.digest: top.media_type, **{img.digest: img.media_type for img, _ in images}}

        carried: dict[Digest, Descriptor] = {}
        assumed: dict[Digest, Descriptor] = {}
        for img, _ in images:
            for d in img.blobs():
                if d.digest in carried or d.digest in assumed:
                    continue
                if d.digest in have_blobs:
                    if have_blobs[d.digest] == d.size:
                        assumed[d.digest] = d
                        continue
                    report_warnings.append(f"the site's contents list {d.digest} with "
                                           f"{have_blobs[d.digest]:,} bytes, the manifest says {d.size:,}: "
                                           "carried")
                carried[d.digest] = d

        dest.prepare()
        report = BundleReport(dest.description, None)  # type: ignore[arg-type]
        foreign: dict[Digest, Descriptor] = {}

        # manifests: small, from memory
        for digest, raw in manifests.items():
            if dest.has_blob(digest, len(raw)):
                report.reused.append((str(digest), len(raw)))
                continue
            dest.put_blob(digest, len(raw), _bytes_feed(raw), lambda n: None)
            report.written.append((str(digest), len(raw)))

        lock = threading.Lock()

        def one(d: Descriptor) -> None:
            if dest.has_blob(d.digest, d.size):
                with lock:
                    report.reused.append((str(d.digest), d.size))
                log.info("blob %s (%s B) already complete in %s", d.digest, f"{d.size:,}", dest.description)
                return
            if d.is_foreign and not src.has(d):
                with lock:
                    foreign[d.digest] = d
                return
            bar = progress(f"blob {d.digest.short}", d.size)

            def feed(dst, offset, hasher, prog):
                src.stream(d, dst, offset, hasher, prog)

            try:
                resumed = dest.put_blob(d.digest, d.size, feed, bar)
            except VerificationError:
                if d.is_foreign:  # the source registry does not serve this non-distributable layer
                    with lock:
                        foreign[d.digest] = d
                    return
                raise
            with lock:
                report.written.append((str(d.digest), d.size))
                report.resumed_bytes += resumed
            log.info("wrote blob %s (%s B) to %s", d.digest, f"{d.size:,}", dest.description)

        todo = sorted(carried.values(), key=lambda d: -d.size)
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                                    thread_name_prefix="regpatch-bundle") as pool:
                futures = [pool.submit(contextvars.copy_context().run, one, d) for d in todo]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                wait(pending)
                for f in futures:
                    if f.done() and not f.cancelled() and f.exception() is not None:
                        raise f.exception()
        for dg in foreign:
            carried.pop(dg)
            report_warnings.append(f"foreign layer {dg} is not served by {src.description}: neither "
                                   "carried nor assumed; Windows clients fetch it from its urls")

        index_entry = {"mediaType": top.media_type, "digest": str(top.digest), "size": len(top.raw),
                       "annotations": {REF_NAME: tag or name}}
        index_bytes = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [index_entry]},
                                 sort_keys=True, separators=(",", ":")).encode()
        dest.put_file("oci-layout", OCI_LAYOUT_BYTES)
        dest.put_file("index.json", index_bytes)

        blob_entries = [BlobEntry(dg, len(raw), media[dg]) for dg, raw in manifests.items()]
        blob_entries += [BlobEntry(d.digest, d.size, d.media_type) for d in carried.values()]
        top_platform = images[0][1] if not isinstance(top, ImageIndex) else {}
        descriptor = BundleDescriptor(
            image=ManifestEntry(top.digest, len(top.raw), top.media_type, tuple(sorted(top_platform.items()))),
            manifests=tuple(ManifestEntry(img.digest, len(img.raw), img.media_type, tuple(sorted(p.items())))
                            for img, p in images),
            name=tag or name, repository=repository, tag=tag,
            files=(("oci-layout", BlobEntry(Digest.of_bytes(OCI_LAYOUT_BYTES), len(OCI_LAYOUT_BYTES))),
                   ("index.json", BlobEntry(Digest.of_bytes(index_bytes), len(index_bytes)))),
            blobs=tuple(blob_entries),
            assumed=tuple(BlobEntry(d.digest, d.size, d.media_type) for d in assumed.values()),
            contents=tuple(ContentsRef(c.name, c.sha256) for c in contents),
            foreign=tuple(BlobEntry(d.digest, d.size, d.media_type) for d in foreign.values()),
            tool=tool_version(), created=utc_now(), source=src.description)

        keep = {f"blobs/sha256/{b.digest.hex}" for b in blob_entries}
        for stale in sorted(dest.blob_names() - keep):
            dest.remove(stale)
            report.removed.append(stale)
            log.info("removed %s: left by an earlier bundle in %s, not part of this one", stale,
                     dest.description)

        raw = descriptor.to_json()
        dest.remove(SIGNATURE)            # never leave an old signature beside a new descriptor
        dest.put_file(DESCRIPTOR, raw)
        if key is not None:
            dest.put_file(SIGNATURE, sign_bytes(key, raw))
            report.signed_with = fingerprint(key)
        dest.finish()
    finally:
        src.close()
    report.descriptor = descriptor
    report.warnings = report_warnings
    report.seconds = round(time.monotonic() - t0, 3)
    for w in report_warnings:
        log.warning("%s", w)
    log.info("%s", descriptor.summary())
    return report


def _bytes_feed(raw: bytes):
    def feed(dst, offset, hasher, progress):
        rest = memoryview(raw)[offset:]
        hasher.update(rest)
        while rest:
            rest = rest[dst.write(rest):]
        progress(len(raw) - offset)

    return feed
