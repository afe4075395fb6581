"""``docker save`` archives, converted the way ``docker push`` / ``skopeo copy`` would.

A ``docker save`` archive (``manifest.json`` listing ``Config``, ``RepoTags``,
``Layers``) holds uncompressed layers and no registry manifest: the registry
cannot serve it under any digest it had before. So it is converted:

- the config is kept byte for byte: its sha256 is the old-style image id, and
  the archive's name for it must say so;
- every layer is checked against the config's ``rootfs.diff_ids`` (sha256 of
  the uncompressed tar) while it is compressed with deterministic gzip
  (``gzipper``: mtime 0, no name, fixed blocks, every core), hashed as it is
  written: the same archive always gives the same digests with the same zlib;
- a Docker schema 2 manifest is written over them: its digest is NEW.
  ``Conversion`` says old image id -> new manifest digest, for the plan and
  the summary.

Windows foreign layers: ``manifest.json``'s ``LayerSources`` maps a diff id to
the layer's original descriptor (foreign media type, digest, size, urls).
``foreign_layers="keep"`` puts that descriptor in the manifest as it was
(clients fetch the layer from its urls, as ``docker push`` does);
``"include"`` compresses the layer like any other, as a distributable layer.
None is ever dropped.

Converted layers are written into the caller's ``scratch`` folder (on the
registry's filesystem, beside its staging folder) and read from there when
staged; without a scratch folder they are only hashed, and compressed again,
identically, when staged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional

from regpatch import platform
from regpatch.bundle.gzipper import DEFAULT_LEVEL, compress_stream
from regpatch.bundle.model import BundleFile, BundleSource, PatchBundle, _safe_name
from regpatch.digest import Digest
from regpatch.errors import BundleError, DigestMismatch, InvalidReference, ManifestError, SourceError, UsageError
from regpatch.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, load_json, parse_manifest
from regpatch.options import opt
from regpatch.sanitize import shown

log = logging.getLogger("regpatch.bundle")

MAX_INDEX_JSON = 4 << 20
MAX_CONFIG_SIZE = 16 << 20
MAX_IMAGES = 10_000
MAX_LAYERS = 1_000
MAX_TAG = 512
MAX_CONFIGS_TOTAL = 64 << 20   # all the configs of one archive, held in memory together


# -- strict JSON --------------------------------------------------------------------

def strict_json(raw: bytes, what: str):
    """Parse JSON as Go's encoding/json reads it (the one strict reader, manifest.load_json:
    UTF-8 only, no duplicate or case-folded keys, no NaN/Infinity, nesting bounded)."""
    return load_json(raw, what=what)


# -- what the archive says ----------------------------------------------------------------

@dataclass(frozen=True)
class SavedLayer:
    index: int
    name: str                 # the file of the archive holding the uncompressed tar
    diff_id: Digest
    size: int                 # bytes of that file (uncompressed)
    foreign: Optional[dict] = None   # LayerSources descriptor, when the archive names one


@dataclass(frozen=True)
class SavedImage:
    config_name: str
    config: bytes = field(repr=False)
    image_id: Digest          # sha256 of the config: the old-style image id
    repo_tags: tuple[str, ...]
    layers: tuple[SavedLayer, ...]
    os: str = ""
    architecture: str = ""
    variant: str = ""
    os_version: str = ""

    @property
    def name(self) -> str:
        return self.repo_tags[0] if self.repo_tags else f"(untagged {self.image_id.short})"


def read_saved_images(source: BundleSource) -> list[SavedImage]:
    """Every image of a docker save archive, checked for shape (no layer is read)."""
    files = source.list()
    mwhat = f"docker save archive {source.describe('manifest.json')}"
    doc = strict_json(source.read_bytes("manifest.json", MAX_INDEX_JSON), mwhat)
    if not isinstance(doc, list) or not doc:
        raise ManifestError(f"{mwhat}: a docker save manifest.json is a non-empty JSON list")
    if len(doc) > MAX_IMAGES:
        raise ManifestError(f"{mwhat}: more than {MAX_IMAGES} images")
    images = []
    held = 0
    for i, entry in enumerate(doc):
        where = f"{mwhat} [{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: an entry must be a JSON object")
        cname = _member_name(entry.get("Config"), f"{where} Config", files)
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG for t in tags):
            raise ManifestError(f"{where}: RepoTags must be a list of names")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise ManifestError(f"{where}: Layers must be a list of at most {MAX_LAYERS} file names")
        sources = entry.get("LayerSources") or {}
        if not isinstance(sources, dict):
            raise ManifestError(f"{where}: LayerSources must be a JSON object")
        config = source.read_bytes(cname, MAX_CONFIG_SIZE)
        held += len(config)
        if held > MAX_CONFIGS_TOTAL:
            raise ManifestError(f"{mwhat}: its image configs add up to more than {MAX_CONFIGS_TOTAL >> 20} MiB; "
                                "not a docker save archive regpatch reads")
        image_id = Digest.of_bytes(config)
        claimed = _claimed_digest(cname)
        if claimed is not None and claimed != image_id:
            raise DigestMismatch(f"config {source.describe(cname)}", claimed, image_id, len(config))
        cwhat = f"config {source.describe(cname)}"
        cdoc = strict_json(config, cwhat)
        if not isinstance(cdoc, dict):
            raise ManifestError(f"{cwhat}: an image config is a JSON object")
        rootfs = cdoc.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            listed = len(diff_ids) if isinstance(diff_ids, list) else "no"
            raise ManifestError(f"{cwhat}: rootfs.diff_ids lists {listed} "
                                f"layers, {mwhat} [{i}] lists {len(layers)}: the archive is inconsistent")
        saved = []
        for j, (lname, did) in enumerate(zip(layers, diff_ids, strict=True)):
            lwhere = f"{where} Layers[{j}]"
            name = _member_name(lname, lwhere, files)
            try:
                diff_id = Digest.parse(did)
            except InvalidReference as e:
                raise ManifestError(f"{cwhat}: rootfs.diff_ids[{j}]: {e}") from None
            foreign = sources.get(str(diff_id))
            if foreign is not None:
                foreign = _foreign_descriptor(foreign, f"{where} LayerSources[{diff_id}]")
            saved.append(SavedLayer(j, name, diff_id, files[name], foreign))
        text = lambda k, cdoc=cdoc: cdoc.get(k) if isinstance(cdoc.get(k), str) else ""  # noqa: E731
        images.append(SavedImage(cname, config, image_id, tuple(tags), tuple(saved), text("os"),
                                 text("architecture"), text("variant"), text("os.version")))
    return images


def _member_name(value, what: str, files: dict[str, int]) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{what}: expected a file name of the archive")
    name = value[2:] if value.startswith("./") else value
    try:
        name = _safe_name(name)
    except BundleError:
        raise ManifestError(f"{what}: {shown(value)!r} is not a plain relative file name") from None
    if name not in files:
        raise BundleError(f"{what} names {shown(value)!r}, which the archive does not hold: it is "
                          "incomplete")
    return name


def _claimed_digest(name: str) -> Optional[Digest]:
    """The digest a config's file name claims: '<hex>.json' (docker) or 'blobs/sha256/<hex>' (docker 25+)."""
    base = name.rsplit("/", 1)[-1]
    hexpart = base[:-5] if base.endswith(".json") else base
    if len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        return Digest("sha256", hexpart)
    return None


