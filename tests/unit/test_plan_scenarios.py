"""Patch and rollback scenarios an operator meets on a real site, on real storages:
Windows foreign layers, blobs the registry already holds (whole, truncated or
missing), index children stored earlier, restarts, an unreachable registry API,
and rollbacks to images that are no longer whole."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import REPO, TAG

from regpatch import engine
from regpatch.demo.images import (
    default_layer_names,
    make_image,
    make_index,
    make_layer,
    write_oci_layout,
    write_staged_bundle,
)
from regpatch.demo.loopback import free_port
from regpatch.digest import Digest
from regpatch.engine.tags import ImageIncomplete
from regpatch.errors import BundleError, RegistryUnavailable, SizeMismatch, StorageError, UsageError
from regpatch.manifest import DOCKER_CONFIG, DOCKER_FOREIGN_LAYER, DOCKER_LAYER, DOCKER_MANIFEST
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget

R, T = Repository(REPO), Tag(TAG)
FOREIGN = b"the Windows base layer, served by mcr.microsoft.com"


def blob(data: bytes, media_type: str) -> dict:
    return {"mediaType": media_type, "size": len(data), "digest": str(Digest.of_bytes(data))}


def foreign_bundle(folder):
    """A servercore patch whose base layer is foreign (non-distributable, fetched from its urls)."""
    folder.mkdir()
    delta, config = b"the monthly delta" * 100, b'{"os":"windows","os.version":"10.0.17763.9"}'
    (folder / "delta.tar.gz").write_bytes(delta)
    (folder / "delta.tar.gz.config.json").write_bytes(config)
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": blob(config, DOCKER_CONFIG),
                "layers": [{**blob(FOREIGN, DOCKER_FOREIGN_LAYER),
                            "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/x"]},
                           blob(delta, DOCKER_LAYER)]}
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "delta.tar.gz.manifest.json").write_bytes(raw)
    return Digest.of_bytes(raw)


def rollback(site, to=None):
    return engine.rollback(engine.RollbackRequest(R, T, RegistryTarget.resolve(storage=str(site.root)), to=to))


# --------------------------------------------------------------------------- what the plan resolves

def test_a_foreign_base_layer_is_neither_copied_nor_linked_and_the_report_says_so(site, tmp_path):
    digest = foreign_bundle(tmp_path / "bundle")
    dry = engine.patch(site.request(tmp_path / "bundle", dry_run=True))
    assert "foreign (not stored)" in dry.plan_text and "warning: foreign layer" in dry.plan_text
    result = engine.patch(site.request(tmp_path / "bundle"))
    assert result.tag_moved and site.current() == str(digest).encode()
    assert len(result.blobs_copied) == 2  # config and delta
    # (issue 20: and, with neither the registry's config nor a check of its URL policy, that it was not checked)
    assert result.warnings[0].startswith("the registry's URL policy for foreign layers (validation.manifests.urls "
                                         "of its config.yml) was not checked")
    assert result.warnings[1:] == [f"foreign layer {Digest.of_bytes(FOREIGN)} ({len(FOREIGN):,} B) is in neither "
                                   "the bundle nor the registry; clients will fetch it from "
                                   "https://mcr.microsoft.com/v2/windows/servercore/blobs/x"]
    assert not site.layout.layer_link(R, Digest.of_bytes(FOREIGN)).exists()
    report = sorted((site.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert "## Warnings" in report and "clients will fetch it from https://mcr.microsoft.com" in report
    # the image counts as whole for a rollback back to it, foreign layer and all
    rollback(site)
    assert rollback(site, to=digest).changed and site.current() == str(digest).encode()


def test_a_truncated_registry_blob_is_repaired_from_the_bundle(site):
    base = site.scenario["old"].layers[0]
    data = site.layout.blob_data(base.digest)
    data.write_bytes(data.read_bytes()[:1000])  # a copy cut short by an earlier manual procedure
    result = engine.patch(site.request(site.scenario["old_layout"]))
    assert any("has 1000 bytes instead of" in w and "replaced from blobs/sha256/" in w for w in result.warnings)
    assert data.read_bytes() == base.path.read_bytes()
    assert (str(base.digest), base.size) in result.blobs_copied


def test_a_reused_blob_the_bundle_leaves_out_must_be_whole_in_the_registry(site, tmp_path):
    """The month's image reuses the old base layer: the bundle carries only the delta."""
    old = site.scenario["old"]
    delta = make_layer(tmp_path / "w", "delta.tar.gz", seed=901, size=16 << 10)
    image = make_image(tmp_path / "w", [old.layers[0], delta], os="windows", os_version="10.0.17763.5", seed=901)
    layout = write_oci_layout(tmp_path / "layout", {TAG: image})
    (layout / "blobs" / "sha256" / old.layers[0].digest.hex).unlink()
    result = engine.patch(site.request(layout, dry_run=True))
    assert (str(old.layers[0].digest), old.layers[0].size) in result.blobs_skipped

    data = site.layout.blob_data(old.layers[0].digest)
    data.write_bytes(data.read_bytes()[:-1])
    before = site.docker_hash()
    with pytest.raises(SizeMismatch, match=f"registry blob blobs/sha256/.*{old.layers[0].digest.hex}/data: "
                                           f"expected {old.layers[0].size} bytes, got {old.layers[0].size - 1}"):
        engine.patch(site.request(layout))
    assert site.docker_hash() == before


