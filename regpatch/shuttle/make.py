"""``make_bundle``: the order of the whole job (select the platform, split carried and assumed blobs, write
manifests, copy blobs, write the layout, sign the descriptor last)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Callable, Optional, Sequence

from regpatch.bundle.model import MAX_CONFIG_SIZE, REF_NAME
from regpatch.digest import Digest
from regpatch.errors import ManifestError, UsageError, VerificationError
from regpatch.manifest import OCI_INDEX, Descriptor, ImageIndex, ImageManifest, Manifest, load_json
from regpatch.reference import Repository, Tag
from regpatch.shuttle.destinations import open_destination
from regpatch.shuttle.sources import RegistryOptions, open_image_source
from regpatch.signing.descriptor import (
    DESCRIPTOR,
    SIGNATURE,
    BlobEntry,
    BundleDescriptor,
    ContentsRef,
    ManifestEntry,
    utc_now,
)
from regpatch.signing.keys import fingerprint, load_private_key, sign_bytes
from regpatch.storage.contents import ContentsFile, read_contents_file, union_blobs

log = logging.getLogger("regpatch.shuttle")


OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'


BLOB_WORKERS = 2


ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def tool_version() -> str:
    try:
        return f"regpatch {version('regpatch')}"
    except Exception:  # running from a source tree
        return "regpatch"


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
        for d in top.manifests:
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
    dest = open_destination(out, s3)
    src, name, default_repo, default_tag = open_image_source(source, image=image, registry=registry)
    repository = repository or default_repo
    tag = tag or default_tag
    warnings: list[str] = []
    try:
        top, images = _select(src, src.top(), platform)
        manifests: dict[Digest, bytes] = {top.digest: top.raw, **{img.digest: img.raw for img, _ in images}}
        media = {top.digest: top.media_type, **{img.digest: img.media_type for img, _ in images}}
        carried, assumed = _split_blobs(images, union_blobs(contents), warnings)
        dest.prepare()
        report = BundleReport(dest.description, None)  # type: ignore[arg-type]
        _write_manifests(dest, manifests, report)
        foreign = _copy_blobs(src, dest, list(carried.values()), report, progress, workers)
        for dg in foreign:
            carried.pop(dg)
            warnings.append(f"foreign layer {dg} is not served by {src.description}: neither "
                            "carried nor assumed; Windows clients fetch it from its urls")
        index_bytes = _write_layout(dest, top, tag or name)
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
        _remove_stale(dest, {f"blobs/sha256/{b.digest.hex}" for b in blob_entries}, report)
        _write_descriptor(dest, descriptor, key, report)
        dest.finish()
    finally:
        src.close()
    report.descriptor = descriptor
    report.warnings = warnings
    report.seconds = round(time.monotonic() - t0, 3)
    for w in warnings:
        log.warning("%s", w)
    log.info("%s", descriptor.summary())
    return report


def _split_blobs(images, have_blobs: dict[Digest, int],
                 warnings: list[str]) -> tuple[dict[Digest, Descriptor], dict[Digest, Descriptor]]:
    """(carried, assumed): a config or layer the site's contents list with the same size is
    assumed present there; every other one is carried (a size that disagrees is said)."""
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
                warnings.append(f"the site's contents list {d.digest} with {have_blobs[d.digest]:,} bytes, "
                                f"the manifest says {d.size:,}: carried")
            carried[d.digest] = d
    return carried, assumed


def _write_manifests(dest, manifests: dict[Digest, bytes], report: BundleReport) -> None:
    """Manifests are small: written from memory."""
    for digest, raw in manifests.items():
        if dest.has_blob(digest, len(raw)):
            report.reused.append((str(digest), len(raw)))
            continue
        dest.put_blob(digest, len(raw), _bytes_feed(raw), lambda n: None)
        report.written.append((str(digest), len(raw)))


def _copy_blobs(src, dest, todo: list[Descriptor], report: BundleReport, progress: ProgressFactory,
                workers: int) -> dict[Digest, Descriptor]:
    """Every carried blob streamed from the source into the destination (largest first,
    ``workers`` at once); returns the foreign layers the source does not serve."""
    foreign: dict[Digest, Descriptor] = {}
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

    todo = sorted(todo, key=lambda d: -d.size)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                                thread_name_prefix="regpatch-bundle") as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, d) for d in todo]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            wait(pending)
            for f in futures:
                error = f.exception() if f.done() and not f.cancelled() else None
                if error is not None:
                    raise error
    return foreign


def _write_layout(dest, top: Manifest, ref_name: str) -> bytes:
    """``oci-layout`` and ``index.json`` (one entry: the top manifest); returns index.json."""
    index_entry = {"mediaType": top.media_type, "digest": str(top.digest), "size": len(top.raw),
                   "annotations": {REF_NAME: ref_name}}
    index_bytes = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [index_entry]},
                             sort_keys=True, separators=(",", ":")).encode()
    dest.put_file("oci-layout", OCI_LAYOUT_BYTES)
    dest.put_file("index.json", index_bytes)
    return index_bytes


def _remove_stale(dest, keep: set[str], report: BundleReport) -> None:
    """Blobs an earlier bundle left in the destination: the site refuses unlisted files."""
    for stale in sorted(dest.blob_names() - keep):
        dest.remove(stale)
        report.removed.append(stale)
        log.info("removed %s: left by an earlier bundle in %s, not part of this one", stale, dest.description)


def _write_descriptor(dest, descriptor: BundleDescriptor, key, report: BundleReport) -> None:
    """``regpatch-bundle.json`` last, signed when a key is given; an old signature never
    stays beside a new descriptor."""
    raw = descriptor.to_json()
    dest.remove(SIGNATURE)
    dest.put_file(DESCRIPTOR, raw)
    if key is not None:
        dest.put_file(SIGNATURE, sign_bytes(key, raw))
        report.signed_with = fingerprint(key)


def _bytes_feed(raw: bytes):
    def feed(dst, offset, hasher, progress):
        rest = memoryview(raw)[offset:]
        hasher.update(rest)
        while rest:
            rest = rest[dst.write(rest):]
        progress(len(raw) - offset)

    return feed

