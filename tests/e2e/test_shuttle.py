"""The shuttle round trip with real components.

A source registry (the connected side) holds this month's servercore-like image;
a site registry holds last month's (same base layer, another delta). On the
site ``regpatch contents``; on the connected side ``regpatch bundle
docker://...`` with ``--have`` and a key made by ``openssl genpkey``; the
signature checked by ``openssl pkeyutl`` alone; on the site the bundle checked
and patched with ``patch --trust-key``; skopeo pulls the tag with the new digest. Each refusal (tampered
blob, tampered descriptor, wrong key, unsigned with trust keys, missing base
blob) leaves the site storage's ``docker/`` tree byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
from support.util import moto_server, skopeo, skopeo_inspect_digest, skopeo_pull, tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_layer, push_with_skopeo, write_oci_layout
from regpatch.demo.loopback import LocalRegistry
from regpatch.digest import Digest
from regpatch.shuttle.destinations import PARTIAL_DIR
from regpatch.shuttle.make import make_bundle
from regpatch.shuttle.sources import RegistryOptions
from regpatch.signing.descriptor import DESCRIPTOR, SIGNATURE, parse_descriptor

# the patch and the make-bundle flow run on the session's Prefect server; the core's log
# records, routed to the Prefect API once a flow ran, need it too
pytestmark = pytest.mark.usefixtures("prefect_api")

REPO, TAG = "servercore", "ltsc2019"
SHUTTLE_DOC = Path(__file__).resolve().parents[2] / "docs" / "shuttle.md"  # the shuttle side's page


def regpatch(capsys, *args) -> tuple[int, str, str]:
    code = regpatch_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def openssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)


def openssl_keypair(folder: Path, kind: str) -> tuple[Path, Path]:
    key, pub = folder / f"{kind}.key", folder / f"{kind}.pub"
    gen = (["genpkey", "-algorithm", "ed25519"] if kind == "ed25519" else
           ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    p = openssl(*gen, "-out", key)
    assert p.returncode == 0, p.stderr
    p = openssl("pkey", "-in", key, "-pubout", "-out", pub)
    assert p.returncode == 0, p.stderr
    return key, pub


def readme_verify_command(pub: Path, bundle: Path) -> list[str]:
    """The exact openssl command docs/shuttle.md shows, with the key and bundle paths filled in."""
    line = next(l.strip() for l in SHUTTLE_DOC.read_text().splitlines()
                if l.strip().startswith("openssl pkeyutl -verify"))
    argv = line.split()
    assert argv == ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "key.pub", "-rawin", "-in",
                    "regpatch-bundle.json", "-sigfile", "regpatch-bundle.json.sig"], line
    return [{"key.pub": str(pub), "regpatch-bundle.json": str(bundle / DESCRIPTOR),
             "regpatch-bundle.json.sig": str(bundle / SIGNATURE)}.get(a, a) for a in argv]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Source registry with this month's image (and last month's), a pristine site with last month's."""
    d = tmp_path_factory.mktemp("shuttle")
    base = make_layer(d / "l", "base", seed=21, size=3 << 20, compresslevel=1)
    d1 = make_layer(d / "l", "delta1", seed=22, size=1 << 20, compresslevel=1)
    d2 = make_layer(d / "l", "delta2", seed=23, size=1 << 20, compresslevel=1)
    old = make_image(d / "old", [base, d1], os="windows", os_version="10.0.17763.1", seed=22)
    new = make_image(d / "new", [base, d2], os="windows", os_version="10.0.17763.2", seed=23)
    old_layout = write_oci_layout(d / "old-layout", {TAG: old})
    new_layout = write_oci_layout(d / "new-layout", {TAG: new})
    regs = []
    try:
        source = LocalRegistry(d / "source").start()
        regs.append(source)
        push_with_skopeo(new_layout, TAG, source.host, REPO, TAG)
        push_with_skopeo(old_layout, TAG, source.host, REPO, "ltsc2019-prev")
        site = LocalRegistry(d / "site").start()
        regs.append(site)
        push_with_skopeo(old_layout, TAG, site.host, REPO, TAG)
        keys = d / "keys"
        keys.mkdir()
        yield dict(dir=d, source=source, site=site, old=old, new=new, base=base, delta2=d2,
                   old_layout=old_layout, new_layout=new_layout,
                   ed=openssl_keypair(keys, "ed25519"), p256=openssl_keypair(keys, "p256"))
    finally:
        for r in regs:
            r.stop()