def test_a_bundle_file_of_the_wrong_size_is_refused_before_any_write(site, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["staged"], bundle)
    with open(bundle / "base.tar.gz", "ab") as f:
        f.write(b"trailing bytes from a bad transfer")
    before = site.docker_hash()
    with pytest.raises(SizeMismatch, match="size mismatch for bundle file .*base.tar.gz"):
        engine.patch(site.request(bundle))
    assert site.docker_hash() == before


def test_index_children_already_stored_are_read_from_the_registry(site, tmp_path):
    """A manifest list over last month's image (already in the registry) and a new one:
    the bundle carries the new child only; shared layers are planned once."""
    old = site.scenario["old"]
    delta = make_layer(tmp_path / "n", "delta.tar.gz", seed=902, size=16 << 10)
    new = make_image(tmp_path / "n", [old.layers[0], delta], os="windows", os_version="10.0.20348.1", seed=902)
    index = make_index(tmp_path / "idx", [old, new])
    layout = write_oci_layout(tmp_path / "layout", {TAG: index})
    for d in (old.manifest_digest, old.config.digest, *[l.digest for l in old.layers]):
        (layout / "blobs" / "sha256" / d.hex).unlink()
    result = engine.patch(site.request(layout))
    assert result.tag_moved and site.current() == str(index.manifest_digest).encode()
    assert "index    write" in result.plan_text and "manifest skip (in registry)" in result.plan_text
    assert sorted(d for d, _ in result.blobs_copied) == sorted(str(b.digest) for b in (new.config, delta))


def test_nested_indexes_are_refused(site, tmp_path):
    layer = make_layer(tmp_path / "i", "l.tar.gz", seed=903, size=8 << 10)
    image = make_image(tmp_path / "i", [layer], os="windows", seed=903)
    inner = make_index(tmp_path / "inner", [image], fmt="oci")
    outer_doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [blob(inner.manifest_bytes, inner.media_type)]}
    layout = write_oci_layout(tmp_path / "layout", {"inner": inner})
    raw = json.dumps(outer_doc).encode()
    (layout / "blobs" / "sha256" / Digest.of_bytes(raw).hex).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [{**blob(raw, outer_doc["mediaType"]),
                           "annotations": {"org.opencontainers.image.ref.name": TAG}}]
    (layout / "index.json").write_text(json.dumps(index))
    before = site.docker_hash()
    with pytest.raises(BundleError, match="nested image indexes are not supported"):
        engine.patch(site.request(layout))
    assert site.docker_hash() == before


# --------------------------------------------------------------------------- what the engine does around it

def test_a_staged_blob_removed_before_the_copy_is_staged_and_hashed_again(site):
    class Meddler(engine.LogObserver):
        def run(self, step, fn):
            if step == "copy-blobs":
                for p in site.layout.staging.iterdir():
                    p.unlink()
            return fn()

    result = engine.patch(site.request(), Meddler(progress=lambda label, total: (lambda n: None)))
    assert result.tag_moved
    for b in site.scenario["new"].blobs:
        assert site.layout.blob_data(b.digest).read_bytes() == b.path.read_bytes()


def test_a_restart_command_runs_before_the_tag_moves(site, tmp_path):
    marker = tmp_path / "restarted"
    tag_at_restart = tmp_path / "tag-at-restart"
    link = site.layout.tag_current_link(R, T)
    result = engine.patch(site.request(restart=f"command:cp {link} {tag_at_restart} && touch {marker}"))
    assert result.tag_moved and marker.exists()
    assert tag_at_restart.read_text() == str(site.old)  # the registry restarted before the flip
    assert "restart-registry" in result.seconds


