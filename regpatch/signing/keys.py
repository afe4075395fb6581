"""Keys and signatures: PEM files as ``openssl genpkey`` writes them (Ed25519, ECDSA P-256), an encrypted
private key opened with ``$REGPATCH_SIGN_KEY_PASSWORD``; ``keygen``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from regpatch import platform
from regpatch.digest import Digest
from regpatch.errors import UsageError
from regpatch.platform.ownfiles import read_own_file

KeyPath = Union[str, Path]

MAX_KEY_FILE = 64 << 10

ALGORITHMS = ("ed25519", "p256")


ENV_KEY_PASSWORD = "REGPATCH_SIGN_KEY_PASSWORD"


def _read_key_file(path: KeyPath, what: str) -> bytes:
    data = read_own_file(path, MAX_KEY_FILE, what=what, error=UsageError)
    if data is None:
        raise UsageError(f"{what} {path} does not exist")
    return data


def _check_algorithm(key, path, what: str):
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return key
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
            and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UsageError(f"{what} {path} is a {type(key).__name__.replace('_', '')} key; regpatch signs with "
                     "Ed25519 or ECDSA P-256 keys (openssl genpkey -algorithm ed25519)")


def load_private_key(path: KeyPath):
    """An Ed25519 or P-256 private key from PEM (PKCS#8 or SEC1), maybe encrypted."""
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
    pub = key.public_key() if hasattr(key, "public_key") else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + Digest.of_bytes(der).hex[:16]


def algorithm_name(key) -> str:
    return "Ed25519" if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)) \
        else "ECDSA P-256"


def sign_bytes(key, data: bytes) -> bytes:
    """Ed25519: 64 raw bytes; ECDSA P-256: DER over SHA-256 (as openssl pkeyutl -rawin)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(pub, data: bytes, signature: bytes) -> bool:
    try:
        if isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, data)
        else:
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def generate_keypair(prefix: KeyPath, algorithm: str = "ed25519") -> tuple[Path, Path]:
    """Write PREFIX.key (PKCS#8 PEM, owner-only: mode 0600, or on Windows an ACL granting
    only the current user; encrypted when $REGPATCH_SIGN_KEY_PASSWORD is set) and
    PREFIX.pub (PEM). Never overwrites a file."""
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
    _write_new(key_path, private, private=True)
    _write_new(pub_path, public, private=False)
    return key_path, pub_path


def _write_new(path: Path, data: bytes, *, private: bool) -> None:
    try:
        if private:
            fd = platform.create_private(path)  # owner-only before a byte is written
        else:
            fd = platform.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            platform.set_mode(fd, 0o644)  # umask-proof
    except FileExistsError:
        raise UsageError(f"{path} already exists; keygen never overwrites a key") from None
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def describe_keys(paths: Iterable[KeyPath]) -> list[str]:
    """'path (Ed25519 SHA256:...)' for logs and artifacts: no key material."""
    out = []
    for p in paths:
        k = load_public_key(p)
        out.append(f"{p} ({algorithm_name(k)} {fingerprint(k)})")
    return out

