"""S3 bundles against a real S3 endpoint: moto's server on loopback, behind a
fault-injecting proxy (tests/support/faultproxy.py), patched into a real docker-registry
and pulled back with skopeo.

boto3 -> FaultProxy (127.0.0.1) -> moto server (127.0.0.1); the test uploads
bundles straight to moto and counts, at the proxy, what regpatch fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from support.faultproxy import FaultProxy
from support.util import error_line, moto_server, skopeo_inspect_digest, skopeo_pull, tree_hash

from regpatch.bundle.s3 import S3Options, S3Source, is_transient
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import (
    make_image,
    make_layer,
    push_with_skopeo,
    scenario_servercore,
    write_oci_layout,
    write_staged_bundle,
)
from regpatch.demo.loopback import LocalRegistry
from regpatch.errors import SourceError
from regpatch.storage.store import RegistryStore

REPO, TAG = "servercore", "ltsc2019"
FAST_RETRIES = ["--s3-wait-initial", "0.01", "--s3-wait-max", "0.05"]


# -- servers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture
def proxy(moto_url):
    with FaultProxy(moto_url) as p:
        yield p


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Credentials only in the environment (boto3's default chain); recognisable values
    so that the tests can assert they never show up anywhere."""
    creds = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
             "AWS_SECRET_ACCESS_KEY": "Secret" + secrets.token_hex(16)}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return creds


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)

    def retries(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == "regpatch.s3" and "retry" in r.getMessage()]


@pytest.fixture
def logs():
    """Every record of the regpatch.* loggers (Prefect's logging setup stops them at 'regpatch')."""
    handler = _Records()
    core = logging.getLogger("regpatch")
    core.addHandler(handler)
    old = core.level
    core.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        core.removeHandler(handler)
        core.setLevel(old)


@pytest.fixture
def s3(moto_url, aws_env):
    """A client straight to moto (no proxy): the test's own uploads."""
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


def upload(s3, folder: Path, prefix: str) -> str:
    bucket = "bundles-" + secrets.token_hex(4)
    s3.create_bucket(Bucket=bucket)
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def scenario(tmp_path, registry):
    """Old servercore:ltsc2019 in the registry; the monthly patch (staged format) ready to upload."""
    s = scenario_servercore(tmp_path / "sample", base_size=1 << 20, delta_size=256 << 10)
    push_with_skopeo(s["old_layout"], s["ref"], registry.host, REPO, TAG)
    return s