def test_an_unreachable_registry_api_is_found_before_any_write(site):
    url = f"http://127.0.0.1:{free_port()}"
    target = RegistryTarget.resolve(storage=str(site.root), url=url)
    before = site.docker_hash()
    with pytest.raises(RegistryUnavailable, match=f"registry at {url} does not answer GET /v2/") as e:
        engine.patch(site.request(target=target))  # ~8 s: the client's retries with backoff, as a run waits
    assert "after 5 attempt(s)" in str(e.value)
    assert site.docker_hash() == before and site.current() == str(site.old).encode()


def test_preflight_plans_without_writing(site):
    from conftest import tree_hash

    before = tree_hash(site.root)
    plan = engine.preflight(site.request())
    assert (plan.old, plan.new, len(plan.to_copy)) == (site.old, site.new, 3)
    assert tree_hash(site.root) == before


def test_a_failed_run_reports_why_and_where_the_tag_is(site, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(site.scenario["staged"], bundle)
    data = bytearray((bundle / "delta.tar.gz").read_bytes())
    data[7] ^= 1
    (bundle / "delta.tar.gz").write_bytes(bytes(data))
    with pytest.raises(Exception) as e:
        engine.patch(site.request(bundle))
    result = e.value.result
    assert result.status == "failed" and result.summary_line().startswith(f"failed: {REPO}:{TAG}: digest mismatch")
    assert result.to_dict()["error"] == result.error
    report = sorted((site.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert report.startswith(f"# Failed: `{REPO}:{TAG}`") and "The tag was not moved" in report


def test_a_report_that_cannot_be_written_never_fails_the_run(site, caplog):
    reports = site.root / ".regpatch" / "reports"
    shutil.rmtree(reports)
    reports.write_text("a file where the reports go")
    with caplog.at_level(logging.WARNING, logger="regpatch.engine"):
        result = engine.patch(site.request())
    assert result.tag_moved and result.report_path is None
    assert "could not write the run report" in caplog.text


def test_requests_are_checked_before_anything_is_read(site):
    with pytest.raises(UsageError, match="no bundle given"):
        engine.patch(site.request(" "))
    request = engine.PatchRequest(bundle="/b", repository=REPO, tag=TAG,  # type: ignore[arg-type]
                                  target=RegistryTarget.resolve(storage=str(site.root)))
    with pytest.raises(UsageError, match="internal: repository and tag must be parsed values"):
        request.check()


# --------------------------------------------------------------------------- rollbacks to broken images

def test_a_rollback_never_points_the_tag_at_an_image_that_is_not_whole(site):
    engine.patch(site.request())
    old = site.scenario["old"]
    manifest = site.layout.blob_data(site.old)
    saved = manifest.read_bytes()
    cases = [
        (lambda: manifest.write_bytes(saved.replace(b"schemaVersion", b"schemaVersiom")), "is corrupt"),
        (lambda: manifest.unlink(), "is missing from the storage"),
        (lambda: site.layout.blob_data(old.layers[1].digest).write_bytes(b"short"),
         f"blob {old.layers[1].digest} has 5 bytes, the manifest says {old.layers[1].size}"),
    ]
    for breaker, message in cases:
        breaker()
        with pytest.raises(ImageIncomplete, match=message):
            rollback(site)
        assert site.current() == str(site.new).encode()
        manifest.write_bytes(saved)
    with pytest.raises(StorageError):
        rollback(site, to=Digest.of_bytes(b"not an image of this repository"))


def test_sample_bundles_name_their_layers_and_refuse_nonsense(tmp_path):
    assert default_layer_names(4) == ["base.tar.gz", "delta.tar.gz", "layer3.tar.gz", "layer4.tar.gz"]
    layers = [make_layer(tmp_path, f"l{i}", seed=i, size=1024) for i in range(3)]
    image = make_image(tmp_path, layers, fmt="oci", pretty=False)
    bundle = write_staged_bundle(tmp_path / "staged", image)
    assert sorted(p.name for p in bundle.iterdir())[:3] == ["base.tar.gz", "base.tar.gz.digest", "delta.tar.gz"]
    assert (bundle / "layer3.tar.gz.manifest.json").read_bytes() == image.manifest_bytes
    with pytest.raises(ValueError, match="need 3 distinct layer names"):
        write_staged_bundle(tmp_path / "x", image, names=["a", "a", "b"])
    with pytest.raises(ValueError, match="fmt must be 'docker' or 'oci'"):
        make_image(tmp_path, layers, fmt="zip")
    with pytest.raises(ValueError, match="every layer needs a diff_id"):
        make_image(tmp_path, [image.config])
