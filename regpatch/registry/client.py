"""The registry v2 API client, used to prove a patched image by pulling it.

``RegistryClient`` (over ``regpatch.registry.http.RegistryHTTP``: URL, TLS,
authentication, retries): ``ping``/``check`` the ``/v2/`` endpoint,
``get_manifest``, ``tag_digest``, ``verify_blob`` (streamed and hashed, memory
flat) and ``verify_image`` (tag, digest, every child manifest, every config and
layer, each blob once), ``fetch_blob`` (into a writable file, resumable).
Credentials come from ``regpatch.registry.credentials``; the operator's own pull
command is ``regpatch.registry.verify_command``.
"""

from __future__ import annotations

import contextvars
import http.client
import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union
from urllib.parse import urlsplit

import httpx

from regpatch import interrupt
from regpatch.digest import CHUNK, Digest, new_hasher
from regpatch.errors import (
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
from regpatch.manifest import ALL_MANIFEST_TYPES, MAX_MANIFEST_SIZE, Descriptor, ImageIndex, parse_manifest
from regpatch.reference import Repository, Tag
from regpatch.registry.http import (
    RefLike,
    RegistryHTTP,
    RepoLike,
    _BodyReader,
    _error_codes,
    _name,
    _ref,
    _repo,
    _RetryableStatus,
)

log = logging.getLogger("regpatch.registry")


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


class RegistryClient(RegistryHTTP):
    """A client of one registry's v2 API (``RegistryHTTP``: URL, TLS, authentication,
    retries). Thread-safe; use as a context manager."""

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
        if parts.hostname is None:
            return None  # (not for the client's own URL: it was checked to have a host)
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
                     progress: Optional[Callable[[int], None]] = None,
                     seen: Optional[set[tuple[Repository, Digest]]] = None) -> VerifyReport:
        """Pull the image completely and prove it is the image ``expected``.

        ``reference`` is a tag (its manifest must be ``expected``) or the digest
        ``expected`` itself: a patch proves the new image by digest before the
        tag points at it. ``progress`` (if given) is called with byte counts from
        up to two worker threads. ``seen`` (if given): (repository, blob) pairs already pulled and
        re-hashed in this run, not pulled again; the ones this call pulls are added.
        """
        start = time.monotonic()
        repo, tg = _repo(repository), _ref(reference)
        expected = expected if isinstance(expected, Digest) else Digest.parse(expected)
        top = self._top_manifest(repo, tg, expected)
        manifests: list[Digest] = []
        blobs: dict[Digest, Descriptor] = {}
        self._walk(repo, top, f"manifest {repo}@{expected}", manifests, blobs)
        todo = [d for d in blobs.values() if seen is None or (repo, d.digest) not in seen]
        total, skipped = self._pull_blobs(repo, tg, todo, progress)
        if seen is not None:
            seen.update((repo, d.digest) for d in todo)
        report = VerifyReport(repository=str(repo), reference=str(tg), digest=expected,
                              manifests=tuple(manifests),
                              blobs_verified=len(todo) - len(skipped), bytes_verified=total,
                              foreign_skipped=tuple(skipped),
                              seconds=round(time.monotonic() - start, 3))
        log.info("verified %s", report.summary())
        return report

    def _top_manifest(self, repo: Repository, tg: Union[Tag, Digest], expected: Digest) -> FetchedManifest:
        """The manifest ``expected``, fetched by digest; by a tag, the tag must serve the same bytes."""
        if isinstance(tg, Digest):
            if tg != expected:
                raise UsageError(f"verify_image: reference {tg} is not the expected digest {expected}")
            return self.get_manifest(repo, expected)
        by_tag = self.get_manifest(repo, tg)
        if by_tag.digest != expected:
            raise VerificationError(f"tag {repo}:{tg} points at {by_tag.digest}, expected {expected}")
        top = self.get_manifest(repo, expected)
        if top.raw != by_tag.raw:
            raise VerificationError(f"manifest {repo}@{expected} by digest differs from the one "
                                    f"tag {tg} serves")
        return top

    def _walk(self, repo: Repository, fetched: FetchedManifest, label: str, manifests: list[Digest],
              blobs: dict[Digest, Descriptor]) -> None:
        """Every manifest of the image (an index's children fetched and checked against the
        index), collecting the configs and layers to pull."""
        try:
            m = parse_manifest(fetched.raw, what=label, media_type_hint=fetched.media_type)
        except ManifestError as e:
            raise VerificationError(f"registry serves an unusable manifest: {e}") from e
        manifests.append(fetched.digest)
        if not isinstance(m, ImageIndex):
            for d in m.blobs():
                blobs.setdefault(d.digest, d)
            return
        for d in m.manifests:
            if d.digest in manifests:
                continue
            child = self.get_manifest(repo, d.digest)
            if len(child.raw) != d.size:
                raise VerificationError(f"manifest {repo}@{d.digest} is {len(child.raw)} bytes, the index "
                                        f"{fetched.digest} says {d.size}")
            if child.media_type and d.media_type and child.media_type != d.media_type:
                log.warning("manifest %s@%s is served as %s, the index says %s", repo,
                            d.digest, child.media_type, d.media_type)
            self._walk(repo, child, f"manifest {repo}@{d.digest}", manifests, blobs)

    def _pull_blobs(self, repo: Repository, tg: Union[Tag, Digest], todo: list[Descriptor],
                    progress: Optional[Callable[[int], None]]) -> tuple[int, list[Digest]]:
        """Pull and hash every blob (``verify_workers`` at once): (bytes verified, foreign
        layers the registry does not store)."""
        skipped: list[Digest] = []
        total = 0
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
                raise failed[0].exception()  # type: ignore[misc]
        for f, d in futures.items():
            n = f.result()
            if n is not None:
                total += n
                continue
            if not d.is_foreign:
                raise VerificationError(f"blob {d.digest} ({d.media_type or 'blob'}) of "
                                        f"{repo}:{tg} not found in the registry at {self.url} "
                                        "(BLOB_UNKNOWN); its _layers link or data is missing")
            log.warning("foreign layer %s of %s:%s is not stored in the registry; clients "
                        "fetch it from %s; skipped", d.digest, repo, tg, ", ".join(d.urls) or "its urls")
            skipped.append(d.digest)
        return total, skipped

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
                skip = self._resumed_skip(resp, pos[0], what)
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

    def _resumed_skip(self, resp: httpx.Response, pos: int, what: str) -> int:
        """How many leading bytes of this answer to drop: all held ones when the registry
        ignored ``Range`` (200), none for the expected 206; anything else is an error."""
        if resp.status_code == 404:
            raise VerificationError(f"{what}: not found (BLOB_UNKNOWN)")
        if resp.status_code == 200:
            return pos  # the whole blob again: drop what is already held
        if resp.status_code != 206 or not pos:
            codes = _error_codes(resp)
            raise RegistryError(f"registry at {self.url} answered HTTP {resp.status_code} for "
                                f"{what}" + (f" ({codes})" if codes else ""))
        first = resp.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
        if first != str(pos):
            raise RegistryError(f"registry at {self.url} answered a range request for "
                                f"{what} with Content-Range {first!r}")
        return 0


# --------------------------------------------------------------------------- operator command

