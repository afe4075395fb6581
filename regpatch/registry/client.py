"""HTTP client of the registry v2 API, used to prove a patched image by pulling it.

What it does, in the order a verification needs it:

* ``load_credentials``: username/password from ``REGPATCH_REGISTRY_USERNAME`` /
  ``REGPATCH_REGISTRY_PASSWORD``, else from a docker ``config.json``: its
  ``credHelpers`` / ``credsStore`` credential helpers (``docker-credential-<name>
  get``, the protocol docker, skopeo and crane use) or its ``auths`` entries.
* ``RegistryClient``: ``ping``/``check`` the ``/v2/`` endpoint, ``get_manifest``,
  ``verify_blob`` (streamed and hashed, memory flat) and ``verify_image`` (tag,
  digest, every child manifest, every config and layer, each blob once).
* ``run_verify_command``: an operator's own pull command (skopeo, podman, docker),
  logged only through ``sanitize.redact_command``.

Authentication follows the registry's ``WWW-Authenticate`` challenge: ``Basic``
(htpasswd) or ``Bearer`` (a token server; the token is cached per scope).
Credentials are sent only after a challenge asks for them, never appear in a
URL, a log line, a repr or an exception message.

Retries live in one place, ``RegistryClient._with_retries``: connection errors,
timeouts, HTTP 5xx and 429 (honouring a short ``Retry-After``), with bounded
exponential backoff and jitter. Other 4xx answers and digest or size mismatches
are facts, never retried.
"""

from __future__ import annotations

import contextvars
import http.client
import json
import logging
import random
import re
import ssl
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from regpatch import interrupt
from regpatch.digest import CHUNK, Digest, new_hasher
from regpatch.errors import (
    AuthError,
    DigestMismatch,
    InvalidReference,
    ManifestError,
    RegistryError,
    RegistryUnavailable,
    SizeMismatch,
    UsageError,
    VerificationError,
)
from regpatch.hashing import copy_and_hash
from regpatch.manifest import (
    ALL_MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageIndex,
    ImageManifest,
    load_json,
    parse_manifest,
)
from regpatch.reference import Repository, Tag
from regpatch.registry.config import registry_url_from_config, storage_root_from_config  # noqa: F401 (re-export)
from regpatch.registry.credentials import HOW_TO_GIVE_CREDENTIALS, Credentials
from regpatch.sanitize import redact_command

log = logging.getLogger("regpatch.registry")


T = TypeVar("T")
RepoLike = Union[str, Repository]
RefLike = Union[str, Tag, Digest]


# --------------------------------------------------------------------------- credentials


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class FetchedManifest:
    raw: bytes = field(repr=False)
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class VerifyReport:
    repository: str
    reference: str  # the tag, or the digest itself when pulled by digest
    digest: Digest
    manifests: tuple[Digest, ...]
    blobs_verified: int
    bytes_verified: int
    foreign_skipped: tuple[Digest, ...]
    seconds: float

    def summary(self) -> str:
        name = (f"{self.repository}@{self.digest}" if self.reference == str(self.digest)
                else f"{self.repository}:{self.reference} @ {self.digest}")
        s = (f"{name}: {len(self.manifests)} manifest(s), "
             f"{self.blobs_verified} blob(s), {self.bytes_verified} bytes verified in "
             f"{self.seconds:.1f}s")
        if self.foreign_skipped:
            s += f"; {len(self.foreign_skipped)} foreign layer(s) not served by the registry, skipped"
        return s


# --------------------------------------------------------------------------- internals

class _RetryableStatus(Exception):
    """An HTTP answer worth retrying (5xx, 429). Carries no headers."""

    def __init__(self, status: int, retry_after: Optional[float]):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


_TRANSIENT_HTTPX = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _tls_failure(exc: BaseException) -> Optional[BaseException]:
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _RetryableStatus):
        return True
    if isinstance(exc, _TRANSIENT_HTTPX):
        return _tls_failure(exc) is None  # a certificate problem does not heal by waiting
    return False


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        secs = float(value.strip())
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return secs if secs >= 0 else None


_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params = {}
    for m in _PARAM.finditer(rest):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[m.group(1).lower()] = v
    return scheme.lower(), params


def _error_codes(resp: httpx.Response) -> str:
    """'MANIFEST_UNKNOWN' style codes from a registry JSON error body (read, small)."""
    try:
        body = b""
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > 65536:
                return ""
        doc = json.loads(body)
        codes = [str(e.get("code")) for e in doc.get("errors", []) if isinstance(e, dict)]
        return ", ".join(c for c in codes if c and c != "None")
    except Exception:
        return ""