def patch(capsys, registry, bundle, *extra) -> tuple[int, str, str]:
    code = regpatch_main(["patch", str(bundle), "--storage", str(registry.root), "--registry-url",
                          registry.url, "--repository", REPO, "--tag", TAG, *FAST_RETRIES,
                          *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_secret(aws_env, *texts: str) -> None:
    for text in texts:
        for value in aws_env.values():
            assert value not in text


def storage_hash(registry) -> str:
    return tree_hash(registry.root / "docker")


# -- happy path, transient faults ---------------------------------------------------

def test_s3_bundle_patches_and_pulls(capsys, logs, registry, scenario, s3, proxy, aws_env, tmp_path):
    url = upload(s3, scenario["staged"], "patches/2026-11")
    new = scenario["new"]
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url,
                           "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}")
    assert code == 0, err
    assert f"-> {new.manifest_digest}" in out and "verified:" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(new.manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    # each layer fetched exactly once, every byte once
    for name, layer in zip(("base.tar.gz", "delta.tar.gz"), new.layers):
        assert len(proxy.gets(name)) == 1
        assert proxy.bytes_served(name) == layer.size
    assert "fetched bundle file s3://" in logs.text and "MB/s" in logs.text
    assert_no_secret(aws_env, out, err, logs.text)
    staging = RegistryStore(registry.root).layout.staging
    assert not list(staging.glob("*.partial*"))
    # the run's report lists bytes and throughput per fetched blob
    markdown = sorted((registry.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert "## Fetched from S3" in markdown and "`base.tar.gz`" in markdown
    assert f"| {new.layers[0].size:,} |" in markdown
    assert_no_secret(aws_env, markdown)


@pytest.mark.parametrize("kind", ["slowdown", "reset", "truncate"])
def test_transient_faults_are_retried(capsys, logs, registry, scenario, s3, proxy, aws_env, tmp_path, kind):
    url = upload(s3, scenario["staged"], "p")
    if kind == "slowdown":  # throttling of every kind of call: listing, small reads, layers
        proxy.inject("slowdown", count=4)
    else:  # the layer bodies break halfway, twice
        proxy.inject(kind, count=2, match=proxy.object_get("base.tar.gz"))
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 0, err
    faults = proxy.faults()
    assert len(faults) == (4 if kind == "slowdown" else 2)
    reason = {"slowdown": "SlowDown (HTTP 503)", "reset": "Connection reset",
              "truncate": "truncated body"}[kind]
    retries = logs.retries()
    assert len(retries) == len(faults) and reason in retries[0]
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
    assert_no_secret(aws_env, out, err, logs.text)


def test_ranged_parallel_gets_survive_faults(s3, proxy, aws_env, tmp_path):
    """Large objects come as ranged GETs in parallel, each retried on its own, in order."""
    data = os.urandom(3 << 20)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "big.bin").write_bytes(data)
    url = upload(s3, tmp_path / "b", "x")
    proxy.inject("reset", count=2, match=proxy.object_get("big.bin"))
    proxy.inject("truncate", count=2, match=proxy.object_get("big.bin"))
    src = S3Source(url, S3Options(endpoint_url=proxy.url, part_size=256 << 10, concurrency=4,
                                  wait_initial=0.01, wait_max=0.05))
    with src.open("big.bin") as f:
        got = f.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    gets = proxy.gets("big.bin")
    assert len(gets) == 12 + 4 and all(r.range for r in gets)
    assert len(proxy.faults()) == 4


# -- permanent faults ---------------------------------------------------------------

PERMANENT = {
    "no-such-bucket": (None, "does not exist"),
    "no-such-key": (("error", 404, "NoSuchKey", "delta.tar.gz"), "NoSuchKey"),
    "access-denied": (("error", 403, "AccessDenied", None), "access denied"),
    "bad-credentials": (("error", 403, "InvalidAccessKeyId", None), "refused the credentials"),
}


@pytest.mark.parametrize("case", list(PERMANENT))
def test_permanent_faults_fail_at_once_and_leave_storage_untouched(capsys, logs, registry, scenario, s3,
                                                                   proxy, aws_env, case):
    url = upload(s3, scenario["staged"], "p")
    fault, message = PERMANENT[case]
    if case == "no-such-bucket":
        url = "s3://no-such-bucket-" + secrets.token_hex(4) + "/p"
    else:
        _, status, code, name = fault
        proxy.inject("error", count=100, status=status, code=code,
                     match=proxy.object_get(name) if name else proxy.listing())
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 3, err
    line = error_line(err)
    assert message in line and "s3://" in line
    # never retried: one request for the failing call
    failing = [r for r in proxy.requests if r.status in (403, 404)]
    assert len(failing) == 1, [(r.method, r.path, r.status) for r in proxy.requests]
    assert not logs.retries()
    assert storage_hash(registry) == before
    assert_no_secret(aws_env, out, err, logs.text)


def test_digest_mismatch_is_not_retried(capsys, registry, scenario, s3, proxy, aws_env, tmp_path):
    url = upload(s3, scenario["staged"], "p")
    bucket, prefix = url[5:].split("/", 1)
    bad = bytearray(scenario["new"].layers[1].path.read_bytes())
    bad[len(bad) // 2] ^= 0xFF  # same size, other bytes
    s3.put_object(Bucket=bucket, Key=f"{prefix}/delta.tar.gz", Body=bytes(bad))
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 3, err
    line = error_line(err)
    assert "digest mismatch" in line and "delta.tar.gz" in line
    assert str(scenario["new"].layers[1].digest) in line
    assert len(proxy.gets("delta.tar.gz")) == 1
    assert storage_hash(registry) == before
    store = RegistryStore(registry.root)
    assert not store.partial_path(scenario["new"].layers[1].digest).exists()


# -- resume, nothing fetched twice ---------------------------------------------------------

def test_killed_download_resumes_from_the_bytes_on_disk(capsys, logs, registry, scenario, s3, proxy,
                                                        aws_env, tmp_path):
    url = upload(s3, scenario["staged"], "p")
    base = scenario["new"].layers[0]
    partial = RegistryStore(registry.root).partial_path(base.digest)
    proxy.inject("throttle", count=1, rate=128 << 10, match=proxy.object_get("base.tar.gz"))

    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, PREFECT_API_URL=PREFECT_API_URL.value() or "")
    if not env["PREFECT_API_URL"]:
        del env["PREFECT_API_URL"]
    exe = Path(sys.executable).with_name("regpatch")
    proc = subprocess.Popen([str(exe), "patch", url, "--storage", str(registry.root), "--repository", REPO,
                             "--tag", TAG, *FAST_RETRIES], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and partial.stat().st_size >= base.size // 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
        assert partial.exists(), "the download never started"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the CLI and its children
        proc.wait(30)
        proc.stdout.close()
    on_disk = partial.stat().st_size
    assert 0 < on_disk < base.size
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)

    proxy.reset()
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 0, err
    fetched = proxy.bytes_served("base.tar.gz")
    assert fetched < base.size
    assert fetched == base.size - on_disk
    assert [r.range for r in proxy.gets("base.tar.gz")] == [f"bytes={on_disk}-"]
    assert f"resumed after {on_disk:,} B already on disk" in logs.text
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    assert not partial.exists()


def test_fault_outlasting_the_retries_keeps_the_bytes_for_the_next_run(capsys, logs, registry, scenario, s3,
                                                                        proxy, aws_env):
    url = upload(s3, scenario["staged"], "p")
    base = scenario["new"].layers[0]
    partial = RegistryStore(registry.root).partial_path(base.digest)
    proxy.inject("truncate", count=1, match=proxy.object_get("base.tar.gz"))
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url, "--s3-retries", "0")
    assert code == 3, err
    line = error_line(err)
    assert "failed after 1 attempts" in line and "run the same command again to resume" in line
    assert storage_hash(registry) == before
    on_disk = partial.stat().st_size
    assert 0 < on_disk <= base.size // 2  # what arrived before the cut is on disk

    proxy.reset()
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 0, err
    assert proxy.bytes_served("base.tar.gz") == base.size - on_disk
    assert [r.range for r in proxy.gets("base.tar.gz")] == [f"bytes={on_disk}-"]


def test_changed_object_restarts_from_zero(capsys, registry, scenario, s3, proxy, aws_env, tmp_path):
    """A partial left from another version of the object (other ETag) is not resumed."""
    url = upload(s3, scenario["staged"], "p")
    base = scenario["new"].layers[0]
    store = RegistryStore(registry.root)
    partial = store.partial_path(base.digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"x" * 1000)
    partial.with_name(partial.name + ".json").write_text('{"validator": "old etag", "size": 1}')
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 0, err
    assert proxy.bytes_served("base.tar.gz") == base.size
    assert [r.range for r in proxy.gets("base.tar.gz")] == ["bytes=0-"]


@pytest.mark.parametrize("fmt", ["oci-layout", "staged-without-sidecars"])
def test_blob_already_in_registry_is_not_fetched(capsys, registry, scenario, s3, proxy, aws_env, tmp_path, fmt):
    """The new image reuses the old base layer: its object is never requested."""
    old = scenario["old"]
    work = tmp_path / "reuse"
    delta = make_layer(work, "delta.tar.gz", seed=777, size=128 << 10)
    image = make_image(work, [old.layers[0], delta], os="windows", os_version="10.0.17763.3", seed=777)
    if fmt == "oci-layout":
        url = upload(s3, write_oci_layout(tmp_path / "reuse-layout", {TAG: image}), "oci")
        base_name, delta_name = old.layers[0].digest.hex, delta.digest.hex
    else:
        url = upload(s3, write_staged_bundle(tmp_path / "reuse-staged", image, sidecars=False), "staged")
        base_name, delta_name = "base.tar.gz", "delta.tar.gz"
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url)
    assert code == 0, err
    assert proxy.gets(base_name) == []
    # a file without a .digest sidecar is hashed to find its descriptor, then staged
    assert len(proxy.gets(delta_name)) == (1 if fmt == "oci-layout" else 2)
    assert "1 skipped" in out
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_cache_dir_fetches_each_blob_once_for_several_registries(capsys, registry, scenario, s3, proxy,
                                                                 aws_env, tmp_path):
    url = upload(s3, scenario["staged"], "p")
    cache = tmp_path / "cache"
    code, out, err = patch(capsys, registry, url, "--s3-endpoint-url", proxy.url, "--cache-dir", cache)
    assert code == 0, err
    new = scenario["new"]
    assert all((cache / "sha256" / l.digest.hex).is_file() for l in new.layers)
    proxy.reset()
    with LocalRegistry(tmp_path / "second").start() as second:
        code = regpatch_main(["patch", url, "--storage", str(second.root), "--registry-url", second.url,
                              "--repository", REPO, "--tag", TAG, "--s3-endpoint-url", proxy.url,
                              "--cache-dir", str(cache), "--init", *FAST_RETRIES])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert proxy.gets("base.tar.gz") == [] and proxy.gets("delta.tar.gz") == []
        skopeo_pull(second.host, REPO, TAG, tmp_path / "pulled-second")


def test_aws_endpoint_url_from_the_environment(capsys, registry, scenario, s3, proxy, aws_env, monkeypatch):
    url = upload(s3, scenario["staged"], "p")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    code, out, err = patch(capsys, registry, url)
    assert code == 0, err
    assert len(proxy.gets("base.tar.gz")) == 1


# -- options ----------------------------------------------------------------------------

def test_credentials_block_needs_a_prefect_api(capsys, registry, scenario, s3, proxy, aws_env, monkeypatch):
    """A block lives on a Prefect API: without one the command says so before any request."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(registry.root / "no-prefect"))
    code, out, err = patch(capsys, registry, "s3://bucket/p", "--s3-endpoint-url", proxy.url,
                           "--aws-credentials-block", "site-store")
    assert code == 2
    assert "needs a Prefect API" in error_line(err)
    assert proxy.requests == []


def test_credentials_block_needs_prefect_aws(capsys, registry, scenario, s3, proxy, aws_env, prefect_env):
    try:
        import prefect_aws  # noqa: F401
        pytest.skip("prefect-aws is installed: the missing-package message cannot be shown")
    except ImportError:
        pass
    code, out, err = patch(capsys, registry, "s3://bucket/p", "--s3-endpoint-url", proxy.url,
                           "--aws-credentials-block", "site-store")
    assert code == 2
    assert "prefect-aws" in error_line(err) and "regpatch[aws]" in error_line(err)
    assert proxy.requests == []


def test_transient_predicate_and_credentials_repr():
    from botocore.exceptions import ClientError

    def err(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(err("SlowDown", 503)) and is_transient(err("InternalError", 500))
    assert is_transient(err("Whatever", 502)) and is_transient(ConnectionResetError())
    for code, status in (("NoSuchBucket", 404), ("NoSuchKey", 404), ("AccessDenied", 403),
                         ("InvalidAccessKeyId", 403), ("SignatureDoesNotMatch", 403), ("PreconditionFailed", 412)):
        assert not is_transient(err(code, status))
    assert not is_transient(SourceError("x"))
    from regpatch.bundle.s3 import S3Credentials
    from regpatch.errors import DigestMismatch

    assert not is_transient(DigestMismatch("f", "a", "b", 1))
    c = S3Credentials("AKIAXYZ", "topsecret", "sessiontok")
    opts = S3Options(credentials=c)
    for text in (repr(c), str(c), repr(opts), str(opts)):
        assert "topsecret" not in text and "AKIAXYZ" not in text and "sessiontok" not in text


def test_a_drop_location_on_s3_gives_its_newest_bundle(tmp_path, s3, moto_url, registry, scenario):
    """The month's bundle found by itself on an s3:// drop (issue 25 item 2): the sub-prefixes
    that hold a regpatch-bundle.json, dated by it; the newest is taken, then refused once
    the registry serves it."""
    import json

    from regpatch.errors import UsageError
    from regpatch.fleet.drop import choose_bundle
    from regpatch.fleet.inventory import parse_inventory

    local = tmp_path / "drop"
    for month, layout in (("2026-11", scenario["old_layout"]), ("2026-12", scenario["new_layout"])):
        assert regpatch_main(["bundle", f"oci:{layout}", "--out", str(local / month)]) == 0
    doc = json.loads((local / "2026-11" / "regpatch-bundle.json").read_text())
    doc["created"] = "2026-11-11T03:00:00Z"
    (local / "2026-11" / "regpatch-bundle.json").write_text(json.dumps(doc))
    (local / "notes.txt").write_text("not a bundle")
    drop = upload(s3, local, "drop")
    entries = parse_inventory({"registries": [{"name": "site-s3", "storage": str(registry.root)}]}).select(None)
    options = S3Options(endpoint_url=moto_url)
    choice = choose_bundle(drop, repository=REPO, tag=TAG, entries=entries, s3=options)
    assert choice.bundle.location == f"{drop}/2026-12" and len(choice.others) == 1
    assert choice.bundle.image == str(scenario["new"].manifest_digest)
    assert regpatch_main(["patch", choice.bundle.location, "--storage", str(registry.root), "--registry-url",
                          registry.url, "--repository", REPO, "--tag", TAG, "--s3-endpoint-url", moto_url]) == 0
    with pytest.raises(UsageError, match="already serves"):
        choose_bundle(drop, repository=REPO, tag=TAG, entries=entries, s3=options)
