"""Signed delta bundles: the descriptor, keys and signatures, and the site's check.

A bundle made by ``regpatch bundle`` is an OCI image layout plus two files:

``regpatch-bundle.json``
    what the bundle is (``BundleDescriptor``): the image (manifest digest,
    child manifests with their platforms, intended repository and tag), every
    blob the bundle carries with digest and size, the sha256 of ``index.json``
    and ``oci-layout``, the blobs it assumes the site already holds and the
    ``contents`` files (name and sha256) that said so, the tool and the time.
``regpatch-bundle.json.sig``
    a detached signature over the exact bytes of ``regpatch-bundle.json``:
    Ed25519 (64 raw bytes) or ECDSA P-256 over SHA-256 (DER), exactly what
    ``openssl pkeyutl -sign -rawin`` writes, so ``openssl pkeyutl -verify
    -pubin -inkey key.pub -rawin -in regpatch-bundle.json -sigfile
    regpatch-bundle.json.sig`` checks it without regpatch.

Keys are PEM files as ``openssl genpkey`` writes them (PKCS#8 private keys,
SubjectPublicKeyInfo public keys), read with the ``cryptography`` library.
An encrypted private key is opened with ``$REGPATCH_SIGN_KEY_PASSWORD``; no
key material or password ever appears in a log or an error.

``check_bundle`` runs on the site before anything is staged. Why every byte
ends up checked, each once:

* the signature binds ``regpatch-bundle.json``; it is verified before the JSON
  is even parsed;
* ``index.json`` and ``oci-layout`` are hashed against the descriptor (small);
  so is every manifest (small), which fixes every config and layer digest;
* the listing is checked against the descriptor: every file of the bundle is
  listed, with its size, and every listed blob is there. A blob file's name
  is its digest, so a renamed, added, removed, truncated or grown file is
  refused here without reading it;
* a config or layer with the right name and size but altered bytes is caught
  by the patch's own staging step, which hashes every blob while copying it
  into ``<root>/.regpatch/staging`` and refuses a mismatch (``DigestMismatch``,
  exit 3) before anything under ``docker/registry/v2`` is written. Hashing it
  here as well would read every layer twice;
* the staging step does not read a bundle blob that the registry already
  holds with the right size (it verifies the registry's copy instead) or that
  an earlier run already staged and verified. Those few blobs, and only
  those, are hashed here, so that no altered byte of the bundle passes
  unnoticed. (With ``--cache-dir`` an S3 bundle's blob found in the cache is
  taken from the cache, verified against the same digest: the bundle's own
  copy is then never read and not checked.)
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .bundle.source import BundleSource
from .digest import Digest
from .errors import (BaseBlobsMissing, BundleMismatch, InvalidReference, ManifestError,
                     SignatureError, UnsignedBundle, UsageError)
from .manifest import (ALL_MANIFEST_TYPES, load_json, MAX_MANIFEST_SIZE, ImageIndex, ImageManifest,
                       Manifest, parse_manifest)
from .reference import Repository, Tag
from .apply import CONSUMED_NOTE
from .store import RegistryStore

log = logging.getLogger("regpatch.signing")

DESCRIPTOR = "regpatch-bundle.json"
SIGNATURE = DESCRIPTOR + ".sig"
LAYOUT_FILES = ("oci-layout", "index.json")
FORMAT = "regpatch-bundle/1"
ENV_KEY_PASSWORD = "REGPATCH_SIGN_KEY_PASSWORD"

MAX_DESCRIPTOR = 32 << 20
MAX_SIGNATURE = 1024
MAX_KEY_FILE = 64 << 10
MAX_LAYOUT_FILE = MAX_MANIFEST_SIZE
MAX_BLOBS = 200_000
MAX_TEXT = 1024
ALGORITHMS = ("ed25519", "p256")

_CONTENTS_NAME = re.compile(r"[A-Za-z0-9._+@=-]{1,255}")
_PLATFORM_KEYS = ("os", "architecture", "os.version", "variant")


# =========================================================================== the descriptor

@dataclass(frozen=True)
class BlobEntry:
    digest: Digest
    size: int
    media_type: str = ""

    def to_doc(self) -> dict:
        doc: dict = {"digest": str(self.digest), "size": self.size}
        if self.media_type:
            doc["mediaType"] = self.media_type
        return doc


@dataclass(frozen=True)
class ManifestEntry:
    digest: Digest
    size: int
    media_type: str
    platform: tuple[tuple[str, str], ...] = ()   # sorted (key, value), keys of _PLATFORM_KEYS

    def to_doc(self) -> dict:
        doc: dict = {"digest": str(self.digest), "size": self.size, "mediaType": self.media_type}
        if self.platform:
            doc["platform"] = dict(self.platform)
        return doc

    @property
    def platform_text(self) -> str:
        p = dict(self.platform)
        s = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
        return s + (f" {p['os.version']}" if p.get("os.version") else "")


@dataclass(frozen=True)
class ContentsRef:
    name: str
    sha256: Digest

    def to_doc(self) -> dict:
        return {"name": self.name, "sha256": str(self.sha256)}

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256})"


@dataclass(frozen=True)
class BundleDescriptor:
    """The content of ``regpatch-bundle.json``."""

    image: ManifestEntry                         # the top manifest (image or index)
    manifests: tuple[ManifestEntry, ...]         # the image manifests (children of an index, or the top)
    name: str                                    # ref.name of the image in index.json
    repository: Optional[str]                    # intended repository on the site
    tag: Optional[str]                           # intended tag
    files: tuple[tuple[str, BlobEntry], ...]     # index.json, oci-layout: digest and size
    blobs: tuple[BlobEntry, ...]                 # every file under blobs/sha256 (manifests too)
    assumed: tuple[BlobEntry, ...]               # blobs the site is assumed to hold
    contents: tuple[ContentsRef, ...]            # the contents files that said so
    foreign: tuple[BlobEntry, ...] = ()          # foreign layers neither carried nor assumed
    tool: str = ""
    created: str = ""
    source: str = ""

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "tool": self.tool,
            "created": self.created,
            "source": self.source,
            "image": {**self.image.to_doc(), "name": self.name, "repository": self.repository,
                      "tag": self.tag, "manifests": [m.to_doc() for m in self.manifests]},
            "files": {n: e.to_doc() for n, e in self.files},
            "blobs": [b.to_doc() for b in sorted(self.blobs, key=lambda b: str(b.digest))],
            "assumed_present": {
                "contents": [c.to_doc() for c in self.contents],
                "blobs": [b.to_doc() for b in sorted(self.assumed, key=lambda b: str(b.digest))],
            },
            "foreign": [b.to_doc() for b in sorted(self.foreign, key=lambda b: str(b.digest))],
        }
        return (json.dumps(doc, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=True)
                + "\n").encode("ascii")

    @property
    def bytes_carried(self) -> int:
        return sum(b.size for b in self.blobs)

    def summary(self) -> str:
        target = f" for {self.repository or '?'}:{self.tag or '?'}" if self.repository or self.tag else ""
        return (f"image {self.image.digest}{target}: {len(self.blobs)} blobs carried "
                f"({self.bytes_carried:,} B), {len(self.assumed)} assumed present"
                + (f" per {', '.join(c.name for c in self.contents)}" if self.contents else ""))


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- parsing (hostile input until the signature verified, and checked even then) -------------

def _mismatch(where: str, what: str) -> BundleMismatch:
    return BundleMismatch(f"{where} is not a valid regpatch bundle descriptor: {what}; make the "
                          "bundle again with 'regpatch bundle'")


def _text(doc: dict, key: str, where: str, *, optional: bool = False) -> Optional[str]:
    v = doc.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > MAX_TEXT or not v.isprintable():
        raise _mismatch(where, f"'{key}' is not a short printable string")
    return v


def _int(v, where: str, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 53:
        raise _mismatch(where, f"{what} is not a size in bytes")
    return v


def _dig(v, where: str, what: str) -> Digest:
    try:
        return Digest.parse(v)
    except InvalidReference:
        raise _mismatch(where, f"{what} is not 'sha256:<64 hex>'") from None


def _keys(doc, allowed: set, required: set, where: str, what: str) -> dict:
    if not isinstance(doc, dict):
        raise _mismatch(where, f"{what} is not an object")
    extra, missing = set(doc) - allowed, required - set(doc)
    if extra or missing:
        raise _mismatch(where, f"{what} has unknown keys {sorted(map(str, extra))[:5]} or lacks "
                               f"{sorted(missing)}")
    return doc


def _blob(doc, where: str, what: str) -> BlobEntry:
    doc = _keys(doc, {"digest", "size", "mediaType"}, {"digest", "size"}, where, what)
    mt = doc.get("mediaType", "")
    if not isinstance(mt, str) or len(mt) > 255 or not mt.isprintable():
        raise _mismatch(where, f"{what}: 'mediaType' is not a short string")
    return BlobEntry(_dig(doc["digest"], where, f"{what} digest"), _int(doc["size"], where, f"{what} size"), mt)


def _blob_list(v, where: str, what: str) -> tuple[BlobEntry, ...]:
    if not isinstance(v, list) or len(v) > MAX_BLOBS:
        raise _mismatch(where, f"'{what}' is not a list of at most {MAX_BLOBS} blobs")
    out = tuple(_blob(b, where, f"{what}[{i}]") for i, b in enumerate(v))
    if len({b.digest for b in out}) != len(out):
        raise _mismatch(where, f"'{what}' lists a digest twice")
    return out


def _manifest(doc, where: str, what: str) -> ManifestEntry:
    doc = _keys(doc, {"digest", "size", "mediaType", "platform"}, {"digest", "size", "mediaType"},
                where, what)
    mt = doc["mediaType"]
    if mt not in ALL_MANIFEST_TYPES:
        raise _mismatch(where, f"{what}: unsupported mediaType")
    plat = ()
    if "platform" in doc:
        p = _keys(doc["platform"], set(_PLATFORM_KEYS), set(), where, f"{what} platform")
        if not all(isinstance(x, str) and len(x) <= 128 and x.isprintable() for x in p.values()):
            raise _mismatch(where, f"{what}: platform values must be short strings")
        plat = tuple(sorted(p.items()))
    return ManifestEntry(_dig(doc["digest"], where, f"{what} digest"),
                         _int(doc["size"], where, f"{what} size"), mt, plat)


def parse_descriptor(raw: bytes, where: str) -> BundleDescriptor:
    try:
        doc = load_json(raw, what="the document")  # depth, duplicate and case-folded keys, as Go reads it
    except ManifestError as e:
        raise _mismatch(where, f"not JSON, or JSON Go would read differently ({e})") from None
    doc = _keys(doc, {"format", "tool", "created", "source", "image", "files", "blobs",
                      "assumed_present", "foreign"},
                {"format", "image", "files", "blobs", "assumed_present"}, where, "the document")
    if doc["format"] != FORMAT:
        raise _mismatch(where, f"'format' is not {FORMAT!r}")
    img = _keys(doc["image"], {"digest", "size", "mediaType", "platform", "name", "repository", "tag",
                               "manifests"},
                {"digest", "size", "mediaType", "name", "manifests"}, where, "'image'")
    image = _manifest({k: img[k] for k in ("digest", "size", "mediaType", "platform") if k in img},
                      where, "'image'")
    name = _text(img, "name", where)
    repository = _text(img, "repository", where, optional=True)
    tag = _text(img, "tag", where, optional=True)
    try:
        if repository is not None:
            Repository.parse(repository)
        if tag is not None:
            Tag.parse(tag)
    except InvalidReference as e:
        raise _mismatch(where, f"intended {e.kind} {e.value[:80]!r} is invalid") from None
    ms = img["manifests"]
    if not isinstance(ms, list) or not ms or len(ms) > 1024:
        raise _mismatch(where, "'image.manifests' is not a list of 1 to 1024 manifests")
    manifests = tuple(_manifest(m, where, f"image.manifests[{i}]") for i, m in enumerate(ms))
    files_doc = _keys(doc["files"], set(LAYOUT_FILES), set(LAYOUT_FILES), where, "'files'")
    files = tuple((n, _blob(files_doc[n], where, f"files[{n!r}]")) for n in LAYOUT_FILES)
    ap = _keys(doc["assumed_present"], {"contents", "blobs"}, {"contents", "blobs"}, where,
               "'assumed_present'")
    if not isinstance(ap["contents"], list) or len(ap["contents"]) > 64:
        raise _mismatch(where, "'assumed_present.contents' is not a list of at most 64 files")
    contents = []
    for i, c in enumerate(ap["contents"]):
        c = _keys(c, {"name", "sha256"}, {"name", "sha256"}, where, f"assumed_present.contents[{i}]")
        if not isinstance(c["name"], str) or not _CONTENTS_NAME.fullmatch(c["name"]):
            raise _mismatch(where, f"assumed_present.contents[{i}] name is not a plain file name")
        contents.append(ContentsRef(c["name"], _dig(c["sha256"], where, "a contents sha256")))
    return BundleDescriptor(
        image=image, manifests=manifests, name=name or "", repository=repository, tag=tag,
        files=files, blobs=_blob_list(doc["blobs"], where, "blobs"),
        assumed=_blob_list(ap["blobs"], where, "assumed_present.blobs"), contents=tuple(contents),
        foreign=_blob_list(doc.get("foreign", []), where, "foreign"),
        tool=_text(doc, "tool", where, optional=True) or "",
        created=_text(doc, "created", where, optional=True) or "",
        source=_text(doc, "source", where, optional=True) or "")


# =========================================================================== keys and signatures

KeyPath = Union[str, Path]


def _read_key_file(path: KeyPath, what: str) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"{what} {path} is larger than {MAX_KEY_FILE} bytes: not a PEM key")
    return data


def _check_algorithm(key, path, what: str):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return key
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
            and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UsageError(f"{what} {path} is a {type(key).__name__.replace('_', '')} key; regpatch signs with "
                     "Ed25519 or ECDSA P-256 keys (openssl genpkey -algorithm ed25519)")


def load_private_key(path: KeyPath):
    """An Ed25519 or P-256 private key from PEM (PKCS#8 or SEC1), maybe encrypted."""
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "signing key")
    password = os.environ.get(ENV_KEY_PASSWORD)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        if password:
            raise UsageError(f"signing key {path} is not encrypted but {ENV_KEY_PASSWORD} is set; "
                             "unset it") from None
        raise UsageError(f"signing key {path} is encrypted; set {ENV_KEY_PASSWORD}") from None
    except ValueError:
        if password and b"ENCRYPTED" in data:
            raise UsageError(f"signing key {path} cannot be decrypted with {ENV_KEY_PASSWORD}") from None
        raise UsageError(f"signing key {path} is not a PEM private key (openssl genpkey "
                         "-algorithm ed25519 -out KEY writes one)") from None
    except Exception:  # unsupported algorithms raise UnsupportedAlgorithm
        raise UsageError(f"signing key {path} uses an unsupported key type") from None
    return _check_algorithm(key, path, "signing key")


