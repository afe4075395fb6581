"""s3:// bundles through the real S3 protocol: moto's server in a thread on 127.0.0.1,
boto3 with endpoint_url, and tests/support/faultproxy.py (a real HTTP proxy) to inject
throttling, resets, truncated bodies and S3 error answers. Storages are real
folders; no registry process, no Prefect.

boto3 clients cost about half a second each on this machine, so the module shares
one environment, one proxy and one client per endpoint (each made by ``S3Source``
itself); the engine and CLI tests build their own, as a run does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import secrets

import boto3
import pytest
from conftest import REPO, TAG, tree_hash
from support.faultproxy import FaultProxy
from support.util import error_line, moto_server

from regpatch import engine
from regpatch.bundle.open import open_source
from regpatch.bundle.s3 import (
    S3Credentials,
    S3Options,
    S3Source,
    TruncatedBody,
    _strip_userinfo,
    describe_fault,
    is_transient,
    parse_s3_url,
)
from regpatch.cli import main
from regpatch.demo.images import write_staged_bundle
from regpatch.demo.loopback import free_port
from regpatch.errors import DigestMismatch, SourceError, UnsafePath, UsageError
from regpatch.storage.store import RegistryStore

FAST = dict(wait_initial=0.01, wait_max=0.02)
FAST_CLI = ["--s3-wait-initial", "0.01", "--s3-wait-max", "0.02"]


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory):
    """Recognisable credentials, only in the environment (boto3's default chain)."""
    creds = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
             "AWS_SECRET_ACCESS_KEY": "Secret" + secrets.token_hex(16)}
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in creds.items():
            mp.setenv(k, v)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        yield creds


@pytest.fixture(scope="module")
def moto_url(aws_env):
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def s3(moto_url):
    """The test's own client, straight to moto: uploads and changes behind regpatch's back."""
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture(scope="module")
def shared_proxy(moto_url):
    with FaultProxy(moto_url) as p:
        yield p


@pytest.fixture
def proxy(shared_proxy):
    shared_proxy.reset()
    yield shared_proxy
    shared_proxy.reset()


@pytest.fixture(scope="module")
def clients(moto_url, shared_proxy):
    """One client per endpoint, each made by S3Source exactly as a run makes it."""
    return {"direct": S3Source("s3://b/p", S3Options(endpoint_url=moto_url))._client,
            "proxy": S3Source("s3://b/p", S3Options(endpoint_url=shared_proxy.url))._client}


def source(url: str, clients, via: str = "proxy", **options) -> S3Source:
    endpoint = clients[via].meta.endpoint_url
    return S3Source(url, S3Options(endpoint_url=endpoint, **{**FAST, **options}), client=clients[via])


def upload(s3, folder, prefix: str) -> str:
    bucket = "b-" + secrets.token_hex(4)
    s3.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="module")
def bundle_url(s3, scenario_files):
    """The month's patch (staged format), uploaded once; tests only read it."""
    return upload(s3, scenario_files["staged"], "patches/2026-11")


def storage(tmp_path, name: str = "storage") -> RegistryStore:
    root = tmp_path / name
    (root / "docker/registry/v2").mkdir(parents=True)
    return RegistryStore(root)


def assert_no_secret(aws_env, *texts):
    for text in texts:
        for value in aws_env.values():
            assert value not in text


# -- the whole patch from S3 ---------------------------------------------------------

