"""Archives in S3 (moto's server behind the fault proxy): ``s3://bucket/key.tar``.

A plain OCI archive is read in place with ranged GETs (each member's bytes
once, plus a few small header reads); a compressed one in whole streamed
passes; a docker save archive is converted. Each is patched into a real
registry with the CLI and pulled back with skopeo.
"""

from __future__ import annotations

import secrets

import pytest
import zstandard
from support.util import skopeo, skopeo_inspect_digest, skopeo_pull
from test_s3 import FAST_RETRIES, aws_env, moto_url, proxy, s3  # noqa: F401  (fixtures)

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_layer, write_oci_layout

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def image(tmp_path):
    layers = [make_layer(tmp_path / "s", "base", seed=81, size=1 << 20, oci=True),
              make_layer(tmp_path / "s", "delta", seed=82, size=200_000, oci=True)]
    img = make_image(tmp_path / "s", layers, fmt="oci", name="img")
    layout = write_oci_layout(tmp_path / "layout", {"img": img})
    skopeo("copy", "--quiet", f"oci:{layout}:img", f"oci-archive:{tmp_path / 'img.tar'}")
    skopeo("copy", "--quiet", f"oci:{layout}:img", f"docker-archive:{tmp_path / 'saved.tar'}:site/app:1")
    (tmp_path / "img.tar.zst").write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "img.tar").read_bytes()))
    return img


def put(s3, path, key: str) -> str:
    bucket = "archives-" + secrets.token_hex(4)
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def run_patch(capsys, registry, url, proxy, repo):
    code = regpatch_main(["patch", url, "--storage", str(registry.root), "--registry-url", registry.url,
                          "--repository", repo, "--tag", "t", "--s3-endpoint-url", proxy.url, "--init", *FAST_RETRIES])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_plain_archive_members_are_fetched_in_place(capsys, registry, image, s3, proxy, tmp_path):
    archive = tmp_path / "img.tar"
    url = put(s3, archive, "site/servercore/img.tar")
    run_patch(capsys, registry, url, proxy, "s3/plain")
    assert skopeo_inspect_digest(registry.host, "s3/plain", "t") == str(image.manifest_digest)
    skopeo_pull(registry.host, "s3/plain", "t", tmp_path / "pulled")
    size = archive.stat().st_size
    served = proxy.bytes_served("img.tar")
    # the blobs once, plus header read-ahead: never the whole archive twice
    assert sum(b.size for b in image.layers) <= served < size + (512 << 10), (served, size)
    assert all(r.status == 206 for r in proxy.gets("img.tar"))  # ranged GETs only


def test_compressed_archive_is_read_in_streamed_passes(capsys, registry, image, s3, proxy, tmp_path):
    archive = tmp_path / "img.tar.zst"
    url = put(s3, archive, "img.tar.zst")
    run_patch(capsys, registry, url, proxy, "s3/zstd")
    assert skopeo_inspect_digest(registry.host, "s3/zstd", "t") == str(image.manifest_digest)
    skopeo_pull(registry.host, "s3/zstd", "t", tmp_path / "pulled")
    # one pass to list, one to stage every blob in archive order
    assert proxy.bytes_served("img.tar.zst") == 2 * archive.stat().st_size + 512  # + the sniffed first block


def test_docker_save_archive_from_s3_is_converted(capsys, registry, image, s3, proxy, tmp_path):
    url = put(s3, tmp_path / "saved.tar", "saved.tar")
    out = run_patch(capsys, registry, url, proxy, "s3/saved")
    served = skopeo_inspect_digest(registry.host, "s3/saved", "t")
    assert served != str(image.manifest_digest) and f"-> {served}" in out
    skopeo_pull(registry.host, "s3/saved", "t", tmp_path / "pulled")