def _foreign_descriptor(obj, what: str) -> dict:
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: a layer source must be a JSON object")
    media_type = obj.get("mediaType")
    size = obj.get("size")
    urls = obj.get("urls") or []
    if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: needs a mediaType and a non-negative size")
    try:
        digest = Digest.parse(obj.get("digest"))
    except InvalidReference as e:
        raise ManifestError(f"{what}: {e}") from None
    if not isinstance(urls, list) or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                             for u in urls):
        raise ManifestError(f"{what}: urls must be a list of http(s) URLs")
    desc = {"mediaType": media_type, "size": size, "digest": str(digest)}
    if urls:
        desc["urls"] = list(urls)
    return desc


def _matches(tag: str, wanted: str) -> bool:
    if tag == wanted:
        return True
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if tag.startswith(prefix) and tag[len(prefix):] == wanted:
            return True
    return False


def select_image(images: list[SavedImage], image: Optional[str], where: str) -> SavedImage:
    names = ", ".join(shown(i.name, 80) for i in images)
    if image is not None:
        chosen = [i for i in images if any(_matches(t, image) for t in i.repo_tags)
                  or image in (str(i.image_id), i.image_id.hex, i.image_id.short)]
        if not chosen:
            raise UsageError(f"docker save archive {where} has no image {shown(image)!r}; it has: {names}")
        if len({i.image_id for i in chosen}) > 1:
            raise BundleError(f"docker save archive {where} names {len(chosen)} different images "
                              f"{shown(image)!r}")
        return chosen[0]
    if len(images) == 1:
        return images[0]
    raise UsageError(f"docker save archive {where} holds {len(images)} images ({names}); "
                     f"choose one with {opt.image} (a RepoTag or the image id)")


