"""The site's check of a bundle, before anything is staged (``check_bundle``): the signature, the listing
against the descriptor, the blobs it assumes present in the storage."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import AbstractSet, Optional, Sequence

from regpatch.bundle.model import CONSUMED_NOTE, BundleSource
from regpatch.digest import Digest
from regpatch.errors import BaseBlobsMissing, BundleMismatch, ManifestError, SignatureError, UnsignedBundle
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, ImageManifest, Manifest, load_json, parse_manifest
from regpatch.options import opt
from regpatch.signing.descriptor import (
    DESCRIPTOR,
    LAYOUT_FILES,
    MAX_DESCRIPTOR,
    MAX_SIGNATURE,
    SIGNATURE,
    BundleDescriptor,
    parse_descriptor,
)
from regpatch.signing.keys import KeyPath, fingerprint, load_public_key, verify_bytes
from regpatch.storage.store import RegistryStore

log = logging.getLogger("regpatch.signing")


MAX_LAYOUT_FILE = MAX_MANIFEST_SIZE


@dataclass(frozen=True)
class BundleTrust:
    """What ``check_bundle`` established about a bundle."""

    bundle: str                                   # the bundle's description (never a credential)
    signed: bool                                  # the signature verified with a trust key
    key: Optional[str] = None                     # fingerprint of that key
    descriptor: Optional[BundleDescriptor] = None  # None: a plain bundle without regpatch-bundle.json
    hashed: tuple[str, ...] = ()                  # blobs hashed by the check itself (staging skips them)
    warnings: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        if self.descriptor is None:
            return f"bundle {self.bundle}: no regpatch-bundle.json, not checked"
        how = f"signed by trust key {self.key}" if self.signed else "NOT signature-checked"
        return f"bundle {self.bundle} {how}; {self.descriptor.summary()}"

    def target_warnings(self, repository: str, tag: str) -> list[str]:
        """A patch into another repository or tag than the bundle intends: a warning, not a refusal."""
        d = self.descriptor
        out = []
        if d is not None and d.repository and d.repository != repository:
            out.append(f"bundle {self.bundle} was made for repository {d.repository}, patching {repository}")
        if d is not None and d.tag and d.tag != tag:
            out.append(f"bundle {self.bundle} was made for tag {d.tag}, patching {tag}")
        return out


def _blob_name(d: Digest) -> str:
    return f"blobs/{d.algorithm}/{d.hex}"


def _verify_signature(source: BundleSource, raw: bytes, keys: Sequence[tuple[str, object]]) -> str:
    sig = source.read_bytes(SIGNATURE, MAX_SIGNATURE)
    for fp, pub in keys:
        if verify_bytes(pub, raw, sig):
            return fp
    names = ", ".join(fp for fp, _ in keys)
    raise SignatureError(
        f"the signature {source.describe(SIGNATURE)} does not verify with the trust key(s) {names}: "
        f"{DESCRIPTOR} was altered after signing, or the bundle was signed with another key; "
        "do not use this bundle, make and sign it again")


def read_descriptor(source: BundleSource, trust_keys: Sequence[KeyPath]) -> tuple[Optional[BundleDescriptor],
                                                                               bool, Optional[str]]:
    """Only the bundle's ``regpatch-bundle.json``, with its signature checked when trust keys
    are given: (descriptor or None when it has none, signed, the key that verified it or
    None). Raises ``SignatureError`` for a signature no trust key verifies, ``BundleMismatch``
    for a bad descriptor. For choosing a bundle by its signed ``created`` time; the whole
    check is ``check_bundle``'s, before the patch."""
    files = source.list()
    if DESCRIPTOR not in files:
        return None, SIGNATURE in files, None
    if files[DESCRIPTOR] > MAX_DESCRIPTOR:
        raise BundleMismatch(f"{source.describe(DESCRIPTOR)} is {files[DESCRIPTOR]} bytes, more than {MAX_DESCRIPTOR}")
    raw = source.read_bytes(DESCRIPTOR, MAX_DESCRIPTOR)
    key = None
    if trust_keys and SIGNATURE in files:
        key = _verify_signature(source, raw, [(fingerprint(k), k) for k in (load_public_key(p) for p in trust_keys)])
    return parse_descriptor(raw, source.describe(DESCRIPTOR)), SIGNATURE in files, key


