"""regpatch.registry (client, credentials, config) against real registries.

Every registry here is a real ``docker-registry serve`` process on loopback:
plain, htpasswd (Basic), token auth (Bearer, with a token server started in
this module), TLS, and one that accepts foreign-layer URLs. Images are pushed
with skopeo; corruption is made by overwriting bytes in the real storage.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from support.util import skopeo_inspect_digest

from regpatch.demo.images import SampleImage, make_image, make_index, make_layer, push_with_skopeo, write_oci_layout
from regpatch.demo.loopback import LocalRegistry, free_port
from regpatch.digest import Digest
from regpatch.errors import AuthError, ConfigError, RegistryError, RegistryUnavailable, UsageError, VerificationError
from regpatch.manifest import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)
from regpatch.registry.client import FetchedManifest, RegistryClient
from regpatch.registry.config import registry_url_from_config, storage_root_from_config
from regpatch.registry.credentials import Credentials, load_credentials
from regpatch.registry.processes import start_detached, stop_pid, wait_for_registry_process
from regpatch.registry.verify_command import run_verify_command

USER = "verifier"
PASSWORD = "s3cret-Pa55word-xyz"
ISSUER = "regpatch-test-issuer"
SERVICE = "regpatch-test-registry"


# --------------------------------------------------------------------------- helpers

def fast_client(url: str, **kw) -> RegistryClient:
    kw.setdefault("retries", 2)
    kw.setdefault("retry_wait", 0.01)
    kw.setdefault("retry_max_wait", 0.05)
    kw.setdefault("timeout", 10.0)
    return RegistryClient(url, **kw)


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"


def self_signed(common_name: str, *, ip: Optional[str] = None):
    """An RSA key and a self-signed certificate (CA:true) for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if ip:
        import ipaddress
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return key, cert