def load_public_key(path: KeyPath):
    """An Ed25519 or P-256 public key from PEM (SubjectPublicKeyInfo, 'BEGIN PUBLIC KEY')."""
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "trust key")
    if b"PRIVATE KEY" in data:
        raise UsageError(f"trust key {path} is a private key; give the public key (PREFIX.pub, or "
                         "'openssl pkey -in KEY -pubout')")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UsageError(f"trust key {path} is not a PEM public key ('-----BEGIN PUBLIC KEY-----')") from None
    except Exception:
        raise UsageError(f"trust key {path} uses an unsupported key type") from None
    return _check_algorithm(key, path, "trust key")


def fingerprint(key) -> str:
    """``SHA256:<hex>`` of the public key's DER SubjectPublicKeyInfo (first 16 hex shown)."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "public_key") else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + Digest.of_bytes(der).hex[:16]


def algorithm_name(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return "Ed25519" if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)) \
        else "ECDSA P-256"


def sign_bytes(key, data: bytes) -> bytes:
    """Ed25519: 64 raw bytes; ECDSA P-256: DER over SHA-256 (as openssl pkeyutl -rawin)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(pub, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        if isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, data)
        else:
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def generate_keypair(prefix: KeyPath, algorithm: str = "ed25519") -> tuple[Path, Path]:
    """Write PREFIX.key (PKCS#8 PEM, mode 0600; encrypted when $REGPATCH_SIGN_KEY_PASSWORD
    is set) and PREFIX.pub (PEM). Never overwrites a file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    prefix = Path(prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise UsageError(f"{p} already exists; keygen never overwrites a key: choose another --out")
    if not key_path.parent.is_dir():
        raise UsageError(f"folder {key_path.parent} does not exist")
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" \
        else ec.generate_private_key(ec.SECP256R1())
    password = os.environ.get(ENV_KEY_PASSWORD)
    enc = (serialization.BestAvailableEncryption(password.encode()) if password
           else serialization.NoEncryption())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, private, 0o600)
    _write_new(pub_path, public, 0o644)
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} already exists; keygen never overwrites a key") from None
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # umask-proof
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# =========================================================================== the site's check

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
                                 "pass --allow-unsigned to accept unsigned bundles")
        warnings.append(f"bundle {source.description} is unsigned; accepted because of --allow-unsigned")
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
                             referenced: dict, consumed: set = frozenset()) -> list[str]:
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


def describe_keys(paths: Iterable[KeyPath]) -> list[str]:
    """'path (Ed25519 SHA256:...)' for logs and artifacts: no key material."""
    out = []
    for p in paths:
        k = load_public_key(p)
        out.append(f"{p} ({algorithm_name(k)} {fingerprint(k)})")
    return out
