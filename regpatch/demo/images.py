"""Real, pullable sample images and patch bundles (demo, tests, benchmarks).

Everything here is deterministic: the same arguments give the same bytes and
therefore the same digests. Layers are real gzip-compressed tar archives
(podman can extract them), written streamed: a 2 GiB layer never sits in
memory.

Nouns:
    BlobFile     one blob on disk: path, digest, size, media type (+ diff_id for layers)
    SampleImage  an image manifest (exact stored bytes) with its config and layers
    SampleIndex  a manifest list / OCI index with its child images

Verbs:
    make_layer           a tar.gz with ``size`` random bytes from ``random.Random(seed)``
    make_image           config + manifest files for a list of layers
    make_index           a manifest list / OCI index over images
    write_oci_layout     an OCI image layout holding images and indexes under ref names
    write_staged_bundle  the seed's staged folder (base.tar.gz, delta.tar.gz, sidecars ...)
    push_with_skopeo     push an OCI layout ref to a registry, digests preserved
    scenario_servercore  the seed's story in small: an old image and its monthly patch
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from regpatch import platform
from regpatch.digest import Digest
from regpatch.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from regpatch.platform import children

RANDOM_CHUNK = 1 << 20  # content is generated in fixed 1 MiB chunks: independent of read sizes
EPOCH = "1970-01-01T00:00:00Z"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class BlobFile:
    """A blob stored in a file. ``diff_id`` (layers only) is the sha256 of the
    uncompressed tar, as listed in the image config's ``rootfs.diff_ids``."""

    path: Path
    digest: Digest
    size: int
    media_type: str
    diff_id: Optional[Digest] = None

    def descriptor(self, media_type: Optional[str] = None) -> dict:
        return {"mediaType": media_type or self.media_type, "size": self.size, "digest": str(self.digest)}


@dataclass(frozen=True)
class SampleImage:
    """An image manifest. ``manifest_bytes`` is exactly what is stored and
    served; ``manifest_digest`` is its sha256. ``manifest_path`` holds the
    same bytes on disk."""

    manifest_bytes: bytes
    manifest_digest: Digest
    media_type: str
    config: BlobFile
    layers: tuple[BlobFile, ...]
    manifest_path: Optional[Path] = None
    os: str = "linux"
    architecture: str = "amd64"
    os_version: Optional[str] = None

    @property
    def blobs(self) -> tuple[BlobFile, ...]:
        return (self.config,) + self.layers

    @property
    def platform(self) -> dict:
        p = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            p["os.version"] = self.os_version
        return p


@dataclass(frozen=True)
class SampleIndex:
    """A manifest list (docker) or image index (OCI) over ``children``."""

    manifest_bytes: bytes
    manifest_digest: Digest
    media_type: str
    children: tuple[SampleImage, ...]
    manifest_path: Optional[Path] = None


Sample = Union[SampleImage, SampleIndex]


# --------------------------------------------------------------------------- streaming helpers

class _RandomReader(io.RawIOBase):
    """``size`` bytes from ``random.Random(seed).randbytes``, in fixed chunks,
    so the stream does not depend on how the consumer reads it."""

    def __init__(self, seed: int, size: int):
        self._rng = random.Random(seed)
        self._left = size
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left + len(self._buf)
        out = bytearray()
        while len(out) < n and (self._buf or self._left):
            if not self._buf:
                k = min(RANDOM_CHUNK, self._left)
                self._buf = self._rng.randbytes(k)
                self._left -= k
            take = n - len(out)
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)


class _HashingWriter(io.RawIOBase):
    """Write-through to ``sink`` while hashing and counting. Has no ``name``
    attribute, so gzip writes no file name in its header."""

    def __init__(self, sink):
        self._sink = sink
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.hasher.update(b)
        self._sink.write(b)
        n = len(b)
        self.size += n
        return n

    def digest(self) -> Digest:
        return Digest("sha256", self.hasher.hexdigest())