def write_pem(workdir: Path, stem: str, key, cert) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = workdir / f"{stem}.key", workdir / f"{stem}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class CustomRegistry(LocalRegistry):
    """A LocalRegistry with extra config (auth: token, http.tls, validation)
    and, optionally, the storage root of another registry."""

    def __init__(self, workdir: Path, *, extra: dict, root: Optional[Path] = None,
                 https: bool = False):
        super().__init__(workdir)
        if root is not None:
            self.root = root
        self.extra = extra
        if https:
            self.url = f"https://{self.host}"

    def write_config(self) -> Path:
        path = super().write_config()
        doc = yaml.safe_load(path.read_text())
        for key, value in self.extra.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key].update(value)
            else:
                doc[key] = value
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def start(self, timeout: float = 10) -> "CustomRegistry":
        self.write_config()
        pid = start_detached([shutil.which(self.binary), "serve", str(self.config_path)],
                             log_path=self.log_path, pidfile=self.pidfile)
        try:
            wait_for_registry_process(pid, self.url, timeout=timeout, log_path=self.log_path,
                                      verify=False)
        except BaseException:
            stop_pid(pid, timeout=2)
            raise
        return self


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """A tiny token service (docker token auth spec) on loopback.

    Basic-authenticates USER/PASSWORD (anything else: 401), then issues an
    RS256 JWT whose header carries the signing certificate in ``x5c`` (the
    registry checks it against ``rootcertbundle``), granting ``pull`` on the
    requested repository scopes. Records every request.
    """

    def __init__(self, key, cert):
        self.key, self.cert = key, cert
        self.requests: list[dict] = []
        self.issued: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                qs = parse_qs(parts.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    u, _, p = base64.b64decode(header[6:]).decode().partition(":")
                    user = u if (u, p) == (USER, PASSWORD) else f"!{u}"
                server.requests.append({"path": parts.path, "service": qs.get("service", [None])[0],
                                        "scope": qs.get("scope", []), "user": user})
                if parts.path != "/token" or user != USER:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"details":"incorrect username or password"}')
                    return
                token = server.issue(user, qs.get("service", [""])[0], qs.get("scope", []))
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def issue(self, user: str, service: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a == "pull"]
            access.append({"type": typ, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (b64url(json.dumps(header).encode()) + "." +
                         b64url(json.dumps(claims).encode())).encode()
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        token = signing_input.decode() + "." + b64url(signature)
        self.issued.append(token)
        return token

    def __enter__(self) -> "TokenServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FlakyServer:
    """A loopback HTTP server answering a scripted list of statuses, then 200."""

    def __init__(self, script: list[tuple[int, dict]]):
        self.script = list(script)
        self.hits: list[tuple[float, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits.append((time.monotonic(), self.path))
                status, headers = server.script.pop(0) if server.script else (200, {})
                body = b"{}"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FlakyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def with_foreign_layer(img: SampleImage, index: int) -> SampleImage:
    """``img`` with layer ``index`` turned into a Windows-style foreign layer."""
    doc = json.loads(img.manifest_bytes)
    doc["layers"][index]["mediaType"] = DOCKER_FOREIGN_LAYER
    doc["layers"][index]["urls"] = ["https://mcr.example.invalid/layer.tar.gz"]
    raw = json.dumps(doc, indent=3).encode()
    return SampleImage(raw, Digest.of_bytes(raw), img.media_type, img.config, img.layers)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    w = tmp_path_factory.mktemp("samples")
    d1 = make_layer(w, "docker-base", seed=11, size=96 << 10)
    d2 = make_layer(w, "docker-delta", seed=12, size=16 << 10)
    docker_img = make_image(w, [d1, d2], fmt="docker", name="docker-img")
    o1 = make_layer(w, "oci-base", seed=21, size=48 << 10, oci=True)
    oci_img = make_image(w, [o1], fmt="oci", name="oci-img")
    shared = make_layer(w, "multi-shared", seed=30, size=32 << 10)
    a = make_image(w, [shared, make_layer(w, "multi-amd64", seed=31, size=8 << 10)],
                   name="multi-amd64", architecture="amd64")
    b = make_image(w, [shared, make_layer(w, "multi-arm64", seed=32, size=8 << 10)],
                   name="multi-arm64", architecture="arm64")
    docker_list = make_index(w, [a, b], fmt="docker", name="multi-list")
    oa = make_image(w, [make_layer(w, "ocim-shared", seed=35, size=8 << 10, oci=True)], fmt="oci",
                    name="ocim-amd64", architecture="amd64")
    ob = make_image(w, [make_layer(w, "ocim-shared", seed=35, size=8 << 10, oci=True)], fmt="oci",
                    name="ocim-arm64", architecture="arm64")
    oci_index = make_index(w, [oa, ob], fmt="oci", name="ocim-index")
    win = make_image(w, [make_layer(w, "win-base", seed=51, size=16 << 10),
                         make_layer(w, "win-delta", seed=52, size=4 << 10)],
                     name="win", os="windows", os_version="10.0.17763.1")
    foreign = with_foreign_layer(win, 0)
    layout = write_oci_layout(w / "layout", {"docker": docker_img, "oci": oci_img,
                                             "multi": docker_list, "ocimulti": oci_index,
                                             "foreign": foreign})
    return {"layout": layout, "docker": docker_img, "oci": oci_img, "multi": docker_list,
            "ocimulti": oci_index, "foreign": foreign, "dir": w}


@pytest.fixture(scope="module")
def plain(tmp_path_factory, samples):
    """A plain-HTTP registry holding demo/{docker,oci,multi,ocimulti}:v1."""
    reg = LocalRegistry(tmp_path_factory.mktemp("plain")).start()
    try:
        for ref in ("docker", "oci", "multi", "ocimulti"):
            push_with_skopeo(samples["layout"], ref, reg.host, f"demo/{ref}", "v1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory, samples):
    """A registry with htpasswd auth holding demo/docker:v1."""
    reg = LocalRegistry(tmp_path_factory.mktemp("basic"), htpasswd=(USER, PASSWORD)).start()
    try:
        push_with_skopeo(samples["layout"], "docker", reg.host, "demo/docker", "v1",
                         creds=f"{USER}:{PASSWORD}")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory, plain):
    """A token server, and a registry with ``auth: token`` that serves the
    storage of ``plain`` (pushed there without auth)."""
    w = tmp_path_factory.mktemp("token")
    key, cert = self_signed("regpatch test token signer")
    _, cert_path = write_pem(w / "pki", "token", key, cert)
    with TokenServer(key, cert) as ts:
        reg = CustomRegistry(w / "registry", root=plain.root, extra={"auth": {"token": {
            "realm": ts.url, "service": SERVICE, "issuer": ISSUER,
            "rootcertbundle": str(cert_path)}}}).start()
        try:
            yield ts, reg
        finally:
            reg.stop()


# --------------------------------------------------------------------------- verify_image

@pytest.mark.parametrize("ref,media_type,manifests,blobs", [
    ("docker", DOCKER_MANIFEST, 1, 3),
    ("oci", OCI_MANIFEST, 1, 2),
    # list: 2 children, blobs: shared layer once + 2 own layers + 2 configs
    ("multi", DOCKER_LIST, 3, 5),
    # OCI index whose children share their only layer
    ("ocimulti", OCI_INDEX, 3, 3),
])
def test_verify_image_passes_on_pushed_image(plain, samples, ref, media_type, manifests, blobs):
    sample = samples[ref]
    # skopeo, an independent client, agrees on the digest the tag points at
    assert skopeo_inspect_digest(plain.host, f"demo/{ref}", "v1") == str(sample.manifest_digest)
    seen = []
    with fast_client(plain.url) as client:
        report = client.verify_image(f"demo/{ref}", "v1", sample.manifest_digest,
                                     progress=seen.append)
        fetched = client.get_manifest(f"demo/{ref}", "v1")
    assert fetched.media_type == media_type
    assert fetched.raw == sample.manifest_bytes
    assert report.digest == sample.manifest_digest
    assert report.manifests[0] == sample.manifest_digest
    assert len(report.manifests) == manifests
    assert report.blobs_verified == blobs
    assert report.foreign_skipped == ()
    images = sample.children if hasattr(sample, "children") else (sample,)
    expected_bytes = sum({b.digest: b.size for img in images for b in img.blobs}.values())
    assert report.bytes_verified == expected_bytes == sum(seen)
    assert report.seconds >= 0
    assert f"demo/{ref}:v1" in report.summary()


def test_get_manifest_by_tag_and_digest(plain, samples):
    img = samples["docker"]
    with fast_client(plain.url) as client:
        by_tag = client.get_manifest("demo/docker", "v1")
        by_digest = client.get_manifest("demo/docker", img.manifest_digest)
        by_str = client.get_manifest("demo/docker", str(img.manifest_digest))
    assert isinstance(by_tag, FetchedManifest)
    assert by_tag == by_digest == by_str
    assert by_tag.digest == img.manifest_digest
    assert "raw" not in repr(by_tag)
    m = parse_manifest(by_tag.raw, what="test")
    assert [d.digest for d in m.layers] == [l.digest for l in img.layers]


def test_missing_manifest_and_blob_are_verification_errors(plain, samples):
    with fast_client(plain.url) as client:
        with pytest.raises(VerificationError, match=r"manifest demo/docker:nope not found"):
            client.get_manifest("demo/docker", "nope")
        with pytest.raises(VerificationError, match=r"not found"):
            client.get_manifest("demo/never-pushed", "v1")
        ghost = Digest.of_bytes(b"never pushed")
        with pytest.raises(VerificationError, match=f"demo/docker@{ghost} not found"):
            client.get_manifest("demo/docker", ghost)
        # a blob that exists, but is not linked into this repository, is not served
        layer = samples["oci"].layers[0]
        with pytest.raises(VerificationError, match=rf"blob {layer.digest} not found in demo/docker"):
            client.verify_blob("demo/docker", parse_manifest(samples["oci"].manifest_bytes,
                                                             what="x").layers[0])


def test_verify_blob_returns_size(plain, samples):
    img = samples["docker"]
    m = parse_manifest(img.manifest_bytes, what="sample")
    with fast_client(plain.url) as client:
        assert client.verify_blob("demo/docker", m.config) == img.config.size
        assert client.verify_blob("demo/docker", m.layers[0]) == img.layers[0].size


def test_wrong_expected_digest(plain, samples):
    other = samples["oci"].manifest_digest
    with fast_client(plain.url) as client:
        with pytest.raises(VerificationError) as e:
            client.verify_image("demo/docker", "v1", other)
    assert str(e.value) == (f"tag demo/docker:v1 points at {samples['docker'].manifest_digest}, "
                            f"expected {other}")


def test_corrupted_blob_is_detected(registry, tmp_path):
    layer = make_layer(tmp_path / "img", "victim", seed=4242, size=64 << 10)
    img = make_image(tmp_path / "img", [layer], name="victim")
    layout = write_oci_layout(tmp_path / "layout", {"victim": img})
    push_with_skopeo(layout, "victim", registry.host, "demo/victim", "v1")
    with fast_client(registry.url) as client:
        client.verify_image("demo/victim", "v1", img.manifest_digest)  # intact first

        data = blob_path(registry.root, layer.digest)
        assert data.stat().st_size == layer.size
        with open(data, "r+b") as f:  # same size, different bytes in the middle
            f.seek(layer.size // 2)
            f.write(b"\x00regpatch-corruption\x00")

        # the registry serves it anyway, with its claimed digest
        with pytest.raises(VerificationError) as e:
            client.verify_image("demo/victim", "v1", img.manifest_digest)
    msg = str(e.value)
    assert f"blob {layer.digest} in demo/victim is corrupt" in msg
    assert f"expected digest {layer.digest}" in msg
    actual = Digest.of_bytes(data.read_bytes())
    assert f"hashing to {actual}" in msg
    assert f"size expected {layer.size}, got {layer.size} bytes" in msg


@pytest.mark.parametrize("cache", [True, False])
def test_truncated_blob_is_detected(tmp_path, cache):
    """With the in-memory descriptor cache the registry announces the old size
    and cuts the body short; without it, it announces the short size."""
    layer = make_layer(tmp_path / "img", "short", seed=4343, size=64 << 10)
    img = make_image(tmp_path / "img", [layer], name="short")
    layout = write_oci_layout(tmp_path / "layout", {"short": img})
    reg = LocalRegistry(tmp_path / "reg", blobdescriptor_cache=cache).start()
    try:
        push_with_skopeo(layout, "short", reg.host, "demo/short", "v1")
        with fast_client(reg.url) as client:
            client.verify_image("demo/short", "v1", img.manifest_digest)
            with open(blob_path(reg.root, layer.digest), "r+b") as f:
                f.truncate(layer.size - 100)
            with pytest.raises(VerificationError) as e:
                client.verify_image("demo/short", "v1", img.manifest_digest)
        msg = str(e.value)
        assert f"blob {layer.digest} in demo/short" in msg
        if cache:
            assert (f"is truncated: the registry announced {layer.size} bytes and closed the "
                    f"connection after {layer.size - 100}") in msg
        else:
            assert f"the registry serves {layer.size - 100} bytes, the manifest says {layer.size}" in msg
    finally:
        reg.stop()


def test_big_blob_memory_stays_flat(registry, tmp_path):
    import tracemalloc
    size = 40 << 20
    layer = make_layer(tmp_path / "img", "big", seed=777, size=size, compresslevel=1)
    img = make_image(tmp_path / "img", [layer], name="big")
    layout = write_oci_layout(tmp_path / "layout", {"big": img})
    push_with_skopeo(layout, "big", registry.host, "demo/big", "v1")
    with fast_client(registry.url) as client:
        tracemalloc.start()
        try:
            report = client.verify_image("demo/big", "v1", img.manifest_digest)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.bytes_verified >= size
    assert peak < 16 << 20, f"peak Python allocation {peak} bytes while verifying {size}"


def test_foreign_layer_missing_is_skipped(tmp_path, samples, caplog):
    # distribution 2.8.2 refuses a pushed manifest with foreign layers ("manifest
    # blob unknown") unless validation.manifests.urls.allow accepts their URLs.
    reg = CustomRegistry(tmp_path / "reg", extra={
        "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}}}).start()
    try:
        img = samples["foreign"]
        push_with_skopeo(samples["layout"], "foreign", reg.host, "demo/win", "v1")
        foreign = img.layers[0].digest
        assert not blob_path(reg.root, foreign).exists()  # skopeo does not upload it
        with caplog.at_level(logging.WARNING, logger="regpatch.registry"):
            with fast_client(reg.url) as client:
                report = client.verify_image("demo/win", "v1", img.manifest_digest)
        assert report.foreign_skipped == (foreign,)
        assert report.blobs_verified == 2  # config + the distributable layer
        assert any(str(foreign) in r.getMessage() for r in caplog.records)
        assert "foreign" in report.summary()
    finally:
        reg.stop()


# --------------------------------------------------------------------------- credentials

def test_credentials_repr_hides_password():
    c = Credentials("alice", PASSWORD)
    assert PASSWORD not in repr(c) and PASSWORD not in str(c) and PASSWORD not in f"{c}"
    assert "alice" in repr(c)


def test_load_credentials_env_first(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"reg:5000": {"username": "file", "password": "pw"}}}))
    env = {"REGPATCH_REGISTRY_USERNAME": "envuser", "REGPATCH_REGISTRY_PASSWORD": "envpw"}
    assert load_credentials("reg:5000", auth_file=cfg, env=env) == Credentials("envuser", "envpw")
    assert load_credentials("reg:5000", auth_file=cfg, env={}) == Credentials("file", "pw")
    with pytest.raises(UsageError, match="REGPATCH_REGISTRY_PASSWORD is not set"):
        load_credentials("reg:5000", env={"REGPATCH_REGISTRY_USERNAME": "u"})


@pytest.mark.parametrize("key", ["reg.example:5000", "https://reg.example:5000",
                                 "http://reg.example:5000", "https://REG.example:5000/v2/"])
def test_load_credentials_auth_key_forms(tmp_path, key):
    cfg = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:pa:ss").decode()
    cfg.write_text(json.dumps({"auths": {"other:1": {"auth": base64.b64encode(b"x:y").decode()},
                                         key: {"auth": auth}}}))
    for host in ("reg.example:5000", "https://reg.example:5000", "http://reg.example:5000/"):
        assert load_credentials(host, auth_file=cfg, env={}) == Credentials("bob", "pa:ss")
    assert load_credentials("reg.example:5001", auth_file=cfg, env={}) is None


def test_load_credentials_default_locations(tmp_path):
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / "config.json").write_text(
        json.dumps({"auths": {"r:1": {"username": "u", "password": "p"}}}))
    assert load_credentials("r:1", env={"DOCKER_CONFIG": str(tmp_path / "dc")}) == Credentials("u", "p")
    assert load_credentials("r:1", env={"HOME": str(tmp_path / "nohome")}) is None
    assert load_credentials("r:1", env={}) is None


def test_load_credentials_missing_helper_is_an_auth_error(tmp_path):
    """Helpers are run (see test_hardening.py); one that is not installed is a clear AuthError."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"r:1": {}}, "credHelpers": {"r:1": "regpatch-absent"}}))
    with pytest.raises(AuthError, match="docker-credential-regpatch-absent .* not on PATH"):
        load_credentials("r:1", auth_file=cfg, env={"PATH": str(tmp_path)})
    cfg.write_text(json.dumps({"auths": {"r:1": {}}, "credsStore": "regpatch-absent"}))
    with pytest.raises(AuthError, match="credsStore"):
        load_credentials("r:1", auth_file=cfg, env={"PATH": str(tmp_path)})
    # inline credentials still win over a global credsStore
    cfg.write_text(json.dumps({"auths": {"r:1": {"username": "u", "password": "p"}},
                               "credsStore": "regpatch-absent"}))
    assert load_credentials("r:1", auth_file=cfg, env={}) == Credentials("u", "p")


def test_load_credentials_bad_files(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"auths": {"r:1": {"auth": "' + PASSWORD)  # truncated JSON holding a secret
    with pytest.raises(UsageError) as e:
        load_credentials("r:1", auth_file=cfg, env={})
    assert PASSWORD not in str(e.value) and "not valid JSON" in str(e.value)
    cfg.write_text(json.dumps({"auths": {"r:1": {"auth": base64.b64encode(b"nocolon").decode()}}}))
    with pytest.raises(UsageError, match="not base64 of 'user:password'"):
        load_credentials("r:1", auth_file=cfg, env={})
    with pytest.raises(UsageError, match="does not exist"):
        load_credentials("r:1", auth_file=tmp_path / "missing.json", env={})


def test_url_with_credentials_is_refused():
    with pytest.raises(UsageError) as e:
        RegistryClient(f"https://{USER}:{PASSWORD}@127.0.0.1:5000")
    assert PASSWORD not in str(e.value)
    assert "never put them in a URL" in str(e.value)
    with pytest.raises(UsageError):
        RegistryClient("ftp://127.0.0.1:5000")


def test_scheme_defaults():
    assert RegistryClient("127.0.0.1:5000").url == "https://127.0.0.1:5000"
    assert RegistryClient("127.0.0.1:5000", insecure=True).url == "http://127.0.0.1:5000"
    assert RegistryClient("http://127.0.0.1:5000/").url == "http://127.0.0.1:5000"
    c = RegistryClient("http://127.0.0.1:5000", credentials=Credentials(USER, PASSWORD))
    assert PASSWORD not in repr(c) and USER in repr(c)


# --------------------------------------------------------------------------- Basic auth

def test_basic_auth_env_credentials(basic_registry, samples, caplog):
    env = {"REGPATCH_REGISTRY_USERNAME": USER, "REGPATCH_REGISTRY_PASSWORD": PASSWORD}
    creds = load_credentials(basic_registry.host, env=env)
    with caplog.at_level(logging.DEBUG):
        with fast_client(basic_registry.url, credentials=creds) as client:
            client.check()
            report = client.verify_image("demo/docker", "v1", samples["docker"].manifest_digest)
    assert report.blobs_verified == 3
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert PASSWORD not in caplog.text and basic not in caplog.text


@pytest.mark.parametrize("form", ["auth", "userpass"])
@pytest.mark.parametrize("key_scheme", ["", "http://", "https://"])
def test_basic_auth_config_json(basic_registry, samples, tmp_path, form, key_scheme):
    entry = ({"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()} if form == "auth"
             else {"username": USER, "password": PASSWORD})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {key_scheme + basic_registry.host: entry}}))
    creds = load_credentials(basic_registry.host, auth_file=cfg, env={})
    with fast_client(basic_registry.url, credentials=creds) as client:
        client.verify_image("demo/docker", "v1", samples["docker"].manifest_digest)


def test_basic_auth_wrong_password(basic_registry, samples, caplog):
    wrong = "definitely-Wrong-pw-123"
    with caplog.at_level(logging.DEBUG):
        with fast_client(basic_registry.url, credentials=Credentials(USER, wrong)) as client:
            with pytest.raises(AuthError) as e:
                client.verify_image("demo/docker", "v1", samples["docker"].manifest_digest)
            with pytest.raises(AuthError):
                client.check()
    msg = str(e.value)
    assert f"registry at {basic_registry.url} refused the credentials for user '{USER}'" in msg
    assert wrong not in msg and wrong not in repr(e.value) and wrong not in caplog.text
    assert e.value.__cause__ is None or wrong not in str(e.value.__cause__)


def test_basic_auth_no_credentials(basic_registry, samples):
    with fast_client(basic_registry.url) as client:
        assert client.ping()  # 401 means up
        with pytest.raises(AuthError, match="REGPATCH_REGISTRY_USERNAME"):
            client.check()
        with pytest.raises(AuthError, match="no credentials were given"):
            client.get_manifest("demo/docker", "v1")


# --------------------------------------------------------------------------- Bearer token auth

def test_token_flow(token_setup, samples, caplog):
    ts, reg = token_setup
    ts.requests.clear()
    img = samples["multi"]
    creds = Credentials(USER, PASSWORD)
    with caplog.at_level(logging.DEBUG):
        with fast_client(reg.url, credentials=creds) as client:
            client.check()
            report = client.verify_image("demo/multi", "v1", img.manifest_digest)
            client.verify_image("demo/multi", "v1", img.manifest_digest)  # cached token
            client.get_manifest("demo/docker", "v1")  # another scope: another token
            assert all(t not in repr(client) for t in ts.issued)
    assert report.blobs_verified == 5
    scopes = [r["scope"] for r in ts.requests]
    assert scopes == [[], ["repository:demo/multi:pull"], ["repository:demo/docker:pull"]]
    assert all(r["service"] == SERVICE and r["user"] == USER for r in ts.requests)
    for secret in ts.issued + [PASSWORD]:
        assert secret not in caplog.text


def test_token_flow_is_enforced_by_registry(token_setup):
    ts, reg = token_setup
    # a token signed by a key the registry does not trust is refused
    key, cert = self_signed("intruder")
    rogue = TokenServer(key, cert).issue(USER, SERVICE, ["repository:demo/docker:pull"])
    import httpx
    r = httpx.get(f"{reg.url}/v2/demo/docker/manifests/v1",
                  headers={"Authorization": f"Bearer {rogue}"})
    assert r.status_code == 401
    good = ts.issue(USER, SERVICE, ["repository:demo/docker:pull"])
    r = httpx.get(f"{reg.url}/v2/demo/docker/manifests/v1",
                  headers={"Authorization": f"Bearer {good}", "Accept": DOCKER_MANIFEST})
    assert r.status_code == 200


def test_token_flow_wrong_password(token_setup, samples):
    ts, reg = token_setup
    wrong = "Not-The-Password-987"
    with fast_client(reg.url, credentials=Credentials(USER, wrong)) as client:
        with pytest.raises(AuthError) as e:
            client.verify_image("demo/docker", "v1", samples["docker"].manifest_digest)
    msg = str(e.value)
    assert f"refused the credentials for user '{USER}'" in msg and "token server" in msg
    assert wrong not in msg
    assert ts.requests[-1]["user"] == f"!{USER}"


def test_token_flow_no_credentials(token_setup, samples):
    ts, reg = token_setup
    with fast_client(reg.url) as client:
        assert client.ping()
        with pytest.raises(AuthError, match="no credentials were given.*REGPATCH_REGISTRY_PASSWORD"):
            client.verify_image("demo/docker", "v1", samples["docker"].manifest_digest)
    assert ts.requests[-1]["user"] is None


# --------------------------------------------------------------------------- TLS

def test_tls_with_ca_file(tmp_path, plain, samples):
    key, cert = self_signed("127.0.0.1", ip="127.0.0.1")
    key_path, cert_path = write_pem(tmp_path / "pki", "server", key, cert)
    reg = CustomRegistry(tmp_path / "reg", root=plain.root, https=True, extra={
        "http": {"tls": {"certificate": str(cert_path), "key": str(key_path)}}}).start()
    try:
        assert registry_url_from_config(reg.config_path) == reg.url
        digest = samples["docker"].manifest_digest
        with fast_client(reg.url, ca_file=cert_path) as client:
            client.check()
            client.verify_image("demo/docker", "v1", digest)
        with fast_client(reg.url, insecure=True) as client:
            client.verify_image("demo/docker", "v1", digest)
        t0 = time.monotonic()
        with RegistryClient(reg.url, retries=4, retry_wait=1.0) as client:
            with pytest.raises(RegistryError, match="TLS connection .* failed.*--registry-ca, or --insecure") as e:
                client.check()
        assert not isinstance(e.value, RegistryUnavailable)
        assert time.monotonic() - t0 < 1.0  # a certificate error is not retried
    finally:
        reg.stop()


def test_bundle_insecure_keeps_tls_and_skips_the_certificate_check(tmp_path, plain, samples, capsys):
    """``regpatch bundle docker://... --insecure`` against a TLS registry reads it over TLS without
    checking its certificate, as skopeo's --src-tls-verify=false does (before: it switched to plain
    HTTP and failed with 'HTTP 400'); against a plain-HTTP registry it still falls back to HTTP.
    Without --insecure the error names the options that exist (before: --ca-file, insecure=True)."""
    from regpatch.cli import main as regpatch_main

    key, cert = self_signed("127.0.0.1", ip="127.0.0.1")
    key_path, cert_path = write_pem(tmp_path / "pki", "server", key, cert)
    reg = CustomRegistry(tmp_path / "reg", root=plain.root, https=True, extra={
        "http": {"tls": {"certificate": str(cert_path), "key": str(key_path)}}}).start()
    try:
        digest = str(samples["docker"].manifest_digest)
        code = regpatch_main(["bundle", f"docker://{reg.host}/demo/docker:v1", "--out", str(tmp_path / "b1"),
                              "--insecure"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert digest in (tmp_path / "b1" / "index.json").read_text()
        code = regpatch_main(["bundle", f"docker://{reg.host}/demo/docker:v1", "--out", str(tmp_path / "b2")])
        err = capsys.readouterr().err
        assert code == 5 and "CERTIFICATE_VERIFY_FAILED" in err
        assert "give the registry's CA with --registry-ca, or --insecure for a test registry" in err
        assert "ca_file" not in err and "insecure=True" not in err
        code = regpatch_main(["bundle", f"docker://{reg.host}/demo/docker:v1", "--out", str(tmp_path / "b3"),
                              "--registry-ca", str(cert_path)])
        assert code == 0, capsys.readouterr().err
    finally:
        reg.stop()
    code = regpatch_main(["bundle", f"docker://{plain.host}/demo/docker:v1", "--out", str(tmp_path / "b4"),
                          "--insecure"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert digest in (tmp_path / "b4" / "index.json").read_text()


# --------------------------------------------------------------------------- retries

def test_nothing_listening_gives_registry_unavailable(caplog):
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="regpatch.registry"):
        with fast_client(url, retries=3) as client:
            assert client.ping() is False
            with pytest.raises(RegistryUnavailable) as e:
                client.check()
    assert time.monotonic() - t0 < 5
    assert f"registry at {url} does not answer GET /v2/" in str(e.value)
    assert "after 4 attempt(s)" in str(e.value)
    retries = [r for r in caplog.records if r.name == "regpatch.registry"]
    assert len(retries) == 3
    assert all(r.levelno == logging.WARNING and "ConnectError" in r.getMessage() for r in retries)


def test_stopped_registry_is_unavailable(registry):
    with fast_client(registry.url) as client:
        client.check()
        registry.stop()
        with pytest.raises(RegistryUnavailable):
            client.check()


def test_5xx_and_429_are_retried_honouring_retry_after(caplog):
    with FlakyServer([(503, {}), (429, {"Retry-After": "0.3"}), (500, {})]) as srv:
        with caplog.at_level(logging.WARNING, logger="regpatch.registry"):
            with fast_client(srv.url, retries=4) as client:
                client.check()
    assert len(srv.hits) == 4
    assert srv.hits[2][0] - srv.hits[1][0] >= 0.3  # waited as told
    reasons = [r.getMessage() for r in caplog.records]
    assert ["HTTP 503" in reasons[0], "HTTP 429" in reasons[1], "HTTP 500" in reasons[2]] == [True] * 3


def test_retries_are_bounded_and_4xx_not_retried():
    with FlakyServer([(503, {})] * 10) as srv:
        with fast_client(srv.url, retries=2) as client:
            with pytest.raises(RegistryUnavailable, match="HTTP 503 to GET /v2/ 3 time"):
                client.check()
    assert len(srv.hits) == 3
    with FlakyServer([(400, {})] * 10) as srv:
        with fast_client(srv.url, retries=4) as client:
            with pytest.raises(RegistryError, match="HTTP 400"):
                client.check()
    assert len(srv.hits) == 1


# --------------------------------------------------------------------------- verify command

def test_run_verify_command(plain, samples, tmp_path):
    run_verify_command("skopeo --insecure-policy inspect --tls-verify=false docker://{ref}",
                       f"{plain.host}/demo/docker:v1")
    with pytest.raises(VerificationError) as e:
        run_verify_command("skopeo --insecure-policy inspect --tls-verify=false docker://{ref}",
                           f"{plain.host}/demo/docker:missing")
    assert "exited with code 1" in str(e.value) and "manifest unknown" in str(e.value)
    # {ref} is shell-quoted: it cannot inject commands
    marker = tmp_path / "pwned"
    with pytest.raises(VerificationError, match="exited with code 3: last words"):
        run_verify_command("test -n {ref} && echo noise >&2 && echo 'last words' >&2 && exit 3",
                           f"x; touch {marker}")
    assert not marker.exists()
    with pytest.raises(VerificationError, match="did not finish within 0.5 s"):
        run_verify_command("sleep 5; echo {ref}", "x", timeout=0.5)
    with pytest.raises(UsageError, match=r"\{ref\}"):
        run_verify_command("true", "x")


# --------------------------------------------------------------------------- config.yml

def write_yml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("addr,url", [
    (":5000", "http://127.0.0.1:5000"),
    ("0.0.0.0:5001", "http://127.0.0.1:5001"),
    ("[::]:5002", "http://127.0.0.1:5002"),
    ("localhost:5003", "http://localhost:5003"),
    ("10.1.2.3:443", "http://10.1.2.3:443"),
])
def test_registry_url_from_config(tmp_path, addr, url):
    cfg = write_yml(tmp_path / "config.yml", f"""version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: "{addr}"
""")
    assert registry_url_from_config(cfg) == url


def test_registry_url_tls_and_prefix(tmp_path):
    cfg = write_yml(tmp_path / "config.yml", """version: 0.1
http:
  addr: 0.0.0.0:5443
  prefix: /registry/
  tls:
    certificate: /etc/ssl/registry.crt
    key: /etc/ssl/registry.key
""")
    assert registry_url_from_config(cfg) == "https://127.0.0.1:5443/registry"


def test_storage_root_from_config(tmp_path):
    cfg = write_yml(tmp_path / "config.yml", """version: 0.1
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /srv/registry/data
  delete:
    enabled: true
http:
  addr: :5000
""")
    assert storage_root_from_config(cfg) == Path("/srv/registry/data")


def test_config_of_a_real_local_registry(registry):
    assert registry_url_from_config(registry.config_path) == registry.url
    assert storage_root_from_config(registry.config_path) == registry.root.resolve()
    with fast_client(registry_url_from_config(registry.config_path)) as client:
        client.check()


def test_debian_default_config():
    cfg = Path("/etc/docker/registry/config.yml")
    if not cfg.is_file():
        pytest.skip("docker-registry's default config is not installed")
    assert registry_url_from_config(cfg) == "http://127.0.0.1:5000"
    assert storage_root_from_config(cfg) == Path("/var/lib/docker-registry")


@pytest.mark.parametrize("text,func,needle", [
    ("version: 0.1\nhttp:\n  addr: :5000\n", storage_root_from_config, "key storage is missing"),
    ("storage:\n  s3:\n    bucket: b\n", storage_root_from_config,
     "key storage.filesystem is missing (it uses s3)"),
    ("storage:\n  filesystem: {}\n", storage_root_from_config,
     "key storage.filesystem.rootdirectory is missing"),
    ("storage:\n  filesystem:\n    rootdirectory: data\n", storage_root_from_config, "relative path"),
    ("storage:\n  filesystem:\n    rootdirectory: [1]\n", storage_root_from_config,
     "storage.filesystem.rootdirectory must be a non-empty path string"),
    ("version: 0.1\n", registry_url_from_config, "key http is missing"),
    ("http:\n  secret: x\n", registry_url_from_config, "key http.addr is missing"),
    ("http:\n  addr: 5000\n", registry_url_from_config, "key http.addr must be a string"),
    ("http:\n  addr: 'nohostport'\n", registry_url_from_config, "key http.addr must be 'host:port'"),
    ("http:\n  net: unix\n  addr: /run/reg.sock\n", registry_url_from_config, "http.net is 'unix'"),
    ("http: [1, 2\n", registry_url_from_config, "is not valid YAML at line"),
    ("- a list\n", registry_url_from_config, "must be a YAML mapping"),
])
def test_config_errors_name_file_and_key(tmp_path, text, func, needle):
    cfg = write_yml(tmp_path / "config.yml", text)
    with pytest.raises(ConfigError) as e:
        func(cfg)
    assert str(cfg) in str(e.value)
    assert needle in str(e.value)


def test_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        registry_url_from_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="does not exist"):
        storage_root_from_config(tmp_path / "nope.yml")
