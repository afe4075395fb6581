"""Bundles in an object store: ``s3://bucket/prefix`` (AWS S3, MinIO, Ceph, ...).

``S3Source`` is a ``BundleSource``: the planner and the formats read it like a
local folder. What a good download manager does lives here:

- **one place for retries**: ``S3Source._call`` wraps every single S3 call
  (one listing page, one GET of a range and the reading of its body) in
  tenacity, exponential backoff with full jitter, retrying only transient
  faults (``is_transient``): throttling (SlowDown, 503, 429), other 5xx,
  connection resets, timeouts and truncated bodies. botocore's own retries are
  switched off so that faults are not retried twice. NoSuchBucket, NoSuchKey,
  AccessDenied, refused credentials, a changed object (412) and digest or size
  mismatches fail at once with a clear ``SourceError``.
- **streaming**: an object is read through ``S3ObjectReader``, a file-like
  object that GETs ``Range: bytes=<pos>-`` and re-issues the GET from the
  current position after a transient fault. Objects larger than two parts are
  fetched as ranged GETs in parallel threads and handed over in order, so the
  consumer still hashes one ordered stream; memory stays at a few parts,
  whatever the size.
- **resume**: ``S3Source.stage_blob`` streams a layer into a partial file of
  the store's staging folder (``RegistryStore.stage_blob_resumable``) keyed by
  the object's ETag: the next attempt, or the next run, hashes the bytes
  already on disk and GETs only the rest, ``If-Match`` the same ETag.
- **cache**: with ``cache_dir`` every fetched blob is kept there by digest, and
  a blob found there is copied (and hashed) instead of fetched.

Credentials come from boto3's default chain unless ``S3Options.credentials``
holds explicit ones; they are never part of a repr, a log line or an error.
"""

from __future__ import annotations

import contextvars
import functools
import io
import logging
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from regpatch import interrupt, platform
from regpatch.bundle.model import BundleSource, _safe_name
from regpatch.digest import CHUNK, Digest
from regpatch.errors import DigestMismatch, RegpatchError, SizeMismatch, SourceError, UsageError
from regpatch.options import opt

if TYPE_CHECKING:
    from botocore.response import StreamingBody

log = logging.getLogger("regpatch.s3")

T = TypeVar("T")

MiB = 1 << 20
READ_SIZE = 256 << 10  # one read of a streaming body: what a kill can lose, how often progress moves

# Error codes that are facts, not faults: never retried.
NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
                    "UnrecognizedClientException"}
TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                   "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
                   "BandwidthLimitExceeded", "503", "500", "502", "504", "429"}


class S3Credentials:
    """Explicit credentials (e.g. from a Prefect AwsCredentials block).

    Kept out of every repr and str; only ``S3Source`` reads them, to build its
    boto3 session.
    """

    __slots__ = ("_access_key_id", "_secret_access_key", "_session_token", "profile_name")

    def __init__(self, access_key_id: Optional[str] = None, secret_access_key: Optional[str] = None,
                 session_token: Optional[str] = None, profile_name: Optional[str] = None):
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token
        self.profile_name = profile_name

    def session_kwargs(self) -> dict:
        kw: dict = {}
        if self._access_key_id or self._secret_access_key:
            kw.update(aws_access_key_id=self._access_key_id,
                      aws_secret_access_key=self._secret_access_key)
            if self._session_token:
                kw["aws_session_token"] = self._session_token
        if self.profile_name:
            kw["profile_name"] = self.profile_name
        return kw

    def secrets(self) -> list[str]:
        return [s for s in (self._access_key_id, self._secret_access_key, self._session_token) if s]

    def __repr__(self) -> str:
        return "S3Credentials(<hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a result or a cache
        raise TypeError("S3Credentials are not serialisable")