class _BodyReader:
    """File-like ``read(n)`` over a streamed httpx response body."""

    def __init__(self, resp: httpx.Response):
        self._it = resp.iter_bytes()
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return b""
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _unverified_context() -> ssl.SSLContext:
    """--insecure on https: no certificate or host name check (a test registry)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _proxied() -> bool:
    """Whether the environment names any proxy: then only httpx, which applies its own
    NO_PROXY rules, talks to the registry (urllib's rules differ in corner cases, and a
    required proxy must never be bypassed)."""
    try:
        return bool(getproxies())
    except Exception:  # noqa: BLE001 (an odd proxy setting: take the safe path)
        return True


def _repo(value: RepoLike) -> Repository:
    return value if isinstance(value, Repository) else Repository.parse(value)


def _ref(value: RefLike) -> Union[Tag, Digest]:
    if isinstance(value, (Tag, Digest)):
        return value
    if ":" in value:
        return Digest.parse(value)
    return Tag.parse(value)


def _name(repo: Repository, ref: Union[Tag, Digest]) -> str:
    return f"{repo}@{ref}" if isinstance(ref, Digest) else f"{repo}:{ref}"


# --------------------------------------------------------------------------- client

class _Shown:
    """The progress of one blob over its attempts (the direct read, then httpx, then its
    retries): each attempt counts from zero, and only bytes beyond what an earlier
    attempt already reported are passed on, so a retried blob is never counted twice."""

    def __init__(self, progress: Optional[Callable[[int], None]]):
        self.progress = progress
        self.reported = 0

    def attempt(self) -> "_Attempt":
        return _Attempt(self)


class _Attempt:
    def __init__(self, shown: _Shown):
        self.shown = shown
        self.received = 0

    def __call__(self, n: int) -> None:
        self.received += n
        s = self.shown
        if s.progress and self.received > s.reported:
            s.progress(self.received - s.reported)
            s.reported = self.received


class RegistryClient:
    """A client of one registry's v2 API. Thread-safe; use as a context manager.

    ``base_url``: ``https://host:port`` or ``http://host:port`` (an optional
    path prefix is kept). Without a scheme, https is used, or http when
    ``insecure=True``. ``insecure=True`` on https skips certificate
    verification. ``ca_file`` is a PEM bundle to verify the server with.
    ``retries`` is the number of retries after the first attempt;
    ``retry_wait``/``retry_max_wait`` bound the backoff (seconds).
    """

    def __init__(self, base_url: str, *, credentials: Optional[Credentials] = None,
                 ca_file: Optional[Union[str, Path]] = None, insecure: bool = False,
                 timeout: float = 30.0, retries: int = 4, retry_wait: float = 0.5,
                 retry_max_wait: float = 8.0, max_retry_after: float = 30.0,
                 verify_workers: int = 2):
        url = base_url.strip()
        if "://" not in url:
            url = ("http://" if insecure else "https://") + url
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port out of range or not a number
        except ValueError as e:
            raise UsageError(f"registry URL {redact_command(url)!r} is not a valid URL ({e})") from None
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UsageError(
                f"registry URL {parts.scheme}://***@{parts.netloc.rsplit('@', 1)[-1]} carries "
                f"credentials; never put them in a URL: {HOW_TO_GIVE_CREDENTIALS}")
        if parts.scheme not in ("http", "https"):
            raise UsageError(f"registry URL {url!r} must start with https:// (or http:// for a "
                             "plain-HTTP registry)")
        if not parts.hostname:
            raise UsageError(f"registry URL {url!r} has no host")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            raise UsageError(f"registry URL {parts.scheme}://{parts.netloc}{parts.path} must not have a "
                             "query or fragment")
        if port == 0:
            raise UsageError(f"registry URL {url!r} has port 0")
        if retries < 0:
            raise UsageError("retries must be >= 0")
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.host = parts.netloc
        self.credentials = credentials
        self.insecure = insecure
        self.retries = retries
        self._retry_wait = retry_wait
        self._retry_max_wait = retry_max_wait
        self._max_retry_after = max_retry_after
        self._verify_workers = max(1, verify_workers)
        if parts.scheme == "https":
            # the system trust store (where an air-gapped site installs its CA),
            # not certifi's bundle; OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR
            verify: Union[bool, ssl.SSLContext] = ssl.create_default_context()
            if insecure:
                verify = False
            elif ca_file is not None:
                ca = Path(ca_file)
                if not ca.is_file():
                    raise UsageError(f"CA file {ca} does not exist")
                try:
                    verify = ssl.create_default_context(cafile=str(ca))
                except (ssl.SSLError, OSError) as e:
                    raise UsageError(f"CA file {ca} is not a PEM certificate bundle: "
                                     f"{getattr(e, 'reason', None) or type(e).__name__}") from e
        else:
            verify = True
        self._timeout = timeout
        # the same trust for the direct blob reads (``_direct_verify``)
        self._ssl_context: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            self._ssl_context = verify if isinstance(verify, ssl.SSLContext) else _unverified_context()
        self._direct = not _proxied()
        self._http = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout),
                                  follow_redirects=False,
                                  headers={"User-Agent": "regpatch", "Accept-Encoding": "identity"})
        self._lock = threading.Lock()
        self._use_basic = False
        self._tokens: dict[Optional[str], str] = {}

    # ----------------------------------------------------------------- plumbing

    def __repr__(self) -> str:
        who = self.credentials.username if self.credentials else None
        return f"RegistryClient(url={self.url!r}, user={who!r}, insecure={self.insecure})"

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _secrets(self) -> list[str]:
        out = []
        if self.credentials:
            out.append(self.credentials.password)
            out.append(self.credentials.basic_header().split(" ", 1)[1])
        with self._lock:
            out.extend(self._tokens.values())
        return [s for s in out if s]

    def _scrub(self, text: str) -> str:
        for s in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def _reason(self, exc: BaseException) -> str:
        detail = str(exc).strip()
        name = type(exc).__name__
        return self._scrub(f"{name}: {detail}" if detail else name)

    def _api(self, path: str) -> str:
        return f"{self.url}/v2/{path}"

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None \
                and exc.retry_after <= self._max_retry_after:
            return exc.retry_after
        # exponential backoff with jitter, bounded by retry_max_wait
        base = self._retry_wait * (2 ** (state.attempt_number - 1))
        return min(base + random.uniform(0, self._retry_wait), self._retry_max_wait)

    def _with_retries(self, what: str, fn: Callable[[], T]) -> T:
        """The one place that retries: transient faults of one whole attempt."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception()
            reason = f"HTTP {exc.status}" if isinstance(exc, _RetryableStatus) else self._reason(exc)
            log.warning("registry %s: %s failed (%s); retry %d of %d in %.1fs", self.url, what,
                        reason, state.attempt_number, self.retries,
                        state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(retry=retry_if_exception(_is_transient),
                            stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                            before_sleep=before_sleep, sleep=interrupt.sleep, reraise=True)
        attempts = self.retries + 1
        try:
            return retrying(fn)
        except _RetryableStatus as e:
            cls = RegistryUnavailable if e.status in (429, 502, 503, 504) else RegistryError
            raise cls(f"registry at {self.url} answered HTTP {e.status} to {what} "
                      f"{attempts} time(s); check the registry's log and its storage") from None
        except httpx.HTTPError as e:
            tls = _tls_failure(e)
            if tls is not None:
                raise RegistryError(
                    f"TLS connection to registry at {self.url} failed for {what}: "
                    f"{self._scrub(str(getattr(tls, 'reason', None) or tls))}; give the registry's CA "
                    "with ca_file (--ca-file), or insecure=True for a test registry") from None
            if isinstance(e, _TRANSIENT_HTTPX):
                raise RegistryUnavailable(
                    f"registry at {self.url} does not answer {what}: {self._reason(e)} "
                    f"(after {attempts} attempt(s)); check that it is running and that the URL "
                    "is right") from None
            raise RegistryError(f"request to registry at {self.url} failed for {what}: "
                                f"{self._reason(e)}") from None

    def _send(self, method: str, url: str, *, headers: Optional[dict] = None,
              follow_redirects: bool = False, auth: Optional[httpx.Auth] = None,
              params: Optional[dict] = None) -> httpx.Response:
        """One HTTP exchange, body not read. 5xx/429 become ``_RetryableStatus``."""
        req = self._http.build_request(method, url, headers=headers, params=params)
        resp = self._http.send(req, stream=True, follow_redirects=follow_redirects, auth=auth)
        if resp.status_code >= 500 or resp.status_code == 429:
            retry_after = _retry_after(resp.headers.get("retry-after"))
            resp.close()
            raise _RetryableStatus(resp.status_code, retry_after)
        return resp

    def _send_form(self, url: str, form: dict) -> httpx.Response:
        """POST a form (the token server's refresh-token grant); 5xx/429 as in ``_send``."""
        req = self._http.build_request("POST", url, data=form)
        resp = self._http.send(req, stream=True, follow_redirects=False)
        if resp.status_code >= 500 or resp.status_code == 429:
            retry_after = _retry_after(resp.headers.get("retry-after"))
            resp.close()
            raise _RetryableStatus(resp.status_code, retry_after)
        return resp

    def _auth_header(self, scope: Optional[str]) -> tuple[dict, str]:
        with self._lock:
            token = self._tokens.get(scope)
            basic = self._use_basic
        if token:
            return {"Authorization": f"Bearer {token}"}, "cached-bearer"
        if basic and self.credentials:
            return {"Authorization": self.credentials.basic_header()}, "basic"
        return {}, "none"

    def _send_authorized(self, method: str, url: str, *, scope: Optional[str],
                         headers: Optional[dict] = None,
                         follow_redirects: bool = False) -> httpx.Response:
        base = dict(headers or {})
        auth, sent = self._auth_header(scope)
        resp = self._send(method, url, headers={**base, **auth}, follow_redirects=follow_redirects)
        for _ in range(2):
            if resp.status_code == 403:
                resp.close()
                raise self._refused(scope, "HTTP 403 Forbidden")
            if resp.status_code != 401:
                return resp
            challenge = resp.headers.get("www-authenticate", "")
            codes = _error_codes(resp) or "HTTP 401"
            resp.close()
            if sent in ("basic", "fresh-bearer"):
                error = _parse_challenge(challenge)[1].get("error")
                raise self._refused(scope, f"{codes}, {error}" if error else codes)
            if sent == "cached-bearer":  # expired: fetch a new one
                with self._lock:
                    self._tokens.pop(scope, None)
            auth, sent = self._answer_challenge(challenge, scope)
            resp = self._send(method, url, headers={**base, **auth},
                              follow_redirects=follow_redirects)
        resp.close()
        raise self._refused(scope, "HTTP 401")

    def _refused(self, scope: Optional[str], detail: str) -> AuthError:
        detail = self._scrub(detail)
        target = f" for {scope}" if scope else ""
        if self.credentials and self.credentials.identity_token:
            return AuthError(f"registry at {self.url} refused the identity token{target} ({detail}); "
                             "log in again to renew it, or give a username and password")
        if self.credentials:
            return AuthError(f"registry at {self.url} refused the credentials for user "
                             f"{self.credentials.username!r}{target} ({detail}); check the "
                             "username and password, and that the user may pull")
        return AuthError(f"registry at {self.url} requires authentication{target} and no "
                         f"credentials were given ({detail}); {HOW_TO_GIVE_CREDENTIALS}")

    def _answer_challenge(self, challenge: str, scope: Optional[str]) -> tuple[dict, str]:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise self._refused(scope, "Basic authentication required")
            if self.credentials.identity_token:
                raise AuthError(f"registry at {self.url} asks for Basic authentication, but the "
                                "credentials for it are an identity token, which only a token "
                                "server accepts; give a username and password instead")
            with self._lock:
                self._use_basic = True
            return {"Authorization": self.credentials.basic_header()}, "basic"
        if scheme == "bearer":
            token = self._fetch_token(params, scope)
            return {"Authorization": f"Bearer {token}"}, "fresh-bearer"
        raise AuthError(f"registry at {self.url} asks for unsupported authentication "
                        f"{scheme or '(none given)'!r}; regpatch supports Basic and Bearer")

    def _fetch_token(self, params: dict[str, str], scope: Optional[str]) -> str:
        realm = params.get("realm", "")
        rp = urlsplit(realm)
        if rp.scheme not in ("http", "https") or not rp.hostname:
            raise AuthError(f"registry at {self.url} names an invalid token realm {realm!r}")
        if rp.username or rp.password:
            raise AuthError(f"registry at {self.url} names a token realm with credentials in it")
        if rp.scheme == "http" and self.url.startswith("https://") and self.credentials \
                and not self.insecure:
            raise AuthError(f"registry at {self.url} names the plain-HTTP token realm {realm}; "
                            "refusing to send credentials over HTTP (use insecure=True for a "
                            "test setup)")
        query = {}
        if params.get("service"):
            query["service"] = params["service"]
        want = params.get("scope") or scope
        if want:
            query["scope"] = want
        if self.credentials and self.credentials.identity_token:
            # OAuth2 refresh-token grant of the docker token spec: POST, form-encoded
            form = {**query, "grant_type": "refresh_token", "client_id": "regpatch",
                    "refresh_token": self.credentials.password}
            resp = self._send_form(realm, form)
        else:
            auth = httpx.BasicAuth(self.credentials.username, self.credentials.password) \
                if self.credentials else None
            resp = self._send("GET", realm, params=query, auth=auth)
        try:
            if resp.status_code in (401, 403):
                raise self._refused(scope, f"token server {realm} answered HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise AuthError(f"token server {realm} of registry {self.url} answered HTTP "
                                f"{resp.status_code}; check the token service")
            body = resp.read()
        finally:
            resp.close()
        try:
            doc = load_json(body, what=f"token server {realm}", strict_keys=False) \
                if len(body) <= 1 << 20 else None
        except ManifestError:
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm} of registry {self.url} answered without a "
                            "'token' or 'access_token'")
        with self._lock:
            self._tokens[scope] = token
        return token

    # ----------------------------------------------------------------- API

    def ping(self) -> bool:
        """True when ``GET /v2/`` answers 200 or 401 (the registry is up). No retries."""
        try:
            req = self._http.build_request("GET", self._api(""))
            resp = self._http.send(req, stream=True)
            resp.close()
        except httpx.HTTPError:
            return False
        return resp.status_code in (200, 401)

    def check(self) -> None:
        """``GET /v2/`` with authentication: RegistryUnavailable / AuthError / None."""

        def attempt() -> None:
            resp = self._send_authorized("GET", self._api(""), scope=None)
            try:
                if resp.status_code == 200:
                    return
                if resp.status_code == 404:
                    raise RegistryUnavailable(f"{self.url} answers 404 for /v2/: it is not a "
                                              "registry v2 API (wrong port or path prefix?)")
                raise RegistryError(f"registry at {self.url} answered HTTP {resp.status_code} "
                                    "for /v2/")
            finally:
                resp.close()

        self._with_retries("GET /v2/", attempt)

    def name_accepted(self, repository: RepoLike) -> bool:
        """Whether the registry takes the repository name: one ``GET /v2/<name>/tags/list``
        (no retries; 200 or 404 both mean the name itself is fine). Registry 2.8.2 with a
        blob descriptor cache answers 500 for a name longer than 255 characters once
        normalised as ``docker.io/library/<name>``."""
        repo = Repository.parse(str(repository))
        try:
            resp = self._send_authorized("GET", self._api(f"{repo}/tags/list"), scope=f"repository:{repo}:pull")
        except _RetryableStatus as e:
            if e.status == 500:
                return False
            raise RegistryUnavailable(f"registry at {self.url} answered {e} for the tags of {repo}") from None
        except httpx.HTTPError as e:
            raise RegistryUnavailable(f"registry at {self.url} did not answer: {self._reason(e)}") from None
        resp.close()
        return True

    def get_manifest(self, repository: RepoLike, reference: RefLike, *,
                     accept: Iterable[str] = ALL_MANIFEST_TYPES) -> FetchedManifest:
        """Fetch one manifest's exact bytes; its digest is checked against the
        ``Docker-Content-Digest`` header and, for a digest reference, the reference."""
        repo, ref = _repo(repository), _ref(reference)
        name = _name(repo, ref)
        url = self._api(f"{repo}/manifests/{ref}")
        scope = f"repository:{repo}:pull"
        accept_header = ", ".join(accept)

        def attempt() -> FetchedManifest:
            resp = self._send_authorized("GET", url, scope=scope,
                                         headers={"Accept": accept_header})
            try:
                if resp.status_code == 404:
                    codes = _error_codes(resp) or "HTTP 404"
                    raise VerificationError(f"manifest {name} not found in registry at {self.url} "
                                            f"({codes}); the tag or revision link is missing")
                if resp.status_code != 200:
                    codes = _error_codes(resp)
                    raise RegistryError(f"registry at {self.url} answered HTTP {resp.status_code} "
                                        f"for manifest {name}" + (f" ({codes})" if codes else ""))
                length = resp.headers.get("content-length")
                if length and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
                    raise VerificationError(f"manifest {name} is {length} bytes, more than the "
                                            "4 MiB limit")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > MAX_MANIFEST_SIZE:
                        raise VerificationError(f"manifest {name} is larger than the 4 MiB limit")
                raw = bytes(buf)
                header = resp.headers.get("docker-content-digest")
                media_type = resp.headers.get("content-type", "").split(";")[0].strip()
            finally:
                resp.close()
            digest = Digest.of_bytes(raw)
            if header:
                try:
                    claimed = Digest.parse(header.strip())
                except InvalidReference:
                    claimed = None
                if claimed is not None and claimed != digest:
                    raise VerificationError(
                        f"manifest {name}: registry claims Docker-Content-Digest {claimed} but the "
                        f"{len(raw)} bytes it served hash to {digest}")
            if isinstance(ref, Digest) and digest != ref:
                raise VerificationError(f"manifest {name}: the {len(raw)} bytes served hash to "
                                        f"{digest}, not to the digest asked for")
            return FetchedManifest(raw, media_type, digest)

        return self._with_retries(f"GET manifest {name}", attempt)

    def _verify_blob(self, repo: Repository, desc: Descriptor,
                     progress: Optional[Callable[[int], None]] = None) -> Optional[int]:
        """Bytes verified, or None when the registry answers 404."""
        url = self._api(f"{repo}/blobs/{desc.digest}")
        scope = f"repository:{repo}:pull"
        what = f"blob {desc.digest} in {repo}"
        # bytes received when an attempt ended with the body cut short, else None
        short: list[Optional[int]] = [None]

        first = [True]
        shown = _Shown(progress)

        def attempt() -> Optional[int]:
            short[0] = None
            if first[0]:
                first[0] = False
                n = self._direct_verify(url, scope, desc, what, shown.attempt())
                if n is not None:
                    return n
            resp = self._send_authorized("GET", url, scope=scope, follow_redirects=True)
            count = shown.attempt()

            try:
                if resp.status_code == 404:
                    return None
                if resp.status_code != 200:
                    codes = _error_codes(resp)
                    raise RegistryError(f"registry at {self.url} answered HTTP {resp.status_code} "
                                        f"for {what}" + (f" ({codes})" if codes else ""))
                length = resp.headers.get("content-length")
                if length and length.isdigit() and int(length) != desc.size:
                    raise VerificationError(f"{what}: the registry serves {length} bytes, the "
                                            f"manifest says {desc.size} (digest {desc.digest})")
                try:
                    _, n = copy_and_hash(_BodyReader(resp), None, what=what,
                                         expected=desc.digest, expected_size=desc.size,
                                         progress=count)
                except httpx.RemoteProtocolError:
                    short[0] = count.received
                    raise
                return n
            finally:
                resp.close()

        try:
            return self._with_retries(f"GET {what}", attempt)
        except RegistryUnavailable as e:
            if short[0] is None:
                raise
            # The registry announced the full size (its blob descriptor cache
            # remembers it) and then ran out of bytes, on every attempt.
            raise VerificationError(
                f"{what} is truncated: the registry announced {desc.size} bytes and closed the "
                f"connection after {short[0]}, on each of {self.retries + 1} attempt(s); the "
                f"stored blob data is shorter than its digest {desc.digest} says") from e
        except DigestMismatch as e:
            raise VerificationError(
                f"{what} is corrupt: expected digest {e.expected}, the registry served bytes "
                f"hashing to {e.actual}; size expected {desc.size}, got {e.size} bytes") from None
        except SizeMismatch as e:
            raise VerificationError(
                f"{what} has the wrong size: expected {e.expected} bytes, the registry served "
                f"{e.actual}{'+' if e.actual > e.expected else ''} (digest {desc.digest})") from None

    def _direct_verify(self, url: str, scope: str, desc: Descriptor, what: str,
                       progress: Optional[Callable[[int], None]]) -> Optional[int]:
        """The common case of a blob pull, read straight off the socket into one buffer.

        httpx parses a body in 64 KiB pieces in Python (about 350 MB/s here, two
        pulls at once); ``http.client``'s ``readinto`` fills a 4 MiB buffer from
        the socket (over 1 GB/s). Taken only for a plain ``200`` with a
        ``Content-Length`` equal to the descriptor's size, no transfer or content
        encoding, no proxy, with the authorization the client already holds for
        the scope; anything else (a challenge, a redirect to storage, 404, 5xx, a
        connection error, a body cut short) returns None and the request is made
        again through httpx, which retries, authenticates and words the errors.
        Only a digest mismatch of a complete body is a fact here: it is raised.
        """
        if not self._direct or not url.isascii():
            return None  # (http.client would not encode a non-ASCII host or path as httpx does)
        parts = urlsplit(url)
        auth, _ = self._auth_header(scope)
        headers = {"User-Agent": "regpatch", "Accept-Encoding": "identity", "Host": parts.netloc, **auth}
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self._timeout, context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._timeout)
        try:
            try:
                conn.request("GET", parts.path, headers=headers)
                resp = conn.getresponse()
            except (OSError, ValueError, http.client.HTTPException):
                return None
            if (resp.status != 200 or resp.length != desc.size
                    or resp.getheader("transfer-encoding") is not None
                    or resp.getheader("content-encoding", "identity").strip().lower() != "identity"):
                return None
            h = new_hasher()
            buf = bytearray(min(CHUNK, max(desc.size, 1)))
            view = memoryview(buf)
            done = 0
            while done < desc.size:
                want = min(len(buf), desc.size - done)
                n = 0
                while n < want:  # fill the buffer one recv at a time (readinto1): a stop request
                    interrupt.check()  # is seen as bytes arrive, not once 4 MiB have
                    try:
                        got = resp.fp.readinto1(view[n:want])
                    except (OSError, ValueError, http.client.HTTPException):
                        return None
                    if not got:
                        return None  # cut short: the httpx path retries and says so
                    n += got
                h.update(view[:n])
                done += n
                if progress:
                    progress(n)
            actual = Digest("sha256", h.hexdigest())
            if actual != desc.digest:
                raise DigestMismatch(what, desc.digest, actual, done)
            return done
        finally:
            conn.close()

    def verify_blob(self, repository: RepoLike, descriptor: Descriptor, *,
                    progress: Optional[Callable[[int], None]] = None) -> int:
        """Pull one blob streamed, check digest and size; return the bytes verified."""
        repo = _repo(repository)
        n = self._verify_blob(repo, descriptor, progress)
        if n is None:
            raise VerificationError(f"blob {descriptor.digest} not found in {repo} at registry "
                                    f"{self.url} (BLOB_UNKNOWN); its _layers link or data is missing")
        return n

    def tag_digest(self, repository: RepoLike, tag: Union[str, Tag]) -> Digest:
        """The digest of the manifest the registry serves for ``repository:tag``."""
        return self.get_manifest(_repo(repository), _ref(tag)).digest

    def verify_image(self, repository: RepoLike, reference: RefLike, expected: Digest, *,
                     progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
        """Pull the image completely and prove it is the image ``expected``.

        ``reference`` is a tag (its manifest must be ``expected``) or the digest
        ``expected`` itself: a patch proves the new image by digest before the
        tag points at it. ``progress`` (if given) is called with byte counts from
        up to two worker threads.
        """
        start = time.monotonic()
        repo, tg = _repo(repository), _ref(reference)
        expected = expected if isinstance(expected, Digest) else Digest.parse(expected)
        if isinstance(tg, Digest):
            if tg != expected:
                raise UsageError(f"verify_image: reference {tg} is not the expected digest {expected}")
            top = self.get_manifest(repo, expected)
        else:
            by_tag = self.get_manifest(repo, tg)
            if by_tag.digest != expected:
                raise VerificationError(f"tag {repo}:{tg} points at {by_tag.digest}, expected {expected}")
            top = self.get_manifest(repo, expected)
            if top.raw != by_tag.raw:
                raise VerificationError(f"manifest {repo}@{expected} by digest differs from the one "
                                        f"tag {tg} serves")

        manifests: list[Digest] = []
        blobs: dict[Digest, Descriptor] = {}

        def walk(fetched: FetchedManifest, label: str) -> None:
            try:
                m = parse_manifest(fetched.raw, what=label, media_type_hint=fetched.media_type)
            except ManifestError as e:
                raise VerificationError(f"registry serves an unusable manifest: {e}") from e
            manifests.append(fetched.digest)
            if isinstance(m, ImageIndex):
                for d in m.manifests:
                    if d.digest in manifests:
                        continue
                    child = self.get_manifest(repo, d.digest)
                    if len(child.raw) != d.size:
                        raise VerificationError(
                            f"manifest {repo}@{d.digest} is {len(child.raw)} bytes, the index "
                            f"{fetched.digest} says {d.size}")
                    if child.media_type and d.media_type and child.media_type != d.media_type:
                        log.warning("manifest %s@%s is served as %s, the index says %s", repo,
                                    d.digest, child.media_type, d.media_type)
                    walk(child, f"manifest {repo}@{d.digest}")
            else:
                assert isinstance(m, ImageManifest)
                for d in m.blobs():
                    blobs.setdefault(d.digest, d)

        walk(top, f"manifest {repo}@{expected}")

        skipped: list[Digest] = []
        total = 0
        todo = list(blobs.values())
        with ThreadPoolExecutor(max_workers=min(self._verify_workers, max(1, len(todo))),
                                thread_name_prefix="regpatch-verify") as pool:
            futures = {pool.submit(contextvars.copy_context().run, self._verify_blob, repo, d, progress): d
                       for d in todo}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            failed = [f for f in done if f.exception() is not None]
            if failed:
                # wait for the running one to end before raising: no thread left behind
                wait(pending)
                raise failed[0].exception()
        for f, d in futures.items():
            n = f.result()
            if n is None:
                if d.is_foreign:
                    log.warning("foreign layer %s of %s:%s is not stored in the registry; clients "
                                "fetch it from %s; skipped", d.digest, repo, tg,
                                ", ".join(d.urls) or "its urls")
                    skipped.append(d.digest)
                    continue
                raise VerificationError(f"blob {d.digest} ({d.media_type or 'blob'}) of "
                                        f"{repo}:{tg} not found in the registry at {self.url} "
                                        "(BLOB_UNKNOWN); its _layers link or data is missing")
            total += n

        report = VerifyReport(repository=str(repo), reference=str(tg), digest=expected,
                              manifests=tuple(manifests),
                              blobs_verified=len(todo) - len(skipped), bytes_verified=total,
                              foreign_skipped=tuple(skipped),
                              seconds=round(time.monotonic() - start, 3))
        log.info("verified %s", report.summary())
        return report


    def fetch_blob(self, repository: RepoLike, descriptor: Descriptor, dst, *, offset: int = 0,
                   hasher=None, progress: Optional[Callable[[int], None]] = None) -> Digest:
        """Stream one blob into the writable ``dst``, hashing while writing; memory flat.

        ``offset``/``hasher``: resume after ``offset`` bytes already written to
        ``dst`` and fed to ``hasher`` (a partial file of an earlier run). A
        transient fault mid-body is retried from the bytes received so far
        (``Range``); a registry that ignores ``Range`` answers 200 and the
        bytes already held are skipped. Raises ``SizeMismatch`` /
        ``DigestMismatch`` naming the blob and registry, ``VerificationError``
        when the registry does not have it (404).
        """
        from regpatch.digest import new_hasher

        repo = _repo(repository)
        url = self._api(f"{repo}/blobs/{descriptor.digest}")
        scope = f"repository:{repo}:pull"
        what = f"blob {descriptor.digest} of {repo} from registry {self.url}"
        size = descriptor.size
        h = hasher or new_hasher()
        pos = [offset]
        if offset > size:
            raise SizeMismatch(what, size, offset)

        def attempt() -> None:
            if pos[0] == size and size > 0:
                return
            headers = {"Range": f"bytes={pos[0]}-"} if pos[0] else {}
            resp = self._send_authorized("GET", url, scope=scope, headers=headers, follow_redirects=True)
            try:
                if resp.status_code == 404:
                    raise VerificationError(f"{what}: not found (BLOB_UNKNOWN)")
                skip = 0
                if resp.status_code == 200:
                    skip = pos[0]  # the whole blob again: drop what is already held
                elif resp.status_code != 206 or not pos[0]:
                    codes = _error_codes(resp)
                    raise RegistryError(f"registry at {self.url} answered HTTP {resp.status_code} for "
                                        f"{what}" + (f" ({codes})" if codes else ""))
                else:
                    first = resp.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
                    if first != str(pos[0]):
                        raise RegistryError(f"registry at {self.url} answered a range request for "
                                            f"{what} with Content-Range {first!r}")
                for chunk in resp.iter_bytes():
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    if pos[0] + len(chunk) > size:
                        raise SizeMismatch(what, size, pos[0] + len(chunk))
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[dst.write(view):]
                    pos[0] += len(chunk)
                    if progress:
                        progress(len(chunk))
            finally:
                resp.close()

        self._with_retries(f"GET {what}", attempt)
        if pos[0] != size:
            raise SizeMismatch(what, size, pos[0])
        actual = Digest("sha256", h.hexdigest())
        if actual != descriptor.digest:
            raise DigestMismatch(what, descriptor.digest, actual, pos[0])
        return actual


# --------------------------------------------------------------------------- operator command

