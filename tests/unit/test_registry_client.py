"""The registry API client where no registry is needed: where credentials come from,
which URLs and CA files are accepted, how challenges and error bodies are read, what
is retried and for how long, what is scrubbed from messages, the operator's verify
command, and the answers of a port where nothing listens (a real network fact).
The pulls themselves are proved against a real docker-registry in tests/e2e.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import ssl
import time

import httpx
import pytest

from regpatch import platform
from regpatch.demo.loopback import free_port
from regpatch.digest import Digest
from regpatch.errors import AuthError, RegistryError, RegistryUnavailable, UsageError, VerificationError
from regpatch.manifest import DOCKER_LAYER, Descriptor
from regpatch.reference import Repository, Tag
from regpatch.registry.client import RegistryClient, VerifyReport, _BodyReader, _error_codes, _RetryableStatus
from regpatch.registry.credentials import Credentials, load_credentials
from regpatch.registry.http import _is_transient, _parse_challenge, _retry_after, _tls_failure
from regpatch.registry.verify_command import run_verify_command

USER, PASSWORD = "alice", "correct horse battery staple"
DIGEST = Digest.of_bytes(b"some manifest")


def write_json(path, doc):
    path.write_text(json.dumps(doc))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def fast(url: str, **kw) -> RegistryClient:
    kw.setdefault("retries", 1)
    return RegistryClient(url, retry_wait=0.01, retry_max_wait=0.02, timeout=5, **kw)


# --------------------------------------------------------------------------- credentials

def test_environment_credentials_come_first_and_must_come_in_pairs(tmp_path):
    cfg = write_json(tmp_path / "config.json", {"auths": {"reg:5000": {"username": "file", "password": "pw"}}})
    env = {"REGPATCH_REGISTRY_USERNAME": "envuser", "REGPATCH_REGISTRY_PASSWORD": "envpw"}
    assert load_credentials("reg:5000", auth_file=cfg, env=env) == Credentials("envuser", "envpw")
    assert load_credentials("reg:5000", auth_file=cfg, env={}) == Credentials("file", "pw")
    with pytest.raises(UsageError, match="REGPATCH_REGISTRY_PASSWORD is not set: set both"):
        load_credentials("reg:5000", env={"REGPATCH_REGISTRY_USERNAME": "u"})
    with pytest.raises(UsageError, match="REGPATCH_REGISTRY_USERNAME is not set"):
        load_credentials("reg:5000", env={"REGPATCH_REGISTRY_PASSWORD": "p"})


def test_the_password_never_shows_and_basic_is_base64_of_user_colon_password():
    c = Credentials(USER, PASSWORD)
    for text in (repr(c), str(c), f"{c}"):
        assert PASSWORD not in text and USER in text
    assert c.basic_header() == "Basic " + b64(f"{USER}:{PASSWORD}")


@pytest.mark.parametrize("key", ["reg.example:5000", "https://reg.example:5000", "http://user@REG.example:5000/v1/"])
def test_auth_file_keys_match_whatever_their_form(tmp_path, key):
    cfg = write_json(tmp_path / "config.json", {"auths": {"other:1": {"auth": b64("x:y")},
                                                          key: {"auth": b64("bob:pa:ss")}}})
    for host in ("reg.example:5000", "https://reg.example:5000", "HTTP://Reg.Example:5000/"):
        assert load_credentials(host, auth_file=cfg, env={}) == Credentials("bob", "pa:ss")
    assert load_credentials("reg.example:5001", auth_file=cfg, env={}) is None


def test_auth_files_are_found_where_docker_and_podman_keep_them(tmp_path):
    def auth_file(folder, name="config.json", user="u"):
        folder.mkdir(parents=True, exist_ok=True)
        return write_json(folder / name, {"auths": {"r:1": {"username": user, "password": "p"}}})

    registry_auth = auth_file(tmp_path / "ra", "auth.json", "from-registry-auth-file")
    auth_file(tmp_path / "dc", user="from-docker-config")
    auth_file(tmp_path / "run" / "containers", "auth.json", "from-xdg-runtime-dir")
    auth_file(tmp_path / "home" / ".docker", user="from-home")
    home = "USERPROFILE" if platform.is_windows() else "HOME"  # the user's folder: %USERPROFILE% on Windows
    env = {"REGISTRY_AUTH_FILE": str(registry_auth), "DOCKER_CONFIG": str(tmp_path / "dc"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), home: str(tmp_path / "home")}
    order = ["REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", home]
    for i, var in enumerate(order):
        remaining = {k: env[k] for k in order[i:]}
        assert load_credentials("r:1", env=remaining).username.endswith(
            {"REGISTRY_AUTH_FILE": "registry-auth-file", "DOCKER_CONFIG": "docker-config",
             "XDG_RUNTIME_DIR": "xdg-runtime-dir", home: "home"}[var])
    assert load_credentials("r:1", env={home: str(tmp_path / "nobody")}) is None
    assert load_credentials("r:1", env={}) is None


@pytest.mark.parametrize("content, message", [
    ('{"auths": {"r:1": {"auth": "' + PASSWORD, "is not valid JSON; expected a docker config.json"),
    (b"\xff\xfe{}", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object with an 'auths' object"),
    (json.dumps({"auths": ["r:1"]}), "'auths' must be an object keyed by registry host"),
    (json.dumps({"auths": {"r:1": "user:pw"}}), "the 'auths' entry for r:1 must be an object"),
    (json.dumps({"auths": {"r:1": {"auth": "abc"}}}), "the 'auth' value for r:1 is not base64 of 'user:password'"),
    (json.dumps({"auths": {"r:1": {"auth": base64.b64encode(b"\xff\xfe:x").decode()}}}), "not base64 of"),
    (json.dumps({"auths": {"r:1": {"auth": b64("nocolon")}}}), "not base64 of 'user:password'"),
    (json.dumps({"auths": {"r:1": {"auth": b64(":pw")}}}), "not base64 of 'user:password'"),
    (json.dumps({"auths": {"r:1": {"username": "u"}}}), "needs both 'username' and 'password' strings"),
    (json.dumps({"auths": {"r:1": {"password": 5}}}), "needs both 'username' and 'password' strings"),
])
def test_bad_auth_files_are_named_without_echoing_what_they_hold(tmp_path, content, message):
    cfg = tmp_path / "config.json"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError) as e:
        load_credentials("r:1", auth_file=cfg, env={})
    assert message in str(e.value) and str(cfg) in str(e.value)
    assert PASSWORD not in str(e.value)


def test_identity_tokens_and_helpers_are_used(tmp_path):
    """(Helpers run for real in tests/e2e/test_hardening.py.)"""
    cfg = write_json(tmp_path / "config.json", {"auths": {"r:1": {"identitytoken": "id-tok-S3cret"}}})
    creds = load_credentials("r:1", auth_file=cfg, env={})
    assert creds.identity_token and creds.password == "id-tok-S3cret" and "S3cret" not in repr(creds)
    for doc in ({"credHelpers": {"r:1": "secretservice"}}, {"auths": {}, "credsStore": "desktop"}):
        write_json(cfg, doc)
        with pytest.raises(AuthError, match="docker-credential-.* is not installed or not on PATH"):
            load_credentials("r:1", auth_file=cfg, env={"PATH": str(tmp_path)})


def test_auth_file_entries_without_credentials_or_for_other_hosts(tmp_path):
    cfg = write_json(tmp_path / "config.json", {"auths": {"r:1": {}}, "credHelpers": {"other:2": "pass"}})
    assert load_credentials("r:1", auth_file=cfg, env={}) is None
    # inline credentials win over a global credsStore
    write_json(cfg, {"auths": {"r:1": {"username": "u", "password": "p"}}, "credsStore": "desktop"})
    assert load_credentials("r:1", auth_file=cfg, env={}) == Credentials("u", "p")
    with pytest.raises(UsageError, match="does not exist or is not a file"):
        load_credentials("r:1", auth_file=tmp_path / "missing.json", env={})
    with pytest.raises(UsageError, match="does not exist or is not a file"):
        load_credentials("r:1", auth_file=tmp_path, env={})


# --------------------------------------------------------------------------- URLs and TLS files

@pytest.mark.parametrize("url, message", [
    (f"https://{USER}:{PASSWORD}@127.0.0.1:5000", "carries credentials; never put them in a URL"),
    (f"https://{USER}@127.0.0.1:5000", "carries credentials"),
    ("ftp://127.0.0.1:5000", "must start with https:// (or http:// for a plain-HTTP registry)"),
    ("http://", "has no host"),
    ("http://127.0.0.1:5000/?x=1", "must not have a query or fragment"),
    ("http://127.0.0.1:5000/#frag", "must not have a query or fragment"),
])
def test_registry_urls_are_checked_before_any_request(url, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        RegistryClient(url)
    assert PASSWORD not in str(e.value)
    with pytest.raises(UsageError, match="retries must be >= 0"):
        RegistryClient("http://127.0.0.1:5000", retries=-1)


def test_scheme_defaults_and_path_prefixes():
    assert RegistryClient("127.0.0.1:5000").url == "https://127.0.0.1:5000"
    assert RegistryClient("127.0.0.1:5000", insecure=True).url == "http://127.0.0.1:5000"
    with RegistryClient("http://reg.local:5000/mirror/") as c:
        assert (c.url, c.host, c._api("r/manifests/t")) == ("http://reg.local:5000/mirror", "reg.local:5000",
                                                            "http://reg.local:5000/mirror/v2/r/manifests/t")
    c = RegistryClient("https://127.0.0.1:5000", credentials=Credentials(USER, PASSWORD), insecure=True)
    assert repr(c) == "RegistryClient(url='https://127.0.0.1:5000', user='alice', insecure=True)"
    c.close()


def self_signed_pem(path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regpatch test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_ca_files_must_exist_and_hold_pem_certificates(tmp_path):
    with pytest.raises(UsageError, match="CA file .*missing.pem does not exist"):
        RegistryClient("https://127.0.0.1:5000", ca_file=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="is not a PEM certificate bundle"):
        RegistryClient("https://127.0.0.1:5000", ca_file=junk)
    good = self_signed_pem(tmp_path / "ca.pem")
    RegistryClient("https://127.0.0.1:5000", ca_file=good).close()
    # plain HTTP and insecure HTTPS do not read the CA file at all
    RegistryClient("http://127.0.0.1:5000", ca_file=junk).close()
    RegistryClient("https://127.0.0.1:5000", ca_file=junk, insecure=True).close()


# --------------------------------------------------------------------------- reading answers

def test_challenges_are_parsed_like_the_registry_writes_them():
    assert _parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                            'scope="repository:a/b:pull"') == ("bearer", {
                                "realm": "https://auth.example/token", "service": "registry.example",
                                "scope": "repository:a/b:pull"})
    assert _parse_challenge('  Basic realm="Registry \\"Realm\\""') == ("basic", {"realm": 'Registry "Realm"'})
    assert _parse_challenge('Bearer realm=https://t/x, error=insufficient_scope') == (
        "bearer", {"realm": "https://t/x", "error": "insufficient_scope"})
    assert _parse_challenge("") == ("", {})


def test_error_codes_come_from_the_json_body_and_nothing_else():
    def response(body: bytes) -> httpx.Response:
        return httpx.Response(404, content=body)

    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"},
                                  {"code": "NAME_UNKNOWN"}, {"message": "no code"}, "junk"]}).encode()
    assert _error_codes(response(body)) == "MANIFEST_UNKNOWN, NAME_UNKNOWN"
    assert _error_codes(response(b"<html>not json</html>")) == ""
    assert _error_codes(response(b'{"errors": 5}')) == ""
    assert _error_codes(response(b'{"errors": [{"code": "X"}]' + b" " * 70000 + b"}")) == ""  # too large: unread


def test_bodies_are_read_in_the_sizes_asked():
    chunks = [b"abc", b"defgh", b"", b"ij"]
    reader = _BodyReader(httpx.Response(200, content=iter(chunks)))
    assert [reader.read(2), reader.read(2), reader.read(10), reader.read(), reader.read(1)] == \
        [b"ab", b"c", b"defgh", b"ij", b""]


def test_retry_after_and_what_is_worth_a_retry():
    assert [_retry_after(v) for v in (None, "", "2", " 0.5 ", "-1", "Wed, 21 Oct 2026 07:28:00 GMT")] == \
        [None, None, 2.0, 0.5, None, None]
    connect = httpx.ConnectError("refused")
    tls = httpx.ConnectError("handshake")
    tls.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    assert _tls_failure(tls) is tls.__context__ and _tls_failure(connect) is None
    looped = httpx.ReadError("loop")
    looped.__context__ = looped  # a cycle in the chain ends the walk
    assert _tls_failure(looped) is None
    assert [_is_transient(e) for e in (_RetryableStatus(503, None), connect, httpx.ReadTimeout("slow"),
                                       httpx.RemoteProtocolError("cut"))] == [True] * 4
    assert [_is_transient(e) for e in (tls, httpx.DecodingError("bad"), VerificationError("x"),
                                       ValueError("bug"))] == [False] * 4


# --------------------------------------------------------------------------- retries

def test_statuses_are_retried_with_bounded_backoff_honouring_short_retry_after(caplog):
    calls = []

    def always(status, retry_after=None):
        def attempt():
            calls.append(time.monotonic())
            raise _RetryableStatus(status, retry_after)
        return attempt

    with fast("http://127.0.0.1:5000", retries=2, max_retry_after=1.0) as client:
        with caplog.at_level(logging.WARNING, logger="regpatch.registry"):
            with pytest.raises(RegistryUnavailable, match=r"answered HTTP 503 to GET /v2/ 3 time\(s\); check the "
                                                          "registry's log"):
                client._with_retries("GET /v2/", always(503, 0.3))
        assert len(calls) == 3 and calls[2] - calls[1] >= 0.3  # waited as the registry said
        assert [r.getMessage().split(" failed ")[1][:9] for r in caplog.records] == ["(HTTP 503"] * 2
        calls.clear()
        with pytest.raises(RegistryError, match="answered HTTP 500") as e:
            client._with_retries("GET /v2/", always(500, 3600))  # a Retry-After too long is not obeyed
        assert not isinstance(e.value, RegistryUnavailable) and calls[2] - calls[0] < 3.0

    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise _RetryableStatus(429, None)
        return "served"

    with fast("http://127.0.0.1:5000", retries=4) as client:
        assert client._with_retries("GET /v2/", flaky) == "served" and len(attempts) == 3


def test_certificate_errors_and_other_failures_are_not_retried():
    with fast("https://127.0.0.1:5000", retries=4) as client:
        attempts = []

        def tls_failure():
            attempts.append(1)
            e = httpx.ConnectError("handshake failed")
            e.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
            raise e

        with pytest.raises(RegistryError, match="TLS connection to registry at https://127.0.0.1:5000 failed for "
                                                "GET /v2/: .*certificate verify failed.*give the registry's CA") as e:
            client._with_retries("GET /v2/", tls_failure)
        assert not isinstance(e.value, RegistryUnavailable) and len(attempts) == 1

        def decoding():
            raise httpx.DecodingError("gzip body is corrupt")

        with pytest.raises(RegistryError, match="request to registry at .* failed for GET x: DecodingError: gzip"):
            client._with_retries("GET x", decoding)


def test_nothing_listening_is_registry_unavailable_after_the_retries(caplog):
    url = closed_url()
    blob = Descriptor(DOCKER_LAYER, DIGEST, 10)
    with fast(url, retries=2) as client, caplog.at_level(logging.WARNING, logger="regpatch.registry"):
        assert client.ping() is False
        with pytest.raises(RegistryUnavailable) as e:
            client.check()
        assert f"registry at {url} does not answer GET /v2/: ConnectError" in str(e.value)
        assert "(after 3 attempt(s)); check that it is running and that the URL is right" in str(e.value)
        retries = [r.getMessage() for r in caplog.records]
        assert len(retries) == 2 and "retry 1 of 2" in retries[0] and "ConnectError" in retries[0]
        for call, what in ((lambda: client.get_manifest("servercore", "ltsc2019"), "GET manifest servercore:ltsc2019"),
                           (lambda: client.tag_digest("servercore", "ltsc2019"), "GET manifest servercore:ltsc2019"),
                           (lambda: client.verify_blob("servercore", blob), f"GET blob {DIGEST} in servercore"),
                           (lambda: client.verify_image("servercore", DIGEST, DIGEST),
                            f"GET manifest servercore@{DIGEST}")):
            with pytest.raises(RegistryUnavailable, match=f"does not answer {what}"):
                call()


def test_verify_image_by_digest_must_name_the_expected_digest():
    with fast(closed_url(), retries=0) as client:
        with pytest.raises(RegistryUnavailable, match=f"GET manifest servercore@{DIGEST}"):
            client.get_manifest(Repository("servercore"), DIGEST)
        with pytest.raises(RegistryUnavailable, match="GET manifest servercore:ltsc2019"):
            client.get_manifest("servercore", Tag("ltsc2019"))
        with pytest.raises(UsageError, match="is not the expected digest"):
            client.verify_image("servercore", DIGEST, Digest.of_bytes(b"other"))


# --------------------------------------------------------------------------- authentication answers

def test_challenges_are_answered_with_the_credentials_only_when_they_fit():
    with fast(closed_url()) as anonymous:
        with pytest.raises(AuthError, match="requires authentication for repository:r:pull and no credentials "
                                            "were given .*set REGPATCH_REGISTRY_USERNAME"):
            anonymous._answer_challenge('Basic realm="registry"', "repository:r:pull")
        with pytest.raises(AuthError, match="asks for unsupported authentication 'negotiate'"):
            anonymous._answer_challenge("Negotiate", None)
        with pytest.raises(AuthError, match=r"unsupported authentication '\(none given\)'"):
            anonymous._answer_challenge("", None)
    with fast(closed_url(), credentials=Credentials(USER, PASSWORD)) as client:
        assert client._auth_header(None) == ({}, "none")
        header, sent = client._answer_challenge('Basic realm="registry"', None)
        assert (header, sent) == ({"Authorization": Credentials(USER, PASSWORD).basic_header()}, "basic")
        assert client._auth_header("repository:r:pull") == (header, "basic")  # sent up front from now on
        refused = client._refused("repository:r:pull", f"HTTP 401, {PASSWORD} echoed back")
        assert isinstance(refused, AuthError) and PASSWORD not in str(refused)
        assert "refused the credentials for user 'alice' for repository:r:pull" in str(refused)


@pytest.mark.parametrize("url, realm, message", [
    ("https://127.0.0.1:5000", "ftp://auth/token", "names an invalid token realm 'ftp://auth/token'"),
    ("https://127.0.0.1:5000", "/token", "names an invalid token realm"),
    ("https://127.0.0.1:5000", "https://u:p@auth/token", "names a token realm with credentials in it"),
    ("https://127.0.0.1:5000", "http://auth.example/token", "refusing to send credentials over HTTP"),
])
def test_token_realms_are_checked_before_credentials_go_anywhere(url, realm, message):
    with fast(url, credentials=Credentials(USER, PASSWORD)) as client:
        with pytest.raises(AuthError, match=message):
            client._answer_challenge(f'Bearer realm="{realm}",service="registry"', "repository:r:pull")


def test_a_token_server_with_nothing_listening_is_unavailable():
    realm = f"{closed_url()}/token"
    with fast("http://127.0.0.1:5000", credentials=Credentials(USER, PASSWORD)) as client:
        with pytest.raises(RegistryUnavailable, match="does not answer GET /v2/"):
            client._with_retries("GET /v2/", lambda: client._answer_challenge(
                f'Bearer realm="{realm}",service="registry",scope="repository:r:pull"', None))
        # a cached token is sent as is, and scrubbed from any message
        client._tokens["repository:r:pull"] = "tok-1234567890"
        assert client._auth_header("repository:r:pull") == ({"Authorization": "Bearer tok-1234567890"},
                                                            "cached-bearer")
        text = f"{PASSWORD} {Credentials(USER, PASSWORD).basic_header()} tok-1234567890"
        assert client._scrub(text) == "*** Basic *** ***"
        assert client._reason(ValueError(text)) == "ValueError: *** Basic *** ***"
        assert client._reason(ValueError()) == "ValueError"


# --------------------------------------------------------------------------- reports and the operator's command

def test_verify_report_says_what_was_proved():
    by_digest = VerifyReport("servercore", str(DIGEST), DIGEST, (DIGEST,), 3, 1234, (), 0.42)
    assert by_digest.summary() == f"servercore@{DIGEST}: 1 manifest(s), 3 blob(s), 1234 bytes verified in 0.4s"
    foreign = Digest.of_bytes(b"foreign")
    by_tag = VerifyReport("servercore", "ltsc2019", DIGEST, (DIGEST,), 2, 10, (foreign,), 1.0)
    assert by_tag.summary().startswith(f"servercore:ltsc2019 @ {DIGEST}: ")
    assert by_tag.summary().endswith("; 1 foreign layer(s) not served by the registry, skipped")


def test_verify_command_failures_say_how_and_never_echo_the_password(monkeypatch):
    run_verify_command("test {ref} = 'reg:5000/r@sha256:x'", "reg:5000/r@sha256:x")
    with pytest.raises(VerificationError, match=r"was killed by signal 9: \(no output\)"):
        run_verify_command("kill -9 $$; true {ref}", "r@sha256:x")
    monkeypatch.setenv("REGPATCH_REGISTRY_PASSWORD", PASSWORD)
    with pytest.raises(VerificationError) as e:
        run_verify_command("echo \"login failed for alice:$REGPATCH_REGISTRY_PASSWORD\" >&2; exit 1; {ref}", "r")
    assert "exited with code 1: login failed for alice:***" in str(e.value) and PASSWORD not in str(e.value)
    with pytest.raises(UsageError, match=r"must contain \{ref\}"):
        run_verify_command("skopeo inspect docker://x", "r")
    # a reference longer than the kernel takes for one argument: the command cannot start
    with pytest.raises(VerificationError, match="could not start: Argument list too long"):
        run_verify_command("true {ref}", "r@" + "x" * (256 << 10))


# --------------------------------------------------------------------------- blob pulls: the direct read

class _BlobServer:
    """A real HTTP server on 127.0.0.1 that serves one blob in the way a test asks
    (whole, corrupt, chunked, cut short, behind a Basic challenge) and records the
    requests: which of the two readers (direct or httpx) took each is seen in them."""

    def __init__(self, data: bytes, mode: str = "plain"):
        import http.server
        import threading

        self.data, self.mode, self.requests = data, mode, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append((self.headers.get("User-Agent", ""), self.headers.get("Authorization"),
                                       self.headers.get("Accept-Encoding")))
                body, mode = outer.data, outer.mode
                if mode == "basic" and self.headers.get("Authorization") != "Basic " + b64(f"{USER}:{PASSWORD}"):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="r"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 1])
                self.send_response(200)
                if mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":  # 16 KiB every 0.1 s, each well within the timeout
                    try:
                        for i in range(0, len(body), 16384):
                            self.wfile.write(body[i:i + 16384])
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                    return
                if mode == "short" or (mode == "short-once" and len(outer.requests) == 1):
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


BLOB = bytes(range(256)) * 40000  # 10 MB: several reads of the direct reader's 4 MiB buffer
BLOB_DESC = Descriptor(DOCKER_LAYER, Digest.of_bytes(BLOB), len(BLOB))


def test_a_plain_blob_is_read_directly_once_and_counted():
    seen = []
    with _BlobServer(BLOB) as srv, fast(srv.url) as client:
        assert client.verify_blob("r", BLOB_DESC, progress=seen.append) == len(BLOB)
    assert len(srv.requests) == 1 and srv.requests[0][2] == "identity"
    assert sum(seen) == len(BLOB)


@pytest.mark.parametrize("mode", ["chunked", "basic", "short-once"])
def test_what_the_direct_read_does_not_take_goes_through_httpx(mode):
    kw = {"credentials": Credentials(USER, PASSWORD)} if mode == "basic" else {}
    seen = []
    with _BlobServer(BLOB, mode) as srv, fast(srv.url, **kw) as client:
        assert client.verify_blob("r", BLOB_DESC, progress=seen.append) == len(BLOB)
    # the progress shows each byte once, whatever the first reader had counted before it gave up
    assert sum(seen) == len(BLOB)
    # the direct try, then httpx (a Basic challenge: answered, the credentials go with the second try)
    assert 2 <= len(srv.requests) <= 3
    if mode == "basic":
        assert srv.requests[0][1] is None and srv.requests[-1][1].startswith("Basic ")


def test_a_corrupt_blob_is_a_fact_not_retried():
    with _BlobServer(BLOB, "corrupt") as srv, fast(srv.url, retries=3) as client:
        with pytest.raises(VerificationError, match=f"blob {BLOB_DESC.digest} in r is corrupt"):
            client.verify_blob("r", BLOB_DESC)
    assert len(srv.requests) == 1


def test_a_body_cut_short_every_time_is_named_truncated():
    with _BlobServer(BLOB, "short") as srv, fast(srv.url, retries=1) as client:
        with pytest.raises(VerificationError, match="is truncated"):
            client.verify_blob("r", BLOB_DESC)
    assert len(srv.requests) == 3  # the direct try, then httpx: the first attempt and one retry


def test_a_proxy_in_the_environment_leaves_the_pull_to_httpx(monkeypatch):
    """Any proxy setting: httpx alone talks to the registry, with its own NO_PROXY rules
    (a required proxy is never bypassed)."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with _BlobServer(BLOB) as srv, fast(srv.url) as client:
        assert client._direct is False
        assert client.verify_blob("r", BLOB_DESC) == len(BLOB)  # httpx: no_proxy applies
    assert len(srv.requests) == 1  # no direct try first
    monkeypatch.delenv("http_proxy")
    monkeypatch.delenv("no_proxy")
    with _BlobServer(BLOB) as srv, fast(srv.url) as client:
        assert client._direct is True


def test_a_stop_request_ends_a_trickling_direct_pull_at_once():
    """A registry that sends a little at a time: the stop request is seen as bytes
    arrive, not once a whole 4 MiB buffer is full."""
    import threading

    from regpatch import interrupt
    from regpatch.errors import Interrupted

    with _BlobServer(BLOB, "trickle") as srv, fast(srv.url) as client:
        threading.Timer(0.5, interrupt.request_stop).start()
        t0 = time.monotonic()
        try:
            with pytest.raises(Interrupted):
                client.verify_blob("r", BLOB_DESC)
        finally:
            interrupt.reset()
        assert time.monotonic() - t0 < 3


def test_a_registry_url_that_is_not_ascii_is_left_to_httpx():
    with fast(closed_url() + "/pr\u00e4fix", retries=0) as client:
        with pytest.raises(RegistryUnavailable):
            client.verify_blob("r", BLOB_DESC)
