"""Keys, signatures, delta bundles from local sources, and the site's check_bundle.

Everything on real files in tmp_path: bundles are made by make_bundle from OCI
layouts written by regpatch.demo.images, site storages by RegistryStore's own writes.
(The openssl interoperability and the registry round trip are in
tests/e2e/test_shuttle.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.util import tree_hash

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout
from regpatch.digest import Digest
from regpatch.errors import (
    BaseBlobsMissing,
    BundleError,
    BundleMismatch,
    DigestMismatch,
    SignatureError,
    UnsignedBundle,
    UsageError,
)
from regpatch.reference import Repository, Tag
from regpatch.shuttle.destinations import PARTIAL_DIR
from regpatch.shuttle.make import make_bundle, parse_platform
from regpatch.shuttle.sources import parse_docker_reference
from regpatch.signing.check import check_bundle
from regpatch.signing.descriptor import DESCRIPTOR, SIGNATURE, parse_descriptor
from regpatch.signing.keys import (
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_bytes,
    verify_bytes,
)
from regpatch.storage.contents import read_storage, write_contents
from regpatch.storage.store import RegistryStore


def put_image(store: RegistryStore, repo: str, tag: str, img) -> None:
    lay, r, t = store.layout, Repository.parse(repo), Tag.parse(tag)
    for b in img.blobs:
        store.write_file(lay.blob_data(b.digest), Path(b.path).read_bytes(), durable=False)
        store.write_link(lay.layer_link(r, b.digest), b.digest)
    store.write_file(lay.blob_data(img.manifest_digest), img.manifest_bytes, durable=False)
    store.write_link(lay.revision_link(r, img.manifest_digest), img.manifest_digest)
    store.write_link(lay.tag_index_link(r, t, img.manifest_digest), img.manifest_digest)
    store.write_link(lay.tag_current_link(r, t), img.manifest_digest)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    """Last month's and this month's image: the same base, a new delta (servercore-like)."""
    d = tmp_path_factory.mktemp("imgs")
    base = make_layer(d / "l", "base", seed=11, size=300_000, compresslevel=1)
    d1 = make_layer(d / "l", "delta1", seed=12, size=100_000, compresslevel=1)
    d2 = make_layer(d / "l", "delta2", seed=13, size=120_000, compresslevel=1)
    old = make_image(d / "old", [base, d1], os="windows", os_version="10.0.17763.1", seed=12)
    new = make_image(d / "new", [base, d2], os="windows", os_version="10.0.17763.2", seed=13)
    layout = write_oci_layout(d / "new-layout", {"ltsc2019": new})
    return {"old": old, "new": new, "base": base, "delta2": d2, "layout": layout}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"ed": generate_keypair(d / "ed"), "p256": generate_keypair(d / "p256", "p256"),
            "other": generate_keypair(d / "other")}


@pytest.fixture
def site(tmp_path, imgs):
    """The site: a storage holding last month's image, and its contents file."""
    (tmp_path / "site").mkdir()
    store = RegistryStore(tmp_path / "site")
    put_image(store, "servercore", "ltsc2019", imgs["old"])
    contents = tmp_path / "site-a.contents.json"
    write_contents(read_storage(store), contents)
    return store, contents


@pytest.fixture
def bundle(tmp_path, imgs, keys, site):
    """This month's image as a delta bundle against the site, signed with the Ed25519 key."""
    _, contents = site
    out = tmp_path / "bundle"
    make_bundle(str(imgs["layout"]), str(out), have=[str(contents)], sign_key=str(keys["ed"][0]),
                repository="servercore", tag="ltsc2019")
    return out


def check(out: Path, store, trust=(), allow_unsigned=False):
    return check_bundle(LocalFolderSource(out), [str(p) for p in trust], allow_unsigned, store)


# -- keys and signatures ----------------------------------------------------------------