def check_bundle(source: BundleSource, trust_keys: Sequence[KeyPath], allow_unsigned: bool,
                 store: RegistryStore) -> BundleTrust:
    """The site's check, before anything is staged (see the module docstring).

    Raises ``UnsignedBundle`` (trust keys configured, no signature, and not
    ``allow_unsigned``), ``SignatureError`` (a signature that no trust key
    verifies: refused even with ``allow_unsigned``), ``BundleMismatch``
    (``regpatch-bundle.json`` does not describe the bundle), ``DigestMismatch``
    (a blob the staging will not read was altered) or ``BaseBlobsMissing``
    (blobs the bundle assumes present are not in the storage). All are
    ``BundleError``s (exit 3). Reads only; the storage is never written.

    Without trust keys, a bundle with a ``regpatch-bundle.json`` is still
    checked (listing, sizes, base blobs), and one without it passes unchecked.
    """
    keys = [(fingerprint(k), k) for k in (load_public_key(p) for p in trust_keys)]
    files = source.list()
    where = source.describe(DESCRIPTOR)
    warnings: list[str] = []
    has_desc, has_sig = DESCRIPTOR in files, SIGNATURE in files
    if has_sig and not has_desc:
        raise BundleMismatch(f"bundle {source.description} has {SIGNATURE} but no {DESCRIPTOR}: it is "
                             "incomplete or altered")
    if keys and not has_sig:
        if not allow_unsigned:
            raise UnsignedBundle(f"bundle {source.description} is not signed (no {SIGNATURE}) and trust "
                                 "keys are configured; sign it with 'regpatch bundle --sign-key', or "
                                 f"pass {opt.allow_unsigned} to accept unsigned bundles")
        warnings.append(f"bundle {source.description} is unsigned; accepted because of {opt.allow_unsigned}")
    if not has_desc:
        for w in warnings:
            log.warning("%s", w)
        return BundleTrust(source.description, False, warnings=tuple(warnings))

    if files[DESCRIPTOR] > MAX_DESCRIPTOR:
        raise BundleMismatch(f"{where} is {files[DESCRIPTOR]} bytes, more than {MAX_DESCRIPTOR}")
    raw = source.read_bytes(DESCRIPTOR, MAX_DESCRIPTOR)
    key = None
    if keys and has_sig:
        key = _verify_signature(source, raw, keys)  # before a single key of the JSON is read
        log.info("signature of %s verified with trust key %s", where, key)
    elif has_sig:
        warnings.append(f"bundle {source.description} is signed but no trust key is configured: "
                        "signature not checked")
    desc = parse_descriptor(raw, where)

    consumed = _check_listing(source, files, desc, store)
    _check_layout_files(source, desc)
    referenced = _check_manifests(source, desc)
    _check_base(store, desc, source.description)
    hashed = _hash_what_staging_skips(source, store, desc, referenced, consumed)
    for w in warnings:
        log.warning("%s", w)
    trust = BundleTrust(source.description, key is not None, key, desc, tuple(hashed), tuple(warnings))
    log.info("%s", trust.summary())
    return trust


def _check_listing(source: BundleSource, files: dict[str, int], desc: BundleDescriptor,
                   store: RegistryStore) -> set:
    """The bundle holds exactly what it lists. The one exception: blobs an earlier run took
    with --consume (noted in regpatch-consumed.jsonl at the bundle's root) may be missing
    when the storage holds them (staged or installed: the patch verifies them there).
    Returns the digests of those."""
    listed = {_blob_name(b.digest): b for b in desc.blobs}
    allowed = set(listed) | set(LAYOUT_FILES) | {DESCRIPTOR, SIGNATURE, CONSUMED_NOTE}
    consumed: set = set()
    extra = sorted(n for n in files if n not in allowed)
    if extra:
        raise BundleMismatch(f"{source.describe(extra[0])} is not listed in {DESCRIPTOR}"
                             + (f" (and {len(extra) - 1} more unlisted files)" if len(extra) > 1 else "")
                             + "; the bundle was altered after it was made")
    for name, b in sorted(listed.items()):
        if name not in files:
            if CONSUMED_NOTE in files and (store.staged_path(b.digest) is not None
                                           or store.blob_size(b.digest) == b.size):
                consumed.add(b.digest)
                continue
            raise BundleMismatch(f"{source.describe(name)} is listed in {DESCRIPTOR} ({b.size:,} B) but "
                                 "missing from the bundle; copy the whole bundle again")
        if files[name] != b.size:
            raise BundleMismatch(f"{source.describe(name)} has {files[name]:,} bytes, {DESCRIPTOR} lists "
                                 f"{b.size:,}; the blob was altered or truncated")
    for name, b in desc.files:
        if name not in files:
            raise BundleMismatch(f"{source.describe(name)} is missing; the bundle is incomplete")
        if files[name] != b.size:
            raise BundleMismatch(f"{source.describe(name)} has {files[name]:,} bytes, {DESCRIPTOR} lists "
                                 f"{b.size:,}; it was altered")
    return consumed


def _check_layout_files(source: BundleSource, desc: BundleDescriptor) -> None:
    for name, b in desc.files:
        data = source.read_bytes(name, MAX_LAYOUT_FILE)
        if Digest.of_bytes(data) != b.digest or len(data) != b.size:
            raise BundleMismatch(f"{source.describe(name)} does not hash to {b.digest} as {DESCRIPTOR} "
                                 "says; it was altered after the bundle was made")
    index = load_json(source.read_bytes("index.json", MAX_LAYOUT_FILE),  # hash-checked just above
                      what=source.describe("index.json"))
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict) \
            or entries[0].get("digest") != str(desc.image.digest):
        raise BundleMismatch(f"{source.describe('index.json')} must name exactly the image "
                             f"{desc.image.digest} of {DESCRIPTOR}")