# -- the conversion --------------------------------------------------------------------

@dataclass
class ConvertedLayer:
    index: int
    source_name: str
    diff_id: Digest
    raw_size: int
    digest: Digest
    size: int
    foreign_kept: bool = False
    media_type: str = DOCKER_LAYER
    seconds: float = 0.0
    foreign_source: bool = False      # the archive names a foreign descriptor for it (LayerSources)


@dataclass
class Conversion:
    """What converting a docker save archive produced: old image id -> new manifest digest."""

    archive: str
    image: str
    image_id: Digest                  # the config digest, unchanged
    manifest_digest: Digest           # NEW: no registry served this image under it before
    layers: list[ConvertedLayer]
    foreign_layers: str
    gzip_level: int
    scratch: Optional[str]
    seconds: float = 0.0

    @property
    def raw_bytes(self) -> int:
        return sum(l.raw_size for l in self.layers if not l.foreign_kept)

    @property
    def compressed_bytes(self) -> int:
        return sum(l.size for l in self.layers if not l.foreign_kept)

    def note(self) -> str:
        kept = [l for l in self.layers if l.foreign_kept]
        text = (f"docker save archive converted as docker push would: image {shown(self.image, 120)} "
                f"id {self.image_id} -> NEW manifest digest {self.manifest_digest} (Docker schema 2; the "
                f"registry never served this image under any earlier digest); "
                f"{len(self.layers) - len(kept)} layers gzip-compressed, {self.raw_bytes:,} B -> "
                f"{self.compressed_bytes:,} B")
        included = [l for l in self.layers if not l.foreign_kept and l.foreign_source]
        if included:
            text += (f"; {len(included)} foreign layers included as distributable layers "
                     "(stored in the registry, no urls)")
        if kept:
            text += (f"; {len(kept)} foreign layers kept as foreign descriptors with their urls "
                     "(not stored; clients fetch them from the urls; foreign_layers='include' stores them)")
        return text


def _same_layer_twice(earlier: SavedLayer, layer: SavedLayer, source: BundleSource) -> None:
    """One layer file listed twice (by the same name, or a name that leads to the same
    member) must be listed for one diff id: its bytes have one digest, so a second diff id
    is a config that contradicts its layers (skopeo refuses such an archive)."""
    if layer.diff_id != earlier.diff_id:
        raise ManifestError(f"{source.describe(layer.name)} is listed as Layers[{earlier.index}] and "
                            f"Layers[{layer.index}] for two different diff ids ({earlier.diff_id}, "
                            f"{layer.diff_id}): the config contradicts its layers; save the image again")


def _layers_to_convert(img: SavedImage, source: BundleSource,
                       foreign_layers: str) -> tuple[list[SavedLayer], dict[int, dict]]:
    """(the layer files to convert, each once; the foreign layers kept as they are, by index)."""
    todo: list[SavedLayer] = []
    keep: dict[int, dict] = {}
    first: dict[str, SavedLayer] = {}  # canonical member -> the first layer that lists it
    for layer in img.layers:
        if layer.foreign is not None and layer.foreign["mediaType"] != DOCKER_LAYER and foreign_layers == "keep":
            keep[layer.index] = layer.foreign
            continue
        member = source.canonical(layer.name)
        if member in first:
            _same_layer_twice(first[member], layer, source)
            continue
        first[member] = layer
        todo.append(layer)
    return todo, keep


def load_docker_save(source: BundleSource, *, image: Optional[str] = None, scratch: Optional[Path] = None,
                     foreign_layers: str = "keep", gzip_level: Optional[int] = None):
    """Convert the chosen image of a docker save archive into a PatchBundle (new digest)."""
    level = DEFAULT_LEVEL if gzip_level is None else gzip_level
    if not 1 <= level <= 9:
        raise UsageError(f"gzip level must be 1..9, got {level}")
    t0 = time.monotonic()
    img = select_image(read_saved_images(source), image, source.description)
    work = _ScratchDir(Path(scratch)) if scratch is not None else None
    try:
        return _converted(source, img, work, foreign_layers, level, t0)
    except BaseException:  # a refused archive (or a stop) leaves no folder of its own behind
        if work is not None:
            work.cleanup()
        raise