@pytest.mark.posix_only  # file modes (Windows: an ACL, test_platform_windows)
def test_keygen_writes_a_private_0600_and_a_public_key(tmp_path, capsys):
    assert regpatch_main(["keygen", "--out", str(tmp_path / "k")]) == 0
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    out = capsys.readouterr().out
    assert f"Ed25519 {fingerprint(load_public_key(pub))}" in out
    assert regpatch_main(["keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert regpatch_main(["keygen", "--out", str(tmp_path / "p"), "--algorithm", "p256"]) == 0
    assert isinstance(load_private_key(tmp_path / "p.key"), ec.EllipticCurvePrivateKey)


@pytest.mark.parametrize("kind", ["ed", "p256"])
def test_sign_and_verify(keys, kind):
    key = load_private_key(keys[kind][0])
    pub = load_public_key(keys[kind][1])
    sig = sign_bytes(key, b"descriptor bytes")
    assert verify_bytes(pub, b"descriptor bytes", sig)
    assert not verify_bytes(pub, b"descriptor bytes!", sig)
    assert not verify_bytes(load_public_key(keys["other"][1]), b"descriptor bytes", sig)
    assert not verify_bytes(pub, b"descriptor bytes", sig[:-1] + bytes([sig[-1] ^ 1]))


def test_encrypted_key_needs_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("REGPATCH_SIGN_KEY_PASSWORD", "s3cret-pass")
    key, _ = generate_keypair(tmp_path / "enc")
    assert b"ENCRYPTED" in key.read_bytes()
    load_private_key(key)
    monkeypatch.setenv("REGPATCH_SIGN_KEY_PASSWORD", "wrong")
    with pytest.raises(UsageError, match="cannot be decrypted") as e:
        load_private_key(key)
    assert "wrong" not in str(e.value)
    monkeypatch.delenv("REGPATCH_SIGN_KEY_PASSWORD")
    with pytest.raises(UsageError, match="is encrypted; set REGPATCH_SIGN_KEY_PASSWORD"):
        load_private_key(key)


def test_unsupported_or_wrong_key_files(tmp_path, keys):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UsageError, match="Ed25519 or ECDSA P-256"):
        load_private_key(tmp_path / "rsa.key")
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pub").write_bytes(p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UsageError, match="Ed25519 or ECDSA P-256"):
        load_public_key(tmp_path / "p384.pub")
    with pytest.raises(UsageError, match="is a private key"):
        load_public_key(keys["ed"][0])
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(UsageError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk")
    with pytest.raises(UsageError, match="not a PEM private key"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(UsageError, match="does not exist"):
        load_public_key(tmp_path / "nope.pub")


# -- making bundles ---------------------------------------------------------------------

def test_delta_bundle_carries_only_what_the_site_lacks(bundle, imgs, site):
    _, contents = site
    new = imgs["new"]
    desc = parse_descriptor((bundle / DESCRIPTOR).read_bytes(), "d")
    carried = {b.digest for b in desc.blobs}
    assert carried == {new.manifest_digest, new.config.digest, imgs["delta2"].digest}
    assert {b.digest for b in desc.assumed} == {imgs["base"].digest}
    assert [(c.name, c.sha256) for c in desc.contents] == [
        ("site-a.contents.json", Digest.of_bytes(contents.read_bytes()))]
    assert (desc.repository, desc.tag, desc.image.digest) == ("servercore", "ltsc2019", new.manifest_digest)
    assert dict(desc.manifests[0].platform) == {"os": "windows", "architecture": "amd64",
                                                "os.version": "10.0.17763.2"}
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert files == {"oci-layout", "index.json", DESCRIPTOR, SIGNATURE} | {
        f"blobs/sha256/{d.hex}" for d in carried}
    assert not (bundle / PARTIAL_DIR).exists()
    # the layout is an ordinary OCI layout: regpatch's own reader takes it
    loaded = load_bundle(LocalFolderSource(bundle))
    assert loaded.top.digest == new.manifest_digest
    overhead = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) - imgs["delta2"].size
    assert overhead < 64 << 10


def test_check_passes_and_reads_only(bundle, site, keys):
    store, _ = site
    before = tree_hash(store.root)
    trust = check(bundle, store, [keys["other"][1], keys["ed"][1]])
    assert trust.signed and trust.key == fingerprint(load_public_key(keys["ed"][1]))
    assert trust.hashed == ()  # nothing the staging will not read: every carried blob is new to the site
    assert trust.target_warnings("servercore", "ltsc2019") == []
    assert trust.target_warnings("app", "1") == [
        f"bundle {bundle} was made for repository servercore, patching app",
        f"bundle {bundle} was made for tag ltsc2019, patching 1"]
    assert tree_hash(store.root) == before


def _refused(bundle, store, exc, match, trust, allow_unsigned=False):
    before = tree_hash(store.root)
    with pytest.raises(exc, match=match) as e:
        check(bundle, store, trust, allow_unsigned)
    assert isinstance(e.value, BundleError) and e.value.exit_code == 3
    assert "\n" not in str(e.value)
    assert tree_hash(store.root) == before
    return e.value


def test_unsigned_bundle_with_trust_keys(tmp_path, imgs, site, keys):
    store, contents = site
    out = tmp_path / "unsigned"
    make_bundle(str(imgs["layout"]), str(out), have=[str(contents)])
    _refused(out, store, UnsignedBundle, "is not signed .* --allow-unsigned", [keys["ed"][1]])
    trust = check(out, store, [keys["ed"][1]], allow_unsigned=True)
    assert not trust.signed and "unsigned" in trust.warnings[0]
    assert check(out, store).descriptor is not None  # no trust keys: still checked, not signed


def test_wrong_key_is_refused_even_with_allow_unsigned(bundle, site, keys):
    store, _ = site
    err = _refused(bundle, store, SignatureError, "does not verify with the trust key", [keys["other"][1]],
                   allow_unsigned=True)
    assert fingerprint(load_public_key(keys["other"][1])) in str(err)


@pytest.mark.parametrize("what", [DESCRIPTOR, SIGNATURE])
def test_any_altered_byte_of_descriptor_or_signature(bundle, site, keys, what):
    store, _ = site
    data = bytearray((bundle / what).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / what).write_bytes(bytes(data))
    _refused(bundle, store, SignatureError, "does not verify", [keys["ed"][1]])


def test_listing_must_match(bundle, site, keys, imgs):
    store, _ = site
    trust = [keys["ed"][1]]
    delta = bundle / "blobs/sha256" / imgs["delta2"].digest.hex
    saved = delta.read_bytes()
    delta.write_bytes(saved[:-1])
    _refused(bundle, store, BundleMismatch, "has 12.* bytes, regpatch-bundle.json lists", trust)
    delta.unlink()
    _refused(bundle, store, BundleMismatch, "listed in regpatch-bundle.json .* but missing", trust)
    delta.write_bytes(saved)
    extra = bundle / "blobs/sha256" / imgs["base"].digest.hex
    shutil.copyfile(imgs["base"].path, extra)
    _refused(bundle, store, BundleMismatch, "is not listed in regpatch-bundle.json", trust)
    extra.unlink()
    index = bundle / "index.json"
    index.write_bytes(index.read_bytes().replace(b"ltsc2019", b"ltsc2022"))
    _refused(bundle, store, BundleMismatch, "index.json does not hash to", trust)


def test_altered_blob_same_size(bundle, site, keys, imgs):
    """Caught by the staging hash when the site lacks the blob; hashed here when it has it."""
    store, _ = site
    delta = bundle / "blobs/sha256" / imgs["delta2"].digest.hex
    data = bytearray(delta.read_bytes())
    data[100] ^= 0xFF
    delta.write_bytes(bytes(data))
    trust = check(bundle, store, [keys["ed"][1]])  # listing fine: the staging step hashes this one
    assert trust.hashed == ()
    # the site meanwhile holds the delta: staging would not read the bundle's copy, so the check does
    store.write_file(store.layout.blob_data(imgs["delta2"].digest), Path(imgs["delta2"].path).read_bytes())
    _refused(bundle, store, DigestMismatch, "digest mismatch for bundle file", [keys["ed"][1]])


def test_missing_base_blob_names_blob_and_contents_file(tmp_path, bundle, keys, imgs, site):
    _, contents = site
    (tmp_path / "empty-site").mkdir()
    store = RegistryStore(tmp_path / "empty-site")
    err = _refused(bundle, store, BaseBlobsMissing, "assumes present are not in the registry storage",
                   [keys["ed"][1]])
    assert str(imgs["base"].digest) in str(err)
    assert f"site-a.contents.json ({Digest.of_bytes(contents.read_bytes())})" in str(err)
    # a copy of the wrong size is no better
    store.write_file(store.layout.blob_data(imgs["base"].digest), b"short")
    _refused(bundle, store, BaseBlobsMissing, "have another size", [keys["ed"][1]])


def test_plain_bundles_pass_without_trust_keys(tmp_path, imgs, site, keys):
    store, _ = site
    trust = check(imgs["layout"], store)
    assert trust.descriptor is None and not trust.signed
    _refused(imgs["layout"], store, UnsignedBundle, "not signed", [keys["ed"][1]])


def test_resume_reuse_and_cleanup(tmp_path, imgs, keys):
    out = tmp_path / "b"
    first = make_bundle(str(imgs["layout"]), str(out), sign_key=str(keys["ed"][0]))
    assert len(first.written) == 4 and first.signed_with  # manifest, config, base, delta
    # an interrupted run: the base layer half written in the partial folder, the delta corrupt
    base, delta = imgs["base"], imgs["delta2"]
    (out / "blobs/sha256" / base.digest.hex).unlink()
    (out / PARTIAL_DIR).mkdir()
    (out / PARTIAL_DIR / f"sha256-{base.digest.hex}").write_bytes(Path(base.path).read_bytes()[:base.size // 2])
    blob = out / "blobs/sha256" / delta.digest.hex
    blob.write_bytes(b"x" * delta.size)
    (out / "blobs/sha256" / ("0" * 64)).write_bytes(b"stale")  # left by an earlier bundle
    second = make_bundle(str(imgs["layout"]), str(out))          # unsigned this time
    assert second.resumed_bytes == base.size // 2
    assert {d for d, _ in second.written} == {str(base.digest), str(delta.digest)}
    assert len(second.reused) == 2
    assert second.removed == ["blobs/sha256/" + "0" * 64]
    assert not (out / SIGNATURE).exists()  # never an old signature beside a new descriptor
    assert Digest.of_bytes(blob.read_bytes()) == delta.digest
    assert not (out / PARTIAL_DIR).exists()
    (tmp_path / "s").mkdir()
    assert check(out, RegistryStore(tmp_path / "s")).descriptor is not None


def test_destination_with_other_files_is_refused(tmp_path, imgs):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holding other files"):
        make_bundle(str(imgs["layout"]), str(tmp_path / "busy"))
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]


def test_platform_selection_of_an_index(tmp_path, imgs, site):
    lin = make_image(tmp_path / "lin", [imgs["delta2"]], os="linux", seed=5)
    idx = make_index(tmp_path / "idx", [imgs["new"], lin])
    layout = write_oci_layout(tmp_path / "idx-layout", {"multi": idx})
    whole = make_bundle(str(layout), str(tmp_path / "whole"))
    d = whole.descriptor
    assert d.image.digest == idx.manifest_digest and len(d.manifests) == 2
    assert d.name == "multi"
    one = make_bundle(str(layout), str(tmp_path / "one"), platform="linux/amd64", tag="t")
    assert one.descriptor.image.digest == lin.manifest_digest
    assert [m.platform_text for m in one.descriptor.manifests] == ["linux/amd64"]
    with pytest.raises(UsageError, match="matches 0 of the manifests"):
        make_bundle(str(layout), str(tmp_path / "none"), platform="linux/arm64")
    store, _ = site
    assert check(tmp_path / "whole", store).descriptor.image.digest == idx.manifest_digest


@pytest.mark.parametrize("value", ["docker://reg:5000/a/b:1", "docker://reg.example/app",
                                   "docker://[::1]:5000/app@sha256:" + "a" * 64])
def test_docker_references(value):
    ref = parse_docker_reference(value)
    assert str(ref) == (value if value[-4:] != "/app" else value + ":latest")


@pytest.mark.parametrize("value", ["docker://app:1", "docker://reg/App:1", "docker://reg/app:bad tag",
                                   "docker://u:p@reg/app:1", "docker://reg/app@sha256:12"])
def test_bad_docker_references(value):
    with pytest.raises(UsageError):
        parse_docker_reference(value)


def test_platforms():
    assert parse_platform("windows/amd64:10.0.17763.5458") == {
        "os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5458"}
    assert parse_platform("linux/arm64/v8")["variant"] == "v8"
    with pytest.raises(UsageError):
        parse_platform("linux")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="x"), "'format'"),
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d["blobs"].append(d["blobs"][0]), "lists a digest twice"),
    (lambda d: d["blobs"][0].update(size=-1), "not a size"),
    (lambda d: d["blobs"][0].update(digest="sha256:" + "A" * 64), "not 'sha256:<64 hex>'"),
    (lambda d: d["image"].update(repository="../x"), "intended repository"),
    (lambda d: d["assumed_present"]["contents"].append({"name": "../../etc/passwd", "sha256": "x"}),
     "not a plain file name"),
    (lambda d: d["files"].pop("index.json"), "lacks"),
])
def test_hostile_descriptors(bundle, mutate, match):
    doc = json.loads((bundle / DESCRIPTOR).read_bytes())
    mutate(doc)
    with pytest.raises(BundleMismatch, match=match):
        parse_descriptor(json.dumps(doc).encode(), "d")