def _read_manifest(source: BundleSource, entry, where: str) -> Manifest:
    name = _blob_name(entry.digest)
    raw = source.read_bytes(name, MAX_MANIFEST_SIZE)
    if len(raw) != entry.size or Digest.of_bytes(raw) != entry.digest:
        raise BundleMismatch(f"{source.describe(name)} does not hash to {entry.digest} ({entry.size:,} B) "
                             f"as {where} says; it was altered")
    try:
        return parse_manifest(raw, what=source.describe(name), media_type_hint=entry.media_type)
    except ManifestError as e:
        raise BundleMismatch(str(e)) from None


def _check_manifests(source: BundleSource, desc: BundleDescriptor) -> dict:
    """Hash every manifest; every config and layer must be carried, assumed or foreign,
    with the size the manifest gives. Returns digest -> size of every config and layer."""
    carried = {b.digest: b for b in desc.blobs}
    assumed = {b.digest: b for b in desc.assumed}
    foreign = {b.digest: b for b in desc.foreign}
    for e in (desc.image,) + desc.manifests:
        if e.digest not in carried or carried[e.digest].size != e.size:
            raise BundleMismatch(f"manifest {e.digest} is not carried by the bundle with its size "
                                 f"({source.description}); manifests are always carried")
    top = _read_manifest(source, desc.image, DESCRIPTOR)
    if isinstance(top, ImageIndex):
        children = {(d.digest, d.size) for d in top.manifests}
        if children != {(m.digest, m.size) for m in desc.manifests}:
            raise BundleMismatch(f"the index {desc.image.digest} and the manifests {DESCRIPTOR} lists "
                                 "differ")
        images = [_read_manifest(source, m, f"index {desc.image.digest}") for m in desc.manifests]
    else:
        if [m.digest for m in desc.manifests] != [desc.image.digest]:
            raise BundleMismatch(f"{DESCRIPTOR} lists manifests other than its image {desc.image.digest}")
        images = [top]
    referenced: dict[Digest, int] = {}
    for img in images:
        if not isinstance(img, ImageManifest):
            raise BundleMismatch(f"manifest {img.digest}: nested image indexes are not supported")
        for d in img.blobs():
            known = carried.get(d.digest) or assumed.get(d.digest) or foreign.get(d.digest)
            if known is None:
                raise BundleMismatch(f"manifest {img.digest} references {d.digest}, which {DESCRIPTOR} "
                                     "neither carries nor assumes present")
            if known.size != d.size:
                raise BundleMismatch(f"{DESCRIPTOR} gives {d.digest} {known.size:,} bytes, manifest "
                                     f"{img.digest} says {d.size:,}")
            referenced[d.digest] = d.size
    manifests = {desc.image.digest} | {m.digest for m in desc.manifests}
    unused = sorted(str(b.digest) for b in desc.blobs if b.digest not in referenced and b.digest not in manifests)
    if unused:
        raise BundleMismatch(f"the bundle carries {unused[0]}, which no manifest of it references")
    return referenced


def _check_base(store: RegistryStore, desc: BundleDescriptor, bundle: str) -> None:
    """The base-version guard: every blob the bundle assumes present is in the storage."""
    missing, wrong = [], []
    for b in sorted(desc.assumed, key=lambda b: str(b.digest)):
        have = store.blob_size(b.digest)
        if have is None:
            missing.append(b)
        elif have != b.size:
            wrong.append((b, have))
    if not missing and not wrong:
        return
    made = ", ".join(str(c) for c in desc.contents) or "(no contents file recorded)"
    parts = []
    if missing:
        shown = ", ".join(f"{b.digest} ({b.size:,} B)" for b in missing[:5])
        parts.append(f"{len(missing)} blob(s) it assumes present are not in the registry storage: {shown}"
                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if wrong:
        shown = ", ".join(f"{b.digest} ({have:,} B, expected {b.size:,})" for b, have in wrong[:5])
        parts.append(f"{len(wrong)} have another size in the storage: {shown}")
    raise BaseBlobsMissing(
        f"bundle {bundle} was made against {made}: " + "; ".join(parts)
        + f"; this registry {store.root} is not in that state: patch the base image first, or make "
          "the bundle again with --have <a contents file of this registry>")


def _hash_what_staging_skips(source: BundleSource, store: RegistryStore, desc: BundleDescriptor,
                             referenced: dict, consumed: AbstractSet[Digest] = frozenset()) -> list[str]:
    """Hash the carried blobs the staging step will not read (see the module docstring)."""
    manifests = {desc.image.digest} | {m.digest for m in desc.manifests}
    hashed = []
    for b in sorted(desc.blobs, key=lambda b: str(b.digest)):
        if b.digest in manifests or b.digest in consumed:
            continue  # hashed by _check_manifests; taken by --consume: verified in the storage
        staged_later = store.blob_size(b.digest) != b.size and store.staged_path(b.digest) is None
        if staged_later:
            continue
        name = _blob_name(b.digest)
        source.hash(name, expected=b.digest, expected_size=b.size,
                    what=f"bundle file {source.describe(name)}")
        hashed.append(str(b.digest))
    if hashed:
        log.info("hashed %d carried blob(s) the staging step will not read (the registry or the "
                 "staging folder already holds them)", len(hashed))
    return hashed