def _converted(source: BundleSource, img: SavedImage, work: Optional[_ScratchDir], foreign_layers: str,
               level: int, t0: float) -> PatchBundle:
    converted: dict[str, ConvertedLayer] = {}   # canonical member -> result
    todo, keep = _layers_to_convert(img, source, foreign_layers)

    def convert(name: str, stream: BinaryIO) -> None:
        layer = next(l for l in todo if l.name == name)
        what = f"layer {layer.index} ({source.describe(name)})"
        t = time.monotonic()
        sink = work.new_file() if work is not None else None
        try:
            head = _Peek(stream)
            if head.magic() in (b"\x1f\x8b", b"\x28\xb5"):
                raise BundleError(f"{what} is compressed; docker save archives hold uncompressed layers: "
                                  "the archive was modified, save it again")
            stats = compress_stream(head, sink.write if sink else None, level=level, limit=None)
            if stats.raw_size != layer.size:
                raise SourceError(f"{what}: read {stats.raw_size:,} bytes, the archive lists {layer.size:,}")
            actual = Digest.parse(stats.raw_digest)
            if actual != layer.diff_id:
                raise DigestMismatch(f"{what} (uncompressed; the config's rootfs.diff_ids[{layer.index}])",
                                     layer.diff_id, actual, stats.raw_size)
            digest = Digest.parse(stats.out_digest)
            if sink is not None and work is not None:  # (a sink only comes from work)
                work.keep(sink, digest)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        secs = time.monotonic() - t
        converted[source.canonical(name)] = ConvertedLayer(layer.index, name, layer.diff_id, layer.size,
                                                            digest, stats.out_size, seconds=secs)
        log.info("converted %s: %s B -> %s B gzip %s in %.2fs (%.0f MB/s)", what, f"{layer.size:,}",
                 f"{stats.out_size:,}", digest, secs, layer.size / 1e6 / max(secs, 1e-6))

    source.scan([l.name for l in todo], convert)

    layers_out: list[ConvertedLayer] = []
    descs: list[dict] = []
    for layer in img.layers:
        if layer.index in keep:
            d = keep[layer.index]
            descs.append(d)
            layers_out.append(ConvertedLayer(layer.index, layer.name, layer.diff_id, layer.size,
                                             Digest.parse(d["digest"]), d["size"], foreign_kept=True,
                                             media_type=d["mediaType"]))
            continue
        c = converted[source.canonical(layer.name)]
        descs.append({"mediaType": DOCKER_LAYER, "size": c.size, "digest": str(c.digest)})
        layers_out.append(ConvertedLayer(layer.index, layer.name, layer.diff_id, layer.size, c.digest, c.size,
                                         seconds=c.seconds, foreign_source=layer.foreign is not None))
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": DOCKER_CONFIG, "size": len(img.config), "digest": str(img.image_id)},
           "layers": descs}
    raw = json.dumps(doc, indent=3).encode()  # as docker's registry client marshals it
    top = parse_manifest(raw, what=f"manifest converted from {source.description}")
    conv = Conversion(source.description, img.name, img.image_id, top.digest, layers_out, foreign_layers,
                      level, str(work.path) if work else None, time.monotonic() - t0)
    csource = ConvertedSource(source, img, conv, work, level)
    files = {d: BundleFile(n, s, d, True) for n, (d, s) in csource.blob_names().items()}
    bundle = PatchBundle(csource, "docker-archive", top, files, notes=[conv.note()], conversion=conv)
    log.info("%s", conv.note())
    return bundle