def test_cli_check_bundle_exit_codes(bundle, site, keys, capsys):
    store, _ = site
    args = ["check-bundle", str(bundle), "--storage", str(store.root)]
    assert regpatch_main(args + ["--trust-key", str(keys["ed"][1])]) == 0
    assert "signed by trust key" in capsys.readouterr().out
    assert regpatch_main(args + ["--trust-key", str(keys["other"][1])]) == 3
    assert "does not verify" in capsys.readouterr().err
    assert regpatch_main(args + ["--trust-key", str(keys["ed"][0])]) == 2  # a private key as trust key


# -- the engine: patch --trust-key ---------------------------------------------------------

def _request(bundle, store, **kw):
    from regpatch import engine
    from regpatch.registry.target import RegistryTarget

    return engine.PatchRequest(bundle=str(bundle), repository=Repository.parse("servercore"),
                               tag=Tag.parse("ltsc2019"), target=RegistryTarget.resolve(storage=str(store.root)),
                               **kw)


def test_engine_patches_a_trusted_bundle(bundle, site, keys, imgs):
    from regpatch import engine

    store, _ = site
    result = engine.patch(_request(bundle, store, trust_keys=(str(keys["ed"][1]),)))
    assert result.status == "complete" and result.tag_moved
    assert result.new == str(imgs["new"].manifest_digest)
    assert "signed by trust key SHA256:" in result.bundle_trust
    assert "bundle trust" in result.markdown()
    cur = store.layout.tag_current_link(Repository.parse("servercore"), Tag.parse("ltsc2019"))
    assert cur.read_bytes() == str(imgs["new"].manifest_digest).encode()
    # the base layer came from the storage, only the delta from the bundle
    assert {d for d, _ in result.blobs_copied} == {str(imgs["delta2"].digest), str(imgs["new"].config.digest)}


