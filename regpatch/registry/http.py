"""The registry's HTTP transport: TLS, proxies, authentication, retries.

``RegistryHTTP`` is the part of the API client that every request goes through:
the base URL and its checks, the httpx client (CA bundle, ``insecure``), the one
place that retries (``_with_retries``: connection errors, timeouts, HTTP 5xx and
429 honouring a short ``Retry-After``, bounded exponential backoff with jitter;
other 4xx answers and digest or size mismatches are facts, never retried), and
authentication by the registry's ``WWW-Authenticate`` challenge: ``Basic``
(htpasswd) or ``Bearer`` (a token server; the token is cached per scope).
Credentials are sent only after a challenge asks for them, and never appear in a
URL, a log line, a repr or an exception message.

``regpatch.registry.client.RegistryClient`` adds the API's operations.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import ssl
import threading
from pathlib import Path
from typing import Callable, Optional, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from regpatch import interrupt
from regpatch.digest import Digest
from regpatch.errors import AuthError, ManifestError, RegistryError, RegistryUnavailable, UsageError
from regpatch.manifest import load_json
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.registry.credentials import HOW_TO_GIVE_CREDENTIALS, Credentials
from regpatch.sanitize import redact_command

log = logging.getLogger("regpatch.registry")


T = TypeVar("T")
RepoLike = Union[str, Repository]
RefLike = Union[str, Tag, Digest]


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


@functools.lru_cache(maxsize=None)
def _system_trust() -> ssl.SSLContext:
    """The system trust store (where an air-gapped site installs its CA; OpenSSL honours
    SSL_CERT_FILE / SSL_CERT_DIR), loaded once per process and shared by every client:
    loading it takes tens of milliseconds, and a patch makes several clients."""
    return ssl.create_default_context()


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


class RegistryHTTP:
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
        # the system trust store, not certifi's bundle: for https, and for a redirect of a
        # plain-HTTP registry to https storage (httpx would load certifi's for every client)
        verify: Union[bool, ssl.SSLContext] = _system_trust()
        if parts.scheme == "https":
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

    def __enter__(self):
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
            # called after a failed attempt: retry_if_exception retries only on an exception
            assert state.outcome is not None
            exc = state.outcome.exception()
            assert exc is not None
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
                    f"with {opt.registry_ca}, or {opt.insecure} for a test registry") from None
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
                            f"refusing to send credentials over HTTP ({opt.insecure} allows it, for a "
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