def test_cli_patches_from_s3_and_reports_what_it_fetched(site, bundle_url, proxy, aws_env, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="regpatch"):
        code = main(["patch", bundle_url, "--storage", str(site.root), "--repository", REPO, "--tag", TAG,
                     "--s3-endpoint-url", proxy.url, *FAST_CLI])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"patched {REPO}:{TAG}: {site.old} -> {site.new}" in out
    assert site.current() == str(site.new).encode()
    new = site.scenario["new"]
    for name, layer in zip(("base.tar.gz", "delta.tar.gz"), new.layers):
        assert len(proxy.gets(name)) == 1 and proxy.bytes_served(name) == layer.size
        assert site.layout.blob_data(layer.digest).read_bytes() == layer.path.read_bytes()
    assert "fetched bundle file s3://" in caplog.text and "MB/s" in caplog.text
    report = sorted((site.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert "## Fetched from S3" in report and "`base.tar.gz`" in report
    assert f"| {new.layers[0].size:,} |" in report
    assert_no_secret(aws_env, out, err, caplog.text, report)
    assert not list(site.layout.staging.glob("*.partial*"))


def test_a_missing_object_fails_the_patch_at_once_and_leaves_the_storage_alone(site, bundle_url, proxy, capsys):
    proxy.inject("error", count=100, status=404, code="NoSuchKey", match=proxy.object_get("delta.tar.gz"))
    before = tree_hash(site.root / "docker")
    rc = main(["patch", bundle_url, "--storage", str(site.root), "--repository", REPO, "--tag", TAG,
               "--s3-endpoint-url", proxy.url, *FAST_CLI])
    out, err = capsys.readouterr()
    assert rc == 3, err
    line = error_line(err)
    assert "delta.tar.gz" in line and f"no such object (NoSuchKey) at {proxy.url}" in line
    assert len([r for r in proxy.requests if r.status == 404]) == 1  # a fact: not retried
    assert tree_hash(site.root / "docker") == before and site.current() == str(site.old).encode()


def test_dry_run_of_a_bundle_without_sidecars_hashes_it_from_s3_and_writes_nothing(site, s3, tmp_path):
    """Without .digest sidecars each layer is hashed (streamed from S3) to find its descriptor."""
    bundle = write_staged_bundle(tmp_path / "nosidecars", site.scenario["new"], sidecars=False)
    url = upload(s3, bundle, "p")
    before = tree_hash(site.root)
    result = engine.patch(site.request(url, s3=S3Options(endpoint_url=s3.meta.endpoint_url), dry_run=True))
    assert result.status == "dry-run" and len(result.blobs_copied) == 3
    assert "from base.tar.gz" in result.plan_text and "from delta.tar.gz" in result.plan_text
    assert tree_hash(site.root) == before


# -- transient faults, resume, cache ---------------------------------------------------

def test_transient_faults_are_retried_and_logged_without_secrets(scenario_files, bundle_url, proxy, clients,
                                                                 aws_env, caplog):
    base = scenario_files["new"].layers[0]
    # a body cut short is seen as an early end or as urllib3's IncompleteRead, depending on timing
    cases = [("slowdown", proxy.listing(), r"SlowDown \(HTTP 503\)"),
             ("reset", proxy.object_get("base.tar.gz"), "Connection"),
             ("truncate", proxy.object_get("base.tar.gz"), "truncated body|IncompleteRead")]
    for kind, match, reason in cases:
        proxy.reset()
        caplog.clear()
        proxy.inject(kind, count=2, match=match)
        src = source(bundle_url, clients)
        with caplog.at_level(logging.WARNING, logger="regpatch.s3"):
            assert src.size("base.tar.gz") == base.size
            with src.open("base.tar.gz") as f:
                assert hashlib.sha256(f.read()).hexdigest() == base.digest.hex
        retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        assert len(proxy.faults()) == 2 and len(retries) == 2, (kind, retries)
        assert re.search(reason, retries[0]) and "retry 1 of 5" in retries[0], retries
        assert_no_secret(aws_env, caplog.text)


def test_a_fault_outlasting_the_retries_keeps_the_bytes_and_the_next_run_resumes(scenario_files, bundle_url, proxy,
                                                                                clients, tmp_path, caplog):
    base = scenario_files["new"].layers[0]
    store = storage(tmp_path)
    partial = store.partial_path(base.digest)
    proxy.inject("truncate", count=1, match=proxy.object_get("base.tar.gz"))
    with pytest.raises(SourceError) as e:
        source(bundle_url, clients, retries=0).stage_blob(store, base.digest, base.size, "base.tar.gz", what="base")
    assert re.search("failed after 1 attempts: (truncated body|ProtocolError: .*IncompleteRead)", str(e.value))
    assert "bytes already fetched are kept: run the same command again to resume" in str(e.value)
    on_disk = partial.stat().st_size
    assert 0 < on_disk <= base.size // 2  # what arrived before the cut is on disk

    proxy.reset()
    src = source(bundle_url, clients)
    progress = []
    with caplog.at_level(logging.INFO, logger="regpatch.s3"):
        staged = src.stage_blob(store, base.digest, base.size, "base.tar.gz", what="base", progress=progress.append)
    assert staged.read_bytes() == base.path.read_bytes() and not partial.exists()
    assert progress[0] == on_disk and sum(progress) == base.size  # the bar starts at the bytes on disk
    assert [r.range for r in proxy.gets("base.tar.gz")] == [f"bytes={on_disk}-"]
    assert proxy.bytes_served("base.tar.gz") == base.size - on_disk
    stat = src.fetch_stats[str(base.digest)]
    assert (stat.resumed, stat.fetched, stat.from_cache) == (on_disk, base.size - on_disk, False)
    assert f"resumed after {on_disk:,} B already on disk" in caplog.text


def test_a_partial_from_another_object_version_restarts_from_zero(scenario_files, bundle_url, proxy, clients,
                                                                  tmp_path):
    base = scenario_files["new"].layers[0]
    store = storage(tmp_path)
    partial = store.partial_path(base.digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"x" * 1000)
    partial.with_name(partial.name + ".json").write_text('{"validator": "another etag", "size": 1}')
    staged = source(bundle_url, clients).stage_blob(store, base.digest, base.size, "base.tar.gz", what="base")
    assert [r.range for r in proxy.gets("base.tar.gz")] == ["bytes=0-"]
    assert staged.read_bytes() == base.path.read_bytes()


def test_a_complete_partial_is_verified_without_fetching_and_a_corrupt_one_is_dropped(scenario_files, bundle_url,
                                                                                     proxy, clients, tmp_path):
    base = scenario_files["new"].layers[0]
    store = storage(tmp_path)
    src = source(bundle_url, clients)
    validator = f"{src.url}/base.tar.gz etag={src.etag('base.tar.gz')} size={base.size}"
    partial = store.partial_path(base.digest)
    note = partial.with_name(partial.name + ".json")
    partial.parent.mkdir(parents=True, exist_ok=True)

    # every byte already on disk (a run killed after the last chunk): hashed, not fetched
    partial.write_bytes(base.path.read_bytes())
    note.write_text(json.dumps({"validator": validator, "size": base.size}))
    staged = src.stage_blob(store, base.digest, base.size, "base.tar.gz", what="base")
    assert staged.read_bytes() == base.path.read_bytes() and proxy.gets("base.tar.gz") == []
    assert src.fetch_stats[str(base.digest)].resumed == base.size

    # the same length of other bytes: a digest mismatch, and the partial is removed
    staged.unlink()
    bad = bytearray(base.path.read_bytes())
    bad[10] ^= 0xFF
    partial.write_bytes(bytes(bad))
    note.write_text(json.dumps({"validator": validator, "size": base.size}))
    with pytest.raises(DigestMismatch):
        src.stage_blob(store, base.digest, base.size, "base.tar.gz", what="base")
    assert not partial.exists() and not note.exists()


def test_cache_dir_serves_later_stores_and_a_corrupt_entry_is_fetched_again(scenario_files, bundle_url, proxy,
                                                                            clients, tmp_path, caplog):
    base = scenario_files["new"].layers[0]
    cache = tmp_path / "cache"
    entry = cache / "sha256" / base.digest.hex

    first = source(bundle_url, clients, cache_dir=str(cache))
    first.stage_blob(storage(tmp_path, "a"), base.digest, base.size, "base.tar.gz", what="base")
    assert entry.read_bytes() == base.path.read_bytes()
    assert len(proxy.gets("base.tar.gz")) == 1

    proxy.reset()
    second = source(bundle_url, clients, cache_dir=str(cache))
    staged = second.stage_blob(storage(tmp_path, "b"), base.digest, base.size, "base.tar.gz", what="base")
    assert staged.read_bytes() == base.path.read_bytes()
    assert proxy.gets("base.tar.gz") == [] and second.fetch_stats[str(base.digest)].from_cache

    entry.write_bytes(b"not the layer")
    third = source(bundle_url, clients, cache_dir=str(cache))
    with caplog.at_level(logging.WARNING, logger="regpatch.s3"):
        staged = third.stage_blob(storage(tmp_path, "c"), base.digest, base.size, "base.tar.gz", what="base")
    assert "is corrupt" in caplog.text and "fetching from S3" in caplog.text
    assert len(proxy.gets("base.tar.gz")) == 1
    assert staged.read_bytes() == base.path.read_bytes()
    assert entry.read_bytes() == base.path.read_bytes()  # written again, right this time


def test_a_cache_that_cannot_be_written_never_fails_the_fetch(scenario_files, bundle_url, clients, tmp_path, caplog):
    base = scenario_files["new"].layers[0]
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("a file where the cache folder should be")
    src = source(bundle_url, clients, cache_dir=str(blocker))
    with caplog.at_level(logging.WARNING, logger="regpatch.s3"):
        staged = src.stage_blob(storage(tmp_path), base.digest, base.size, "base.tar.gz", what="base")
    assert staged.read_bytes() == base.path.read_bytes()
    assert "could not write the cache entry" in caplog.text
    assert blocker.read_text().startswith("a file")


def test_large_objects_come_as_parallel_ranged_gets_in_order_despite_faults(s3, proxy, clients, tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "big.bin").write_bytes(data)
    url = upload(s3, tmp_path / "b", "x")
    proxy.inject("reset", count=1, match=proxy.object_get("big.bin"))
    proxy.inject("truncate", count=1, match=proxy.object_get("big.bin"))
    src = source(url, clients, part_size=64 << 10, concurrency=3)
    with src.open("big.bin") as f:
        got = f.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    gets = proxy.gets("big.bin")
    assert len(gets) == 16 + 2 and all(r.range for r in gets)
    assert src.bytes_fetched >= len(data)
    # resuming near the end reads only the rest
    with src.open("big.bin", start=(1 << 20) - 1000) as f:
        assert f.read() == data[-1000:]
    with pytest.raises(SourceError, match="cannot resume .* at byte"):
        src.open("big.bin", start=(1 << 20) + 1)


def test_a_part_failing_on_every_attempt_stops_the_parallel_read(s3, proxy, clients, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "big.bin").write_bytes(os.urandom(512 << 10))
    url = upload(s3, tmp_path / "b", "x")
    proxy.inject("error", count=100, status=500, code="InternalError", match=proxy.object_get("big.bin"))
    src = source(url, clients, part_size=64 << 10, concurrency=2, retries=1)
    with pytest.raises(SourceError, match=r"failed after 2 attempts: InternalError \(HTTP 500\)"):
        with src.open("big.bin") as f:
            f.read()


# -- facts, not faults: never retried -------------------------------------------------

def test_refusals_of_the_listing_fail_at_once_with_what_to_do(bundle_url, proxy, clients):
    for status, code, message in ((403, "AccessDenied", f"access denied (AccessDenied) at {proxy.url}; the "
                                                        "credentials lack s3:ListBucket"),
                                  (403, "InvalidAccessKeyId", "the object store refused the credentials "
                                                              "(InvalidAccessKeyId)"),
                                  (400, "InvalidArgument", "failed: InvalidArgument (HTTP 400)")):
        proxy.reset()
        proxy.inject("error", count=100, status=status, code=code, match=proxy.listing())
        with pytest.raises(SourceError) as e:
            source(bundle_url, clients).list()
        assert message in str(e.value) and f"listing {bundle_url}/" in str(e.value)
        assert len(proxy.requests) == 1


def test_a_missing_bucket_or_an_empty_prefix_is_named(s3, clients):
    with pytest.raises(SourceError, match="bucket 'no-such-bucket-x' does not exist at http://127.0.0.1"):
        source("s3://no-such-bucket-x/p", clients, via="direct").list()
    s3.create_bucket(Bucket="empty-bucket")
    with pytest.raises(SourceError, match="holds no object; check the bucket and prefix"):
        source("s3://empty-bucket/nothing/here", clients, via="direct").list()


def test_an_object_replaced_after_the_listing_is_refused(s3, clients, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.bin").write_bytes(b"version one " * 100)
    url = upload(s3, tmp_path / "b", "x")
    src = source(url, clients, via="direct")
    assert src.size("f.bin") == 1200
    bucket, prefix = parse_s3_url(url)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/f.bin", Body=b"version two " * 100)
    with pytest.raises(SourceError, match="replaced while it was read"):
        with src.open("f.bin") as f:
            f.read()


def test_small_files_are_read_whole_and_bounded(s3, clients, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m.json").write_bytes(b"{}" * 100)
    (tmp_path / "b" / "dir").mkdir()
    (tmp_path / "b" / "dir" / "x").write_bytes(b"x")
    url = upload(s3, tmp_path / "b", "x")
    bucket, _ = parse_s3_url(url)
    s3.put_object(Bucket=bucket, Key="x/folder-marker/", Body=b"")
    src = source(url, clients, via="direct")
    assert src.list() == {"m.json": 200, "dir/x": 1}  # "folder" markers are not files
    assert src.read_bytes("m.json", 1000) == b"{}" * 100
    assert src.describe("m.json") == f"{url}/m.json"
    with pytest.raises(SourceError, match="larger than 100 bytes"):
        src.read_bytes("m.json", 100)
    with pytest.raises(SourceError, match="not in the bundle listing"):
        src.size("absent.json")
    with pytest.raises(UnsafePath):
        src.key("../escape")


# -- credentials ---------------------------------------------------------------------

def test_no_credentials_anywhere_is_said_plainly(moto_url, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    src = open_source("s3://any-bucket/p", s3=S3Options(endpoint_url=moto_url, **FAST))
    with pytest.raises(SourceError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID") as e:
        src.list()
    assert e.value.__cause__ is None  # the botocore exception is not chained into the report


def test_explicit_credentials_work_and_never_show(s3, moto_url, tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_bytes(b"data")
    url = upload(s3, tmp_path / "b", "x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = S3Credentials("AKIAEXPLICIT0001", "explicit-secret-value", "explicit-session-token")
    assert creds.session_kwargs() == {"aws_access_key_id": "AKIAEXPLICIT0001",
                                      "aws_secret_access_key": "explicit-secret-value",
                                      "aws_session_token": "explicit-session-token"}
    src = S3Source(url, S3Options(endpoint_url=moto_url, region="eu-west-1", credentials=creds, **FAST))
    assert src.read_bytes("f", 10) == b"data"
    for text in (repr(creds), str(creds), repr(src.options), repr(src)):
        for secret in ("AKIAEXPLICIT0001", "explicit-secret-value", "explicit-session-token"):
            assert secret not in text
    assert src._redact("key explicit-secret-value in a message") == "key <hidden> in a message"
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    with pytest.raises(TypeError):
        pickle.dumps(src)


def test_an_unknown_profile_is_a_source_error_naming_nothing_secret():
    with pytest.raises(SourceError, match="cannot set up S3 credentials for s3://b/p: ProfileNotFound"):
        S3Source("s3://b/p", S3Options(credentials=S3Credentials(profile_name="no-such-profile")))
    assert S3Credentials(profile_name="site").session_kwargs() == {"profile_name": "site"}


def test_an_endpoint_with_nothing_listening_is_retried_then_reported(aws_env):
    url = f"http://127.0.0.1:{free_port()}"
    src = S3Source("s3://bucket/p", S3Options(endpoint_url=url, retries=1, connect_timeout=2, **FAST))
    with pytest.raises(SourceError, match=r"listing s3://bucket/p/ failed after 2 attempts: "
                                          r"EndpointConnectionError.*run the same command again"):
        src.list()


# -- options, URLs, classification -----------------------------------------------------

def test_s3_urls_and_options_are_checked_before_any_request(monkeypatch, clients):
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("http://bucket/p", "s3://", "s3://user@bucket/p", "s3://bucket:1/p"):
        with pytest.raises(UsageError):
            parse_s3_url(bad)
    with pytest.raises(UnsafePath):
        parse_s3_url("s3://bucket/a/../b")
    for opts, message in ((S3Options(retries=-1), "--s3-retries must be 0 or more"),
                          (S3Options(wait_max=-1), "waits must be 0 or more"),
                          (S3Options(part_size=1024), "at least 64 KiB"),
                          (S3Options(concurrency=0), "concurrency must be at least 1"),
                          (S3Options(endpoint_url="ftp://bob:pw@host"), "'ftp://host' must start with http")):
        with pytest.raises(UsageError, match=message) as e:
            opts.check()
        assert "pw" not in str(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    assert S3Options().resolved_endpoint() == "http://from-env:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:9000")
    assert S3Options().resolved_endpoint() == "http://s3-specific:9000"
    assert S3Options(endpoint_url="http://given:1").resolved_endpoint() == "http://given:1"
    assert _strip_userinfo("http://u:p@h:9000/x") == "http://h:9000/x"
    assert _strip_userinfo("http://[::1") == "<invalid URL>"
    src = S3Source("s3://b/p/", S3Options(endpoint_url="http://u:p@127.0.0.1:1"), client=clients["direct"])
    assert repr(src) == "S3Source('s3://b/p', endpoint='http://127.0.0.1:1')"
    assert S3Source("s3://b", client=clients["direct"]).key("x/y") == "x/y"


def test_faults_are_told_from_facts():
    from botocore import exceptions as bce
    from urllib3.exceptions import ProtocolError

    def client_error(code, status=None):
        meta = {"HTTPStatusCode": status} if status else {}
        return bce.ClientError({"Error": {"Code": code}, "ResponseMetadata": meta}, "GetObject")

    transient = [client_error("SlowDown", 503), client_error("Whatever", 502), client_error("Other", 429),
                 TruncatedBody("1 of 2"), bce.EndpointConnectionError(endpoint_url="http://x"),
                 bce.ReadTimeoutError(endpoint_url="http://x"), ProtocolError("reset"),
                 ConnectionResetError(), TimeoutError()]
    facts = [client_error("NoSuchKey", 404), client_error("AccessDenied", 403),
             client_error("ExpiredToken", 400), client_error("BadDigest", 400), client_error("Nothing"),
             bce.NoCredentialsError(), bce.ParamValidationError(report="bad"), SourceError("ours"),
             DigestMismatch("f", "a", "b", 1), ValueError("a bug")]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in facts] == [False] * len(facts)
    assert describe_fault(client_error("SlowDown", 503)) == "SlowDown (HTTP 503)"
    assert describe_fault(client_error("SlowDown")) == "SlowDown"
    assert describe_fault(TruncatedBody("10 of 20 bytes")) == "truncated body: 10 of 20 bytes"
    assert describe_fault(ConnectionResetError()) == "ConnectionResetError"
    assert describe_fault(OSError("first line\nsecond line")) == "OSError: first line"