class _Peek(io.RawIOBase):
    """A stream whose first bytes can be looked at before it is read."""

    def __init__(self, f: BinaryIO):
        super().__init__()
        self._f = f
        self._head = b""
        self._peeked = False

    def magic(self) -> bytes:
        if not self._peeked:
            self._head = self._f.read(2) or b""
            self._peeked = True
        return self._head

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            if len(out) < n:
                out += self._f.read(n - len(out)) or b""
            return out
        return self._f.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _ScratchFile:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "xb", buffering=0)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            view = view[n:]

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _ScratchDir:
    """``<scratch>/docker-save-<pid>-<random>/``: this conversion's files, removed by ``cleanup``.

    Folders of conversions whose process is gone are removed when a new one starts.
    """

    PREFIX = "docker-save-"

    def __init__(self, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self._sweep(base)
        self.path = base / f"{self.PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.path.mkdir(mode=0o700)
        self._n = 0

    @classmethod
    def _sweep(cls, base: Path) -> None:
        for entry in os.scandir(base):
            if not entry.name.startswith(cls.PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            pid = entry.name[len(cls.PREFIX):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not platform.pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)

    def new_file(self) -> _ScratchFile:
        self._n += 1
        return _ScratchFile(self.path / f".part-{self._n}")

    def keep(self, f: _ScratchFile, digest: Digest) -> Path:
        f.close()
        final = self.blob(digest)
        platform.replace(f.path, final)
        return final

    def blob(self, digest: Digest) -> Path:
        return self.path / f"{digest.algorithm}-{digest.hex}"

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ConvertedSource(BundleSource):
    """The converted image as a bundle source: manifest and config in memory, layers in the
    scratch folder (or compressed again on the fly, identically, when there is none)."""

    def __init__(self, archive: BundleSource, image: SavedImage, conversion: Conversion,
                 work: Optional[_ScratchDir], level: int):
        self.archive = archive
        self.image = image
        self.conversion = conversion
        self.description = f"{archive.description} (converted)"
        self._work = work
        self._level = level
        self._layers = {l.digest: l for l in conversion.layers if not l.foreign_kept}
        self._names = {f"blobs/sha256/{image.image_id.hex}": (image.image_id, len(image.config))}
        for d, l in self._layers.items():
            self._names[f"blobs/sha256/{d.hex}"] = (d, l.size)

    @property
    def parallel_reads(self) -> bool:  # layers in the scratch folder are plain local files
        return self._work is not None

    def blob_names(self) -> dict[str, tuple[Digest, int]]:
        return dict(self._names)

    def list(self) -> dict[str, int]:
        return {n: s for n, (_, s) in self._names.items()}

    def _layer(self, name: str) -> Optional[ConvertedLayer]:
        entry = self._names.get(name)
        if entry is None:
            raise SourceError(f"{self.describe(name)} is not a blob of the converted image")
        return self._layers.get(entry[0])

    def describe(self, name: str) -> str:
        layer = self._layer(name) if name in self._names else None
        if layer is None:
            return f"{self.archive.describe(self.image.config_name)} (config)"
        return (f"{self.archive.describe(layer.source_name)} (layer {layer.index}, converted to "
                f"{name.rsplit('/', 1)[-1][:19]}...)")

    def local_path(self, name: str) -> Optional[Path]:
        layer = self._layer(name)
        if layer is None or self._work is None:
            return None
        path = self._work.blob(layer.digest)
        return path if path.is_file() else None

    def open(self, name: str) -> BinaryIO:
        layer = self._layer(name)
        if layer is None:
            return io.BytesIO(self.image.config)
        path = self.local_path(name)
        if path is not None:
            return open(path, "rb", buffering=0)
        return _Recompress(self.archive, layer.source_name, self._level)  # type: ignore[return-value]

    def read_bytes(self, name: str, limit: int) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SourceError(f"{self.describe(name)} is larger than {limit} bytes")
        return data

    def cleanup(self) -> None:
        if self._work is not None:
            self._work.cleanup()


class _Recompress(io.RawIOBase):
    """The gzip of an archive member, produced on the fly by a thread (deterministic)."""

    def __init__(self, archive: BundleSource, name: str, level: int):
        super().__init__()
        self._q: queue.Queue = queue.Queue(maxsize=8)
        self._buf = b""
        self._done = False
        self._stop = threading.Event()

        def produce() -> None:
            try:
                with archive.open(name) as src:
                    compress_stream(src, self._put, level=level)
                self._q.put(None)
            except BaseException as e:  # handed to the reader
                self._q.put(e)

        self._t = threading.Thread(target=produce, daemon=True, name="regpatch-recompress")
        self._t.start()

    def _put(self, data: bytes) -> None:
        if self._stop.is_set():
            raise SourceError("reading stopped")
        self._q.put(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf and not self._done:
            item = self._q.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buf = item
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            while self._t.is_alive():
                try:
                    self._q.get(timeout=0.1)
                except queue.Empty:
                    pass
        super().close()