@dataclass(frozen=True)
class S3Options:
    """How to reach the object store and how hard to try. Plain values only."""

    endpoint_url: Optional[str] = None      # default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, AWS
    region: Optional[str] = None
    retries: int = 5                        # retries per S3 call (attempts = retries + 1)
    wait_initial: float = 0.5               # backoff: random in [0, wait_initial * 2**n], capped
    wait_max: float = 20.0
    cache_dir: Optional[str] = None
    part_size: int = 8 * MiB                # ranged GETs for objects larger than two parts
    concurrency: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    credentials: Optional[S3Credentials] = field(default=None, repr=False, compare=False)

    def resolved_endpoint(self) -> Optional[str]:
        return (self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)

    def check(self) -> None:
        if self.retries < 0:
            raise UsageError(f"{opt.s3_retries} must be 0 or more, got {self.retries}")
        if self.wait_initial < 0 or self.wait_max < 0:
            raise UsageError("S3 retry waits must be 0 or more seconds")
        if self.part_size < 64 << 10:
            raise UsageError(f"S3 part size must be at least 64 KiB, got {self.part_size}")
        if self.concurrency < 1:
            raise UsageError(f"S3 concurrency must be at least 1, got {self.concurrency}")
        ep = self.resolved_endpoint()
        if ep and urlsplit(ep).scheme not in ("http", "https"):
            raise UsageError(f"S3 endpoint URL {_strip_userinfo(ep)!r} must start with http:// or https://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url!r} is not an s3:// URL")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:  # s3://KEY:SECRET@bucket/...: never echoed back
        raise UsageError("bundle s3://***@" + bucket.rsplit("@", 1)[-1] + "/...: credentials do not go in "
                         "the URL; use boto3's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) "
                         f"or {opt.aws_credentials_block}")
    if not bucket or ":" in bucket:
        raise UsageError(f"bundle {url!r}: expected s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    if prefix:
        _safe_name(prefix)
    return bucket, prefix


def _strip_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


# -- fault classification --------------------------------------------------------

class TruncatedBody(Exception):
    """The body ended before the bytes the response promised (transient)."""


class ObjectChanged(Exception):
    """The object's ETag is not the one listed: it was replaced meanwhile."""


def _client_error_code(exc: BaseException) -> tuple[Optional[str], Optional[int]]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), status


def is_transient(exc: BaseException) -> bool:
    """True for faults worth another attempt; False for facts (missing, denied, corrupt)."""
    if isinstance(exc, (RegpatchError, ObjectChanged)):
        return False  # digest/size mismatch and our own errors are never retried
    if isinstance(exc, TruncatedBody):
        return True
    from botocore import exceptions as bce  # boto3: loaded only when an S3 bundle is read (start-up)

    if isinstance(exc, bce.ClientError):
        code, status = _client_error_code(exc)
        if code in NOT_FOUND_CODES | DENIED_CODES | CREDENTIAL_CODES:
            return False
        if code in TRANSIENT_CODES:
            return True
        return status is not None and (status >= 500 or status == 429)
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.ParamValidationError)):
        return False
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ReadTimeoutError,
                        bce.ConnectTimeoutError, bce.ResponseStreamingError, bce.IncompleteReadError,
                        bce.HTTPClientError)):
        return True
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error  # boto3: loaded with an S3 bundle (start-up)
        if isinstance(exc, Urllib3Error):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe_fault(exc: BaseException) -> str:
    """A short reason for logs: the error code and status, never a header or a key."""
    code, status = _client_error_code(exc)
    if code is not None:
        return f"{code} (HTTP {status})" if status else code
    if isinstance(exc, TruncatedBody):
        return f"truncated body: {exc}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# -- the source ----------------------------------------------------------------------

@dataclass
class FetchStat:
    """What fetching one blob cost: for logs and the flow's artifact."""

    name: str
    digest: str
    size: int
    fetched: int = 0        # bytes transferred from the object store by this run
    resumed: int = 0        # bytes already on disk from an earlier attempt or run
    from_cache: bool = False
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.fetched / 1e6 / max(self.seconds, 1e-6)