def test_engine_refusals_leave_the_storage_unchanged(tmp_path, bundle, site, keys, imgs):
    from regpatch import engine

    store, _ = site
    docker = store.root / "docker"
    before = tree_hash(docker)
    ed, other = str(keys["ed"][1]), str(keys["other"][1])
    cases = []
    # wrong key
    cases.append((bundle, dict(trust_keys=(other,)), SignatureError))
    # unsigned, with trust keys
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / SIGNATURE).unlink()
    cases.append((unsigned, dict(trust_keys=(ed,)), UnsignedBundle))
    # tampered descriptor
    tampered = tmp_path / "tampered-descriptor"
    shutil.copytree(bundle, tampered)
    (tampered / DESCRIPTOR).write_bytes((tampered / DESCRIPTOR).read_bytes().replace(b"servercore", b"servercorf"))
    cases.append((tampered, dict(trust_keys=(ed,)), SignatureError))
    # tampered blob, same size: refused by the staging hash, before docker/ is written
    blob_bad = tmp_path / "tampered-blob"
    shutil.copytree(bundle, blob_bad)
    delta = blob_bad / "blobs/sha256" / imgs["delta2"].digest.hex
    data = bytearray(delta.read_bytes())
    data[-100] ^= 0x10
    delta.write_bytes(bytes(data))
    cases.append((blob_bad, dict(trust_keys=(ed,)), DigestMismatch))
    for b, kw, exc in cases:
        for dry_run in (True, False):
            with pytest.raises(exc) as e:
                engine.patch(_request(b, store, dry_run=dry_run, **kw))
            assert e.value.exit_code == 3
            assert tree_hash(docker) == before, (b, exc)
    # a site without the base layer: the base-version guard
    (tmp_path / "bare").mkdir()
    bare = RegistryStore(tmp_path / "bare")
    (bare.root / "docker/registry/v2").mkdir(parents=True)
    with pytest.raises(BaseBlobsMissing, match="site-a.contents.json"):
        engine.patch(_request(bundle, bare, trust_keys=(ed,)))
    assert not list((bare.root / "docker").rglob("data"))