@pytest.fixture(scope="module")
def site_contents(world):
    out = world["dir"] / "site-a.contents.json"
    code = regpatch_main(["contents", "--registry-config", str(world["site"].config_path), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def signed_bundle(world, site_contents):
    """The delta bundle from the source registry, signed with the openssl-made Ed25519 key."""
    out = world["dir"] / "bundle"
    code = regpatch_main(["bundle", f"docker://{world['source'].host}/{REPO}:{TAG}", "--out", str(out),
                          "--have", str(site_contents), "--sign-key", str(world["ed"][0]), "--insecure"])
    assert code == 0
    return out


def site_docker_hash(world) -> str:
    return tree_hash(world["site"].root / "docker")


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- the round trip -------------------------------------------------------------------

def test_round_trip(tmp_path, capsys, world, site_contents):
    new, base, d2 = world["new"], world["base"], world["delta2"]
    # a site of its own for this test (the module's site stays pristine for the refusals)
    site = LocalRegistry(tmp_path / "site").start()
    try:
        push_with_skopeo(world["old_layout"], TAG, site.host, REPO, TAG)
        before_contents = tree_hash(site.root / "docker")
        code, out, err = regpatch(capsys, "contents", "--registry-config", site.config_path,
                                  "--out", tmp_path / "site.json")
        assert code == 0, err
        assert tree_hash(site.root / "docker") == before_contents  # contents only reads
        contents = json.loads((tmp_path / "site.json").read_bytes())
        assert str(base.digest) in contents["blobs"]
        assert contents["repositories"][REPO]["tags"] == {TAG: str(world["old"].manifest_digest)}

        key, pub = world["ed"]
        bundle = tmp_path / "bundle"
        code, out, err = regpatch(capsys, "bundle", f"docker://{world['source'].host}/{REPO}:{TAG}",
                                  "--out", bundle, "--have", tmp_path / "site.json", "--sign-key", key,
                                  "--insecure")
        assert code == 0, err
        assert "signed with SHA256:" in out
        desc = parse_descriptor((bundle / DESCRIPTOR).read_bytes(), "d")
        assert {b.digest for b in desc.blobs} == {new.manifest_digest, new.config.digest, d2.digest}
        assert [b.digest for b in desc.assumed] == [base.digest]
        assert (desc.repository, desc.tag) == (REPO, TAG)
        carried = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        assert d2.size < carried < d2.size + (64 << 10)

        # the signature, checked by openssl alone, with the command docs/shuttle.md shows
        p = subprocess.run(readme_verify_command(pub, bundle), capture_output=True, text=True)
        assert p.returncode == 0 and "Signature Verified Successfully" in p.stdout, p.stdout + p.stderr

        # the site: check, then patch, then pull
        code, out, err = regpatch(capsys, "check-bundle", bundle, "--registry-config", site.config_path,
                                  "--trust-key", pub)
        assert code == 0, err
        assert "signed by trust key" in out
        code, out, err = regpatch(capsys, "patch", bundle, "--registry-config", site.config_path,
                                  "--repository", REPO, "--tag", TAG, "--trust-key", pub)
        assert code == 0, err
        assert f"patched {REPO}:{TAG}: {world['old'].manifest_digest} -> {new.manifest_digest}" in out
        assert skopeo_inspect_digest(site.host, REPO, TAG) == str(new.manifest_digest)
        skopeo_pull(site.host, REPO, TAG, tmp_path / "pulled")
        skopeo_pull(site.host, REPO, str(world["old"].manifest_digest), tmp_path / "pulled-old")
    finally:
        site.stop()


# -- refusals, the site storage unchanged ------------------------------------------------

def refused(capsys, world, *args, match: str):
    before = site_docker_hash(world)
    code, out, err = regpatch(capsys, *args)
    assert code == 3, (out, err)
    assert match in err, err
    assert site_docker_hash(world) == before
    return err


def check_args(world, bundle, *trust):
    return ["check-bundle", bundle, "--registry-config", world["site"].config_path,
            *[a for t in trust for a in ("--trust-key", t)]]


def patch_args(world, bundle, *trust):
    return ["patch", bundle, "--registry-config", world["site"].config_path, "--repository", REPO,
            "--tag", TAG, *[a for t in trust for a in ("--trust-key", t)]]


def test_tampered_descriptor(tmp_path, capsys, world, signed_bundle):
    b = copy_bundle(signed_bundle, tmp_path / "b")
    data = (b / DESCRIPTOR).read_bytes()
    (b / DESCRIPTOR).write_bytes(data.replace(b'"tag": "ltsc2019"', b'"tag": "ltsc2022"'))
    p = openssl("pkeyutl", "-verify", "-pubin", "-inkey", world["ed"][1], "-rawin", "-in", b / DESCRIPTOR,
                "-sigfile", b / SIGNATURE)
    assert p.returncode != 0  # openssl agrees
    refused(capsys, world, *check_args(world, b, world["ed"][1]), match="does not verify")
    refused(capsys, world, *patch_args(world, b, world["ed"][1]), match="does not verify")


def test_wrong_key(tmp_path, capsys, world, signed_bundle):
    _, other = openssl_keypair(tmp_path, "ed25519")
    refused(capsys, world, *check_args(world, signed_bundle, other), match="does not verify with the trust key")
    refused(capsys, world, *patch_args(world, signed_bundle, other), match="does not verify with the trust key")


def test_unsigned_with_trust_keys(tmp_path, capsys, world, signed_bundle):
    b = copy_bundle(signed_bundle, tmp_path / "b")
    (b / SIGNATURE).unlink()
    refused(capsys, world, *check_args(world, b, world["ed"][1]), match="is not signed")
    refused(capsys, world, *patch_args(world, b, world["ed"][1]), match="is not signed")
    code, out, err = regpatch(capsys, *check_args(world, b, world["ed"][1]), "--allow-unsigned")
    assert code == 0, err


def test_missing_base_blob(tmp_path, capsys, world, signed_bundle, site_contents):
    """A site that never got last month's image: refused before anything is written, naming
    the missing base layer and the contents file the bundle was made against."""
    other = make_image(tmp_path / "app", [make_layer(tmp_path / "l", "app", seed=99, size=4096)], seed=99)
    lone = LocalRegistry(tmp_path / "lone-site").start()
    try:
        push_with_skopeo(write_oci_layout(tmp_path / "app-layout", {"1": other}), "1", lone.host, "app", "1")
        before = tree_hash(lone.root / "docker")
        code, out, err = regpatch(capsys, "check-bundle", signed_bundle, "--registry-config", lone.config_path,
                                  "--trust-key", world["ed"][1])
        assert code == 3, err
        assert str(world["base"].digest) in err and "site-a.contents.json (sha256:" in err
        assert Digest.of_bytes(site_contents.read_bytes()).hex in err
        code, out, err = regpatch(capsys, "patch", signed_bundle, "--registry-config", lone.config_path,
                                  "--repository", REPO, "--tag", TAG, "--trust-key", world["ed"][1])
        assert code == 3 and str(world["base"].digest) in err, err
        assert "site-a.contents.json (sha256:" in err
        assert tree_hash(lone.root / "docker") == before
    finally:
        lone.stop()


def test_tampered_blob_is_refused_by_the_patch(tmp_path, capsys, world, signed_bundle):
    """Same name, same size, other bytes: the listing passes, the staging hash refuses it."""
    b = copy_bundle(signed_bundle, tmp_path / "b")
    blob = b / "blobs/sha256" / world["delta2"].digest.hex
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    code, out, err = regpatch(capsys, *check_args(world, b, world["ed"][1]))
    assert code == 0, err  # names, sizes and signature are fine: the bytes are checked once, when staged
    err = refused(capsys, world, *patch_args(world, b, world["ed"][1]), match="digest mismatch")
    assert world["delta2"].digest.hex in err
    assert skopeo_inspect_digest(world["site"].host, REPO, TAG) == str(world["old"].manifest_digest)


# -- keys made by either tool, checked by the other ----------------------------------------

@pytest.mark.parametrize("algorithm", ["ed25519", "p256"])
def test_openssl_verifies_regpatch_keys_and_regpatch_verifies_openssl_keys(tmp_path, capsys, world,
                                                                             algorithm):
    # a regpatch keygen key; openssl verifies its signature (docs/shuttle.md's command, and dgst for P-256)
    code, out, err = regpatch(capsys, "keygen", "--out", tmp_path / "rp", "--algorithm", algorithm)
    assert code == 0, err
    b1 = tmp_path / "b1"
    make_bundle(str(world["new_layout"]), str(b1), sign_key=str(tmp_path / "rp.key"))
    p = subprocess.run(readme_verify_command(tmp_path / "rp.pub", b1), capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    if algorithm == "p256":
        p = openssl("dgst", "-sha256", "-verify", tmp_path / "rp.pub", "-signature", b1 / SIGNATURE,
                    b1 / DESCRIPTOR)
        assert p.returncode == 0 and "Verified OK" in p.stdout, p.stderr
    # an openssl key; regpatch signs with it and checks with its .pub; openssl signs, regpatch checks
    key, pub = world["ed"] if algorithm == "ed25519" else world["p256"]
    b2 = tmp_path / "b2"
    make_bundle(str(world["new_layout"]), str(b2), sign_key=str(key))
    assert regpatch(capsys, "check-bundle", b2, "--storage", world["site"].root, "--trust-key", pub)[0] == 0
    sign = (["pkeyutl", "-sign", "-inkey", key, "-rawin"] if algorithm == "ed25519"
            else ["dgst", "-sha256", "-sign", key])
    p = subprocess.run(["openssl", *map(str, sign), "-out", str(b2 / SIGNATURE)] +
                       (["-in", str(b2 / DESCRIPTOR)] if algorithm == "ed25519" else [str(b2 / DESCRIPTOR)]),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    code, out, err = regpatch(capsys, "check-bundle", b2, "--storage", world["site"].root, "--trust-key", pub)
    assert code == 0, err


# -- sources, destinations, resuming --------------------------------------------------------

def test_bundle_is_an_oci_layout_skopeo_reads(tmp_path, world):
    full = tmp_path / "full"
    report = make_bundle(f"docker://{world['source'].host}/{REPO}:{TAG}", str(full),
                         registry=RegistryOptions(insecure=True))
    assert not report.descriptor.assumed
    raw = skopeo("inspect", "--raw", f"oci:{full}").stdout
    assert raw == world["new"].manifest_bytes
    skopeo("copy", f"oci:{full}", f"dir:{tmp_path / 'copied'}")
    assert (tmp_path / "copied" / world["delta2"].digest.hex).is_file()


def test_resume_from_a_registry_with_range(tmp_path, world, site_contents):
    out = tmp_path / "b"
    src = f"docker://{world['source'].host}/{REPO}:{TAG}"
    d2 = world["delta2"]
    (out / PARTIAL_DIR).mkdir(parents=True)
    (out / PARTIAL_DIR / f"sha256-{d2.digest.hex}").write_bytes(Path(d2.path).read_bytes()[:d2.size // 3])
    report = make_bundle(src, str(out), have=[str(site_contents)], registry=RegistryOptions(insecure=True))
    assert report.resumed_bytes == d2.size // 3
    blob = out / "blobs/sha256" / d2.digest.hex
    assert Digest.of_bytes(blob.read_bytes()) == d2.digest
    again = make_bundle(src, str(out), have=[str(site_contents)], registry=RegistryOptions(insecure=True))
    assert again.written == [] and len(again.reused) == 3


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


def test_s3_destination_check_and_patch(tmp_path, capsys, monkeypatch, world, site_contents, moto_url):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + secrets.token_hex(8).upper())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Secret" + secrets.token_hex(16))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = "shuttle-" + secrets.token_hex(4)
    s3.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/servercore/2026-11"
    args = ["bundle", f"docker://{world['source'].host}/{REPO}:{TAG}", "--out", url, "--have", site_contents,
            "--sign-key", world["ed"][0], "--insecure", "--s3-endpoint-url", moto_url, "--s3-part-size", "5"]
    code, out, err = regpatch(capsys, *args)
    assert code == 0, err
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    prefix = "servercore/2026-11/"
    assert {k[len(prefix):] for k in keys} == {"oci-layout", "index.json", DESCRIPTOR, SIGNATURE} | {
        f"blobs/sha256/{d.hex}" for d in (world["new"].manifest_digest, world["new"].config.digest,
                                          world["delta2"].digest)}
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}blobs/sha256/{world['delta2'].digest.hex}")
    assert head["Metadata"]["regpatch-sha256"] == str(world["delta2"].digest)
    code, out, err = regpatch(capsys, *args)  # a re-run finds every blob complete
    assert code == 0, err
    assert "0 blobs written, 3 already complete" in out

    code, out, err = regpatch(capsys, "check-bundle", url, "--registry-config", world["site"].config_path,
                              "--trust-key", world["ed"][1], "--s3-endpoint-url", moto_url)
    assert code == 0, err
    site = LocalRegistry(tmp_path / "site").start()
    try:
        push_with_skopeo(world["old_layout"], TAG, site.host, REPO, TAG)
        code, out, err = regpatch(capsys, "patch", url, "--registry-config", site.config_path,
                                  "--repository", REPO, "--tag", TAG, "--s3-endpoint-url", moto_url,
                                  "--trust-key", world["ed"][1])
        assert code == 0, err
        assert skopeo_inspect_digest(site.host, REPO, TAG) == str(world["new"].manifest_digest)
    finally:
        site.stop()


def test_make_bundle_flow(tmp_path, world, site_contents):
    from regpatch_flows.make_bundle import make_bundle as make_bundle_flow

    result = make_bundle_flow(source=f"docker://{world['source'].host}/{REPO}:{TAG}",
                              out=str(tmp_path / "b"), have=[str(site_contents)],
                              sign_key=str(world["ed"][0]), insecure=True)
    assert result["image"] == str(world["new"].manifest_digest)
    assert [d for d, _ in result["assumed"]] == [str(world["base"].digest)]
    assert result["signed_with"].startswith("SHA256:")
    assert (tmp_path / "b" / SIGNATURE).is_file()



def test_patch_flow_takes_trust_parameters(tmp_path, world, signed_bundle):
    """The patch-registry flow's ``trust`` parameter: a wrong key fails the run before any
    write; the right key lets a dry run through, with the trust in the result."""
    from regpatch.errors import SignatureError
    from regpatch.params import ChangeParams, RegistryParams, TrustParams
    from regpatch_flows.patch import patch_registry

    _, other = openssl_keypair(tmp_path, "ed25519")
    registry = RegistryParams(registry_config=str(world["site"].config_path))
    before = site_docker_hash(world)
    with pytest.raises(SignatureError):
        patch_registry(bundle=str(signed_bundle), repository=REPO, tag=TAG, registry=registry,
                       trust=TrustParams(trust_keys=[str(other)]), change=ChangeParams(requested_by="e2e"))
    assert site_docker_hash(world) == before
    result = patch_registry(bundle=str(signed_bundle), repository=REPO, tag=TAG, registry=registry,
                            trust=TrustParams(trust_keys=[str(world["ed"][1])]), dry_run=True,
                            change=ChangeParams(requested_by="e2e", reason="CHG-2"))
    assert result.dry_run and "signed by trust key" in result.bundle_trust
    assert site_docker_hash(world) == before