def _tarinfo(name: str, *, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if directory:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    else:
        ti.mode = 0o644
        ti.size = size
    return ti


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    platform.replace(tmp, path)


def _json_bytes(doc: dict, pretty: bool) -> bytes:
    if pretty:
        return (json.dumps(doc, indent=3) + "\n").encode()
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- layers, images, indexes

def make_layer(workdir: Path, name: str, *, seed: int, size: int, compresslevel: int = 6,
               oci: bool = False) -> BlobFile:
    """Write ``workdir/<name>`` (``.tar.gz`` appended unless ``name`` ends in
    ``.tar.gz``/``.tgz``): a deterministic gzip tar holding ``regpatch/`` with
    ``<stem>-<seed>.bin`` (``size`` random bytes from ``random.Random(seed)``)
    and ``<stem>-<seed>.txt`` (a line naming the seed and size).

    Streamed: memory stays flat whatever ``size``. ``compresslevel`` 0 or 1
    make big benchmark layers fast. Returns the blob (digest of the gzip file)
    with ``diff_id`` (digest of the uncompressed tar). Media type: the Docker
    gzip layer type, or the OCI one when ``oci``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    filename = name if name.endswith((".tar.gz", ".tgz")) else name + ".tar.gz"
    stem = filename[:-7] if filename.endswith(".tar.gz") else filename[:-4]
    path = workdir / filename
    tmp = path.with_name(f".{filename}.tmp")
    text = f"regpatch sample layer {stem}: seed={seed} size={size}\n".encode()
    with open(tmp, "wb") as f:
        blob = _HashingWriter(f)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, compresslevel=compresslevel,
                           mtime=0) as gz:
            diff = _HashingWriter(gz)
            # typeshed's tarfile.open overloads lack copybufsize, which open() hands to TarFile()
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              copybufsize=RANDOM_CHUNK) as tar:
                tar.addfile(_tarinfo("regpatch/", directory=True))
                tar.addfile(_tarinfo(f"regpatch/{stem}-{seed}.txt", size=len(text)), io.BytesIO(text))
                tar.addfile(_tarinfo(f"regpatch/{stem}-{seed}.bin", size=size), _RandomReader(seed, size))
        f.flush()
        os.fsync(f.fileno())
    platform.replace(tmp, path)
    return BlobFile(path, blob.digest(), blob.size, OCI_LAYER if oci else DOCKER_LAYER, diff.digest())


def _check_fmt(fmt: str) -> None:
    if fmt not in ("docker", "oci"):
        raise ValueError(f"fmt must be 'docker' or 'oci', got {fmt!r}")


def make_image(workdir: Path, layers: Sequence[BlobFile], *, fmt: str = "docker", os: str = "linux",
               os_version: Optional[str] = None, seed: int = 0, pretty: bool = True,
               name: Optional[str] = None, architecture: str = "amd64", created: str = EPOCH) -> SampleImage:
    """Write an image config and manifest for ``layers`` into ``workdir``.

    The config is a valid image config (architecture, os, optional os.version,
    rootfs.diff_ids from each layer's ``diff_id``, one history entry per
    layer, a label with ``seed``), compact JSON. The manifest is a Docker
    schema 2 or OCI manifest; layer descriptors use the gzip layer media type
    of ``fmt``. ``pretty`` writes the manifest indented with a trailing newline
    (like a hand-formatted file), to exercise "never re-serialise".
    Files: ``<name>.config.json`` and ``<name>.manifest.json``, ``name``
    defaulting to ``image-<config digest short>``.
    """
    _check_fmt(fmt)
    if any(l.diff_id is None for l in layers):
        raise ValueError("every layer needs a diff_id (build it with make_layer)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_doc: dict = {"architecture": architecture, "os": os}
    if os_version:
        config_doc["os.version"] = os_version
    config_doc.update({
        "created": created,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Labels": {"org.regpatch.sample.seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": [str(l.diff_id) for l in layers]},
        "history": [{"created": created, "created_by": f"regpatch sample layer {Path(l.path).name}"}
                    for l in layers],
    })
    config_bytes = json.dumps(config_doc, separators=(",", ":"), sort_keys=True).encode()
    config_digest = Digest.of_bytes(config_bytes)
    name = name or f"image-{config_digest.short}"
    config_path = workdir / f"{name}.config.json"
    _write_atomic_bytes(config_path, config_bytes)
    config_type, layer_type, manifest_type = (
        (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST) if fmt == "docker"
        else (OCI_CONFIG, OCI_LAYER, OCI_MANIFEST))
    config = BlobFile(config_path, config_digest, len(config_bytes), config_type)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [l.descriptor(layer_type) for l in layers],
    }
    raw = _json_bytes(manifest_doc, pretty)
    manifest_path = workdir / f"{name}.manifest.json"
    _write_atomic_bytes(manifest_path, raw)
    layer_blobs = tuple(BlobFile(l.path, l.digest, l.size, layer_type, l.diff_id) for l in layers)
    return SampleImage(raw, Digest.of_bytes(raw), manifest_type, config, layer_blobs,
                       manifest_path, os, architecture, os_version)


def make_index(workdir: Path, images: Sequence[SampleImage], *, fmt: str = "docker",
               pretty: bool = True, name: Optional[str] = None) -> SampleIndex:
    """Write a Docker manifest list or OCI image index over ``images`` to
    ``workdir/<name>.manifest.json`` (default ``index-<digest short>``). Each
    child descriptor carries its platform {architecture, os, os.version}."""
    _check_fmt(fmt)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    media_type = DOCKER_LIST if fmt == "docker" else OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{"mediaType": img.media_type, "size": len(img.manifest_bytes),
                       "digest": str(img.manifest_digest), "platform": img.platform}
                      for img in images],
    }
    raw = _json_bytes(doc, pretty)
    digest = Digest.of_bytes(raw)
    path = workdir / f"{name or 'index-' + digest.short}.manifest.json"
    _write_atomic_bytes(path, raw)
    return SampleIndex(raw, digest, media_type, tuple(images), path)


# --------------------------------------------------------------------------- bundles

def _copy_into(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)  # streamed
    platform.replace(tmp, dst)


def write_oci_layout(dest: Path, refs: dict[str, Sample]) -> Path:
    """Write an OCI image layout at ``dest``: ``oci-layout``, ``index.json``
    with one descriptor per ref (annotation ``org.opencontainers.image.ref.name``)
    and ``blobs/sha256/<hex>`` for every manifest, config and layer (files are
    copied streamed; existing blobs are kept). Returns ``dest``."""
    dest = Path(dest)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put_bytes(digest: Digest, data: bytes) -> None:
        target = blobs / digest.hex
        if not target.exists():
            _write_atomic_bytes(target, data)

    def put_image(img: SampleImage) -> None:
        for b in img.blobs:
            _copy_into(Path(b.path), blobs / b.digest.hex)
        put_bytes(img.manifest_digest, img.manifest_bytes)

    entries = []
    for ref, item in refs.items():
        if isinstance(item, SampleIndex):
            for child in item.children:
                put_image(child)
            put_bytes(item.manifest_digest, item.manifest_bytes)
        else:
            put_image(item)
        entries.append({"mediaType": item.media_type, "digest": str(item.manifest_digest),
                        "size": len(item.manifest_bytes),
                        "annotations": {REF_NAME_ANNOTATION: ref}})
    _write_atomic_bytes(dest / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    _write_atomic_bytes(dest / "index.json", json.dumps(index, indent=2).encode())
    return dest


def default_layer_names(count: int) -> list[str]:
    """``base.tar.gz``, ``delta.tar.gz``, then ``layer3.tar.gz``, ``layer4.tar.gz`` ..."""
    names = ["base.tar.gz", "delta.tar.gz"][:count]
    return names + [f"layer{i + 1}.tar.gz" for i in range(len(names), count)]


def write_staged_bundle(dest: Path, image: SampleImage, *, names: Optional[list[str]] = None,
                        sidecars: bool = True) -> Path:
    """Write the seed's staged format into folder ``dest``:

    - one file per layer, named by ``names`` (default ``default_layer_names``);
    - ``<last layer name>.manifest.json``: the exact manifest bytes;
    - ``<last layer name>.config.json``: the exact config bytes;
    - when ``sidecars``: ``<layer name>.digest`` per layer, holding
      ``sha256:<hex>\\r\\n`` (as PowerShell writes it).

    Returns ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not image.layers:
        raise ValueError("a staged bundle needs at least one layer")
    names = list(names) if names is not None else default_layer_names(len(image.layers))
    if len(names) != len(image.layers) or len(set(names)) != len(names):
        raise ValueError(f"need {len(image.layers)} distinct layer names, got {names!r}")
    for layer, n in zip(image.layers, names, strict=True):
        _copy_into(Path(layer.path), dest / n)
        if sidecars:
            _write_atomic_bytes(dest / f"{n}.digest", f"{layer.digest}\r\n".encode("ascii"))
    last = names[-1]
    _write_atomic_bytes(dest / f"{last}.manifest.json", image.manifest_bytes)
    _copy_into(Path(image.config.path), dest / f"{last}.config.json")
    return dest


# --------------------------------------------------------------------------- pushing

def _layout_entry(layout: Path, ref_name: str) -> dict:
    try:
        index = json.loads((Path(layout) / "index.json").read_bytes())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{layout} is not a readable OCI layout: {e}") from e
    for entry in index.get("manifests", []):
        if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == ref_name:
            return entry
    raise RuntimeError(f"OCI layout {layout} has no ref {ref_name!r}")


def push_with_skopeo(layout: Path, ref_name: str, registry_host: str, repository: str, tag: str, *,
                     creds: Optional[str] = None, timeout: float = 600) -> None:
    """``skopeo copy --all --preserve-digests`` from ``oci:<layout>:<ref_name>``
    to ``docker://<registry_host>/<repository>:<tag>`` over plain HTTP; the
    manifest bytes, hence the digests, arrive unchanged.

    skopeo 1.9.3's ``oci:`` transport finds a ref by name only when its
    descriptor has an OCI media type; a Docker manifest or manifest list is
    found only as the sole entry of ``index.json`` with no ref given. For
    those, skopeo reads a temporary one-entry view of the layout (its
    ``blobs`` a symlink to the layout's). ``creds`` is ``user:password``.
    Raises RuntimeError with skopeo's stderr (never the credentials).
    """
    layout = Path(layout).resolve()
    entry = _layout_entry(layout, ref_name)
    dest = f"docker://{registry_host}/{repository}:{tag}"
    with tempfile.TemporaryDirectory(prefix="regpatch-oci-view-") as view:
        if entry.get("mediaType") in (OCI_MANIFEST, OCI_INDEX):
            src = f"oci:{layout}:{ref_name}"
        else:
            v = Path(view)
            (v / "oci-layout").write_bytes((layout / "oci-layout").read_bytes())
            (v / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
            (v / "blobs").symlink_to(layout / "blobs", target_is_directory=True)
            src = f"oci:{v}"
        cmd = ["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "--quiet",
               "--dest-tls-verify=false"]
        if creds:
            cmd += ["--dest-creds", creds]
        cmd += [src, dest]
        try:
            proc = children.run(cmd, stderr=children.Capture(64 << 10, "tail"), timeout=timeout)
        except FileNotFoundError as e:
            raise RuntimeError("skopeo is not installed (not on PATH)") from e
        except children.ChildTimeout as e:
            raise RuntimeError(f"skopeo copy to {dest} timed out after {timeout:g} s") from e
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo copy oci:{layout}:{ref_name} to {dest} failed "
                           f"(exit {proc.returncode}): {' '.join(proc.stderr.lines())}")


# --------------------------------------------------------------------------- scenario

def scenario_servercore(workdir: Path, *, base_size: int = 256 << 10, delta_size: int = 64 << 10,
                        fmt: str = "docker", compresslevel: int = 6) -> dict:
    """The seed's story in small (Windows servercore ltsc2019, monthly update).

    Builds under ``workdir``:
    - ``old/``: base v1 + delta v1, config, manifest (os windows,
      os.version 10.0.17763.1) — the image already in the registry;
    - ``new/``: base v2 + delta v2, new config, new manifest
      (os.version 10.0.17763.2) — the monthly patch;
    - ``old-layout/`` and ``new-layout/``: OCI layouts with ref ``ltsc2019``;
    - ``staged/``: the patch in the seed's staged format
      (base.tar.gz, delta.tar.gz, delta.tar.gz.manifest.json, ...).

    Returns a dict: ``old``, ``new`` (SampleImage), ``old_layout``,
    ``new_layout``, ``staged`` (Path), ``ref`` (the layouts' ref name),
    ``repository`` ("servercore") and ``tag`` ("ltsc2019").
    """
    workdir = Path(workdir)
    images = {}
    for version, (seed_base, seed_delta, osv) in {"old": (1001, 1002, "10.0.17763.1"),
                                                   "new": (2001, 2002, "10.0.17763.2")}.items():
        d = workdir / version
        base = make_layer(d, "base.tar.gz", seed=seed_base, size=base_size,
                          compresslevel=compresslevel, oci=fmt == "oci")
        delta = make_layer(d, "delta.tar.gz", seed=seed_delta, size=delta_size,
                           compresslevel=compresslevel, oci=fmt == "oci")
        images[version] = make_image(d, [base, delta], fmt=fmt, os="windows", os_version=osv,
                                     seed=seed_delta, name="servercore")
    ref = "ltsc2019"
    return {
        "old": images["old"],
        "new": images["new"],
        "old_layout": write_oci_layout(workdir / "old-layout", {ref: images["old"]}),
        "new_layout": write_oci_layout(workdir / "new-layout", {ref: images["new"]}),
        "staged": write_staged_bundle(workdir / "staged", images["new"]),
        "ref": ref,
        "repository": "servercore",
        "tag": ref,
    }


@dataclass(frozen=True)
class Month:
    """One monthly patch of ``monthly_servercore``: its image and its staged bundle."""

    number: int                   # 1 .. months
    image: SampleImage
    staged: Path
    new_base: bool                # its base layer differs from the month before's


def monthly_servercore(workdir: Path, *, months: int = 12, base_every: int = 3, base_size: int = 256 << 10,
                       delta_size: int = 64 << 10, compresslevel: int = 6) -> list[Month]:
    """A year of the seed's monthly patches: month ``m`` is a base layer (a new one every
    ``base_every`` months: months 1, 4, 7, 10 by default) and a delta of its own, as a
    staged bundle under ``workdir/month-MM/staged``. Layers are written once each."""
    workdir = Path(workdir)
    out: list[Month] = []
    bases: dict[int, BlobFile] = {}
    for m in range(1, months + 1):
        quarter = (m - 1) // base_every
        if quarter not in bases:
            bases[quarter] = make_layer(workdir / f"base-{quarter + 1}", "base.tar.gz", seed=7000 + quarter,
                                        size=base_size, compresslevel=compresslevel)
        d = workdir / f"month-{m:02d}"
        delta = make_layer(d, "delta.tar.gz", seed=8000 + m, size=delta_size, compresslevel=compresslevel)
        image = make_image(d, [bases[quarter], delta], os="windows", os_version=f"10.0.17763.{m}",
                           seed=8000 + m, name="servercore")
        out.append(Month(m, image, write_staged_bundle(d / "staged", image), (m - 1) % base_every == 0))
    return out