class S3Source(BundleSource):
    """A bundle under ``s3://bucket/prefix``."""

    resumable = True

    def __init__(self, url: str, options: Optional[S3Options] = None, *, client: Any = None):
        self.options = options or S3Options()
        self.options.check()
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.description = self.url
        self.endpoint = self.options.resolved_endpoint()
        self._secrets = self.options.credentials.secrets() if self.options.credentials else []
        self._client = client if client is not None else self._make_client()
        self._files: Optional[dict[str, int]] = None
        self._etags: dict[str, str] = {}
        self._only: Optional[str] = None   # for_object: list this one object only
        self.fetch_stats: dict[str, FetchStat] = {}
        self._lock = threading.Lock()
        self._per_name: dict[str, int] = {}
        self.bytes_fetched = 0   # every body byte received, all objects, this process

    @classmethod
    def for_object(cls, url: str, options: Optional[S3Options] = None, *, client: Any = None) -> "S3Source":
        """A source over the one object ``url`` names (an archive): its name is the last part."""
        bucket, key = parse_s3_url(url)
        if not key:
            raise UsageError(f"bundle {url!r}: expected s3://BUCKET/KEY of an archive")
        parent, _, name = key.rpartition("/")
        src = cls(f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}", options, client=client)
        src._only = name
        return src

    def __repr__(self) -> str:
        return f"S3Source({self.url!r}, endpoint={_strip_userinfo(self.endpoint or 'aws')!r})"

    def __getstate__(self):
        raise TypeError("S3Source holds a live client and is not serialisable")

    def _make_client(self):
        import boto3  # boto3: loaded only when an S3 bundle is read (start-up)
        from botocore.config import Config  # boto3: loaded only when an S3 bundle is read (start-up)

        opts = self.options
        session_kw = opts.credentials.session_kwargs() if opts.credentials else {}
        try:
            session = boto3.session.Session(**session_kw)
        except Exception as e:  # ProfileNotFound and friends: name nothing secret
            raise SourceError(f"cannot set up S3 credentials for {self.url}: {type(e).__name__}") from None
        cfg = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours, in _call
            connect_timeout=opts.connect_timeout, read_timeout=opts.read_timeout,
            max_pool_connections=max(10, opts.concurrency * 2),
            s3={"addressing_style": "path"} if self.endpoint else {},
        )
        kw: dict = {"config": cfg}
        if self.endpoint:
            kw["endpoint_url"] = self.endpoint
        if opts.region:
            kw["region_name"] = opts.region
        elif not session.region_name:
            kw["region_name"] = "us-east-1"
        return session.client("s3", **kw)

    # -- names ---------------------------------------------------------------
    def key(self, name: str) -> str:
        name = _safe_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "<hidden>")
        return text

    # -- the one place where S3 calls are retried ------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        opts = self.options

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s failed: %s; retry %d of %d in %.2fs", what,
                        self._redact(describe_fault(exc)) if exc else "?", state.attempt_number,
                        opts.retries, wait)

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(opts.retries + 1),
            wait=wait_random_exponential(multiplier=opts.wait_initial, max=opts.wait_max),
            before_sleep=before_sleep,
            sleep=interrupt.sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except RegpatchError:
            raise
        except Exception as e:
            raise self._translate(e, what) from (None if self._is_credential_error(e) else e)

    @staticmethod
    def _is_credential_error(e: BaseException) -> bool:
        from botocore import exceptions as bce  # boto3: loaded only when an S3 bundle is read (start-up)

        code, _ = _client_error_code(e)
        return code in CREDENTIAL_CODES or isinstance(e, (bce.NoCredentialsError,
                                                          bce.PartialCredentialsError))

    def _translate(self, e: BaseException, what: str) -> SourceError:
        from botocore import exceptions as bce  # boto3: loaded only when an S3 bundle is read (start-up)

        code, status = _client_error_code(e)
        where = f" at {_strip_userinfo(self.endpoint)}" if self.endpoint else ""
        if code == "NoSuchBucket":
            return SourceError(f"{what}: bucket {self.bucket!r} does not exist{where}; check the "
                               f"bundle URL (s3://BUCKET/PREFIX) and {opt.s3_endpoint_url}")
        if code in ("NoSuchKey", "404", "NotFound"):
            return SourceError(f"{what}: no such object (NoSuchKey){where}; the bundle changed while "
                               "it was read or is incomplete: upload it again")
        if code in DENIED_CODES:
            return SourceError(f"{what}: access denied ({code}){where}; the credentials lack "
                               "s3:ListBucket / s3:GetObject on this bucket")
        if code in CREDENTIAL_CODES:
            return SourceError(f"{what}: the object store refused the credentials ({code}){where}; "
                               "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile or "
                               f"{opt.aws_credentials_block}")
        if isinstance(e, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return SourceError(f"{what}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                               f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use {opt.aws_credentials_block}")
        if isinstance(e, ObjectChanged) or code in ("PreconditionFailed", "412"):
            return SourceError(f"{what}: the object was replaced while it was read (ETag changed); "
                               "run the same command again to fetch the new object from the start")
        reason = self._redact(describe_fault(e))
        if is_transient(e):
            return SourceError(f"{what} failed after {self.options.retries + 1} attempts: {reason}; "
                               "bytes already fetched are kept: run the same command again to resume")
        return SourceError(f"{what} failed: {reason}")

    # -- listing ---------------------------------------------------------------
    def list(self) -> dict[str, int]:
        if self._files is None:
            files: dict[str, int] = {}
            base = f"{self.prefix}/" if self.prefix else ""
            token: Optional[str] = None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": base + (self._only or "")}
                if token:
                    kw["ContinuationToken"] = token
                page = self._call(f"listing {self.url}/", functools.partial(self._client.list_objects_v2, **kw))
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # "folder" markers
                    rel = key[len(base):]
                    if self._only is not None and rel != self._only:
                        continue
                    files[rel] = int(obj["Size"])
                    self._etags[rel] = obj.get("ETag", "")
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
            if not files and self._only is not None:
                raise SourceError(f"{self.url}/{self._only} does not exist; check the bucket and key")
            if not files:
                raise SourceError(f"{self.url}/ holds no object; check the bucket and prefix "
                                  f"(the prefix must be the folder that holds the bundle)")
            self._files = files
        return dict(self._files)

    def size(self, name: str) -> int:
        files = self.list()
        if name not in files:
            raise SourceError(f"{self.describe(name)} is not in the bundle listing")
        return files[name]

    def etag(self, name: str) -> str:
        self.list()
        return self._etags.get(name, "")

    # -- reading ---------------------------------------------------------------
    def open(self, name: str, start: int = 0, end: Optional[int] = None) -> BinaryIO:
        """The object from byte ``start`` up to ``end`` (exclusive; None: its end)."""
        return S3ObjectReader(self, name, start=start, end=end)  # type: ignore[return-value]

    def read_at(self, name: str, offset: int, n: int) -> bytes:
        """Bytes offset..offset+n-1 of an object (fewer at its end): one ranged GET, retried."""
        size = self.size(name)
        last = min(offset + n, size) - 1
        if n <= 0 or offset >= size:
            return b""
        etag = self.etag(name)

        def get() -> bytes:
            body = self.get_range(name, offset, last, etag)
            try:
                data = body.read()
            finally:
                body.close()
            self._count_name(name, len(data))
            if len(data) != last - offset + 1:
                raise TruncatedBody(f"{len(data)} of {last - offset + 1} bytes of the range")
            return data

        return self._call(f"GET {self.describe(name)} bytes {offset:,}-{last:,}", get)

    def read_bytes(self, name: str, limit: int) -> bytes:
        """Small files (manifests, configs, sidecars): one GET, into memory."""
        size = self.size(name)
        if size > limit:
            raise SourceError(f"{self.describe(name)} is larger than {limit} bytes; "
                              "it cannot be a manifest or config")
        key = self.key(name)

        def get() -> bytes:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            data = resp["Body"].read()
            self._count_name(name, len(data))
            if len(data) != size:
                raise TruncatedBody(f"{len(data)} of {size} bytes")
            return data

        return self._call(f"GET {self.describe(name)}", get)

    def get_range(self, name: str, first: int, last: Optional[int], etag: str):
        """One GET of bytes first..last (None: to the end), If-Match etag. Returns the body."""
        kw = {"Bucket": self.bucket, "Key": self.key(name),
              "Range": f"bytes={first}-{'' if last is None else last}"}
        if etag:
            kw["IfMatch"] = etag
        resp = self._client.get_object(**kw)
        got = resp.get("ETag", "")
        if etag and got and got.strip('"') != etag.strip('"'):
            resp["Body"].close()
            raise ObjectChanged(f"ETag {got} instead of {etag}")
        return resp["Body"]

    # -- staging a blob (resumable, cached) ----------------------------------------
    def stage_blob(self, store, digest: Digest, size: int, name: str, *, what: str,
                   progress: Optional[Callable[[int], None]] = None) -> Path:
        """Fetch one blob into the store's staging folder, hashed as it arrives.

        From the cache when it holds the digest; otherwise from S3, resuming a
        partial download of the same object (same ETag) left by an earlier
        attempt or run.
        """
        stat = FetchStat(name, str(digest), size)
        t0 = time.monotonic()
        cache = self._cache_path(digest)
        staged = None
        if cache is not None and cache.is_file():
            try:
                staged = store.stage_blob(digest, size, lambda: open(cache, "rb", buffering=0),
                                          what=f"cached blob {cache}", progress=progress)
                stat.from_cache = True
                log.info("%s: taken from the cache %s", what, cache)
            except (DigestMismatch, SizeMismatch) as e:
                log.warning("cache entry %s is corrupt (%s); removed, fetching from S3", cache, e)
                _unlink(cache)
        if staged is None:
            before = self._fetched_for(name)
            resumed = store.stage_blob_resumable(
                digest, size, lambda offset: self.open(name, start=offset), what=what,
                validator=f"{self.url}/{name} etag={self.etag(name)} size={size}", progress=progress)
            stat.resumed = resumed
            stat.fetched = self._fetched_for(name) - before
            staged = store.layout.staged_blob(digest)
            if cache is not None:
                self._put_cache(staged, cache)
        stat.seconds = time.monotonic() - t0
        self.fetch_stats[str(digest)] = stat
        if not stat.from_cache:
            log.info("fetched %s: %s B in %.2fs (%.1f MB/s)%s", what, f"{stat.fetched:,}", stat.seconds,
                     stat.mb_per_s, f", resumed after {stat.resumed:,} B already on disk"
                     if stat.resumed else "")
        return staged

    def _fetched_for(self, name: str) -> int:
        with self._lock:
            return self._per_name.get(name, 0)

    def _count_name(self, name: str, n: int) -> None:
        with self._lock:
            self._per_name[name] = self._per_name.get(name, 0) + n
            self.bytes_fetched += n

    def _cache_path(self, digest: Digest) -> Optional[Path]:
        if not self.options.cache_dir:
            return None
        return Path(self.options.cache_dir) / digest.algorithm / digest.hex

    @staticmethod
    def _put_cache(staged: Path, cache: Path) -> None:
        """Keep a copy by digest (best effort: a full cache never fails a patch)."""
        if cache.exists():
            return
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with open(staged, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            platform.replace(tmp, cache)
            log.info("cached %s", cache)
        except (OSError, RegpatchError) as e:  # (RegpatchError: FileInUse, Windows)
            log.warning("could not write the cache entry %s: %s", cache, e)
            _unlink(tmp)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):  # absent: its folder is missing or is a file
        pass


class S3ObjectReader(io.RawIOBase):
    """A read-only stream over one object, from ``start`` to its end.

    Small remainders are one streaming GET; on a transient fault the GET is
    re-issued from the current position (``Range``), through ``S3Source._call``.
    Remainders larger than two parts are fetched as ranged GETs by a few
    threads, each part retried on its own, and returned in order.
    """

    def __init__(self, source: S3Source, name: str, *, start: int = 0, end: Optional[int] = None):
        super().__init__()
        self.source = source
        self.name = name
        self.size = source.size(name) if end is None else min(end, source.size(name))
        self._last = None if end is None else self.size - 1   # open-ended GETs unless bounded
        self.etag = source.etag(name)
        if start > self.size:
            raise SourceError(f"cannot resume {source.describe(name)} at byte {start}: "
                              f"the object has {self.size} bytes")
        self.pos = start
        self._body: Optional[StreamingBody] = None  # the open GET's body (sequential reads)
        opts = source.options
        self._parallel = opts.concurrency > 1 and self.size - start > 2 * opts.part_size
        self._pool: Optional[ThreadPoolExecutor] = None
        self._parts: deque[Future] = deque()
        self._next_part = start
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.size:
            return 0
        if self._parallel:
            return self._readinto_parallel(b)
        what = f"GET {self.source.describe(self.name)} (from byte {self.pos:,})"
        n = self.source._call(what, lambda: self._read_some(b))
        self.pos += n
        return n

    # sequential: one GET, re-issued from pos after a fault
    def _read_some(self, b) -> int:
        try:
            if self._body is None:
                self._body = self.source.get_range(self.name, self.pos, self._last, self.etag)
            data = self._read1(min(len(b), READ_SIZE))
            if not data:
                raise TruncatedBody(f"the body ended at byte {self.pos:,} of {self.size:,}")
        except BaseException:
            self._drop_body()
            raise
        n = len(data)
        b[:n] = data
        self.source._count_name(self.name, n)
        return n

    def _read1(self, n: int) -> bytes:
        """What has arrived, up to n bytes: a body cut short loses no byte already received.

        (StreamingBody.read(n) waits for n bytes and drops them if the connection
        breaks meanwhile; urllib3's read1 returns what is there. A short body is
        caught by the caller: an empty read before the end is a TruncatedBody.)
        """
        assert self._body is not None  # _read_some opened it
        raw = getattr(self._body, "_raw_stream", None)
        if raw is not None and hasattr(raw, "read1"):
            return raw.read1(n)
        return self._body.read(n)

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:
                pass

    # parallel: ranged GETs of part_size, in order
    def _readinto_parallel(self, b) -> int:
        if not len(self._buf):
            self._fill()
            part = self._parts.popleft()
            try:
                self._buf = memoryview(part.result())
            except BaseException:
                self._shutdown()
                raise
            self._fill()
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.pos += n
        return n

    def _fill(self) -> None:
        opts = self.source.options
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=opts.concurrency,
                                            thread_name_prefix="regpatch-s3")
        while len(self._parts) < opts.concurrency + 1 and self._next_part < self.size:
            first = self._next_part
            last = min(first + opts.part_size, self.size) - 1
            self._parts.append(self._pool.submit(contextvars.copy_context().run, self._get_part, first, last))
            self._next_part = last + 1

    def _get_part(self, first: int, last: int) -> bytes:
        what = f"GET {self.source.describe(self.name)} bytes {first:,}-{last:,}"

        def attempt() -> bytes:
            body = self.source.get_range(self.name, first, last, self.etag)
            try:
                chunks = []
                want = last - first + 1
                got = 0
                while got < want:
                    data = body.read(min(CHUNK, want - got))
                    if not data:
                        raise TruncatedBody(f"{got:,} of {want:,} bytes of the range")
                    chunks.append(data)
                    got += len(data)
                    self.source._count_name(self.name, len(data))
            finally:
                body.close()
            return b"".join(chunks)

        return self.source._call(what, attempt)

    def _shutdown(self) -> None:
        for f in self._parts:
            f.cancel()
        self._parts.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if not self.closed:
            self._drop_body()
            self._shutdown()
        super().close()