def test_trust_options_are_checked_before_anything(site, bundle, keys):
    from regpatch import engine

    store, _ = site
    with pytest.raises(UsageError, match="--allow-unsigned only relaxes --trust-key"):
        engine.patch(_request(bundle, store, allow_unsigned=True))
    with pytest.raises(UsageError, match="is a private key"):
        engine.patch(_request(bundle, store, trust_keys=(str(keys["ed"][0]),)))
    with pytest.raises(UsageError, match="does not exist"):
        engine.patch(_request(bundle, store, trust_keys=("/nonexistent.pub",)))


def test_cli_patch_trust_key_without_prefect(site, bundle, keys, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    store, _ = site
    monkeypatch.setenv("PREFECT_HOME", str(store.root / "no-prefect-here"))
    args = ["patch", str(bundle), "--storage", str(store.root), "--repository", "servercore", "--tag", "ltsc2019"]
    before = tree_hash(store.root / "docker")
    assert regpatch_main(args + ["--trust-key", str(keys["other"][1])]) == 3
    assert "does not verify with the trust key" in capsys.readouterr().err
    assert tree_hash(store.root / "docker") == before
    assert regpatch_main(args + ["--trust-key", str(keys["ed"][1])]) == 0
    assert "patched servercore:ltsc2019" in capsys.readouterr().out


def test_inventory_trust_fields(tmp_path):
    from regpatch.fleet.inventory import InventoryError, parse_inventory

    inv = parse_inventory({"registries": [{"name": "a", "storage": "/srv/a", "trust_keys": ["/etc/k.pub"]}]})
    assert inv.registries[0].trust_params().trust_keys == ["/etc/k.pub"]
    with pytest.raises(InventoryError, match="allow_unsigned only relaxes trust_keys"):
        parse_inventory({"registries": [{"name": "a", "storage": "/srv/a", "allow_unsigned": True}]})


def test_a_signed_bundle_taken_with_consume_resumes(bundle, site, keys, imgs, tmp_path):
    """--consume renames the delta out of a signed bundle; a verification that fails leaves
    it staged; the same command again accepts the bundle without it (the note at the bundle's
    root says it was taken, the storage holds it) and finishes."""
    from regpatch import engine
    from regpatch.registry.target import RegistryTarget

    store, _ = site
    (store.root / "docker/registry/v2").mkdir(parents=True, exist_ok=True)
    request = lambda: engine.PatchRequest(  # noqa: E731
        bundle=str(bundle), repository=Repository.parse("servercore"), tag=Tag.parse("ltsc2019"),
        target=RegistryTarget.resolve(storage=str(store.root)), trust_keys=(str(keys["ed"][1]),), consume=True)
    delta = bundle / "blobs/sha256" / imgs["delta2"].digest.hex
    assert delta.is_file()
    link = store.layout.layer_link(Repository.parse("servercore"), imgs["delta2"].digest)

    class BreakLink(engine.LogObserver):
        def run(self, step, fn):
            if step == "verify-pull":
                link.unlink()
            return fn()

    with pytest.raises(Exception, match="not linked"):
        engine.patch(request(), BreakLink())
    assert not delta.exists() and (bundle / "regpatch-consumed.jsonl").is_file()
    result = engine.patch(request())
    assert result.tag_moved and "signed by trust key" in result.bundle_trust


def test_an_older_signed_bundle_is_not_replayed_over_a_newer_image(tmp_path, bundle, site, keys, imgs, capsys):
    """The tag serves an image built after the signed bundle was made (an ordinary push,
    another state folder): the bundle would roll the tag back with every check green."""
    from regpatch import engine
    from regpatch.errors import OlderBundle

    store, _ = site
    newer = make_image(tmp_path / "newer", [imgs["base"], imgs["delta2"]], os="windows",
                       os_version="10.0.17763.9", seed=99, created="2999-01-01T00:00:00.1234567Z")
    put_image(store, "servercore", "ltsc2019", newer)
    before = tree_hash(store.root / "docker")
    trust = (str(keys["ed"][1]),)
    with pytest.raises(OlderBundle, match="was made .*, before the image servercore:ltsc2019 serves now"):
        engine.patch(_request(bundle, store, trust_keys=trust))
    assert tree_hash(store.root / "docker") == before
    args = ["check-bundle", str(bundle), "--storage", str(store.root), "--trust-key", trust[0]]
    assert regpatch_main(args) == 3
    assert "--allow-downgrade" in capsys.readouterr().err
    assert regpatch_main(args + ["--allow-downgrade"]) == 0
    result = engine.patch(_request(bundle, store, trust_keys=trust, allow_downgrade=True))
    assert result.tag_moved and any("patched anyway (--allow-downgrade)" in w for w in result.warnings)

