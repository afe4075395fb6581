"""Issue 20, point 7, on real files: a stray looping symlink in a bundle, the URL policy that was not
checked, the plan and the summary counting the same links, a malformed link warned about once.
(The TLS side: tests/e2e/test_registry_api.py::test_bundle_insecure_keeps_tls_and_skips_the_certificate_check.)"""

from __future__ import annotations

import logging
import shutil

import pytest
from conftest import REPO, TAG
from test_plan_scenarios import foreign_bundle

from regpatch import engine
from regpatch.bundle.local import LocalFolderSource
from regpatch.errors import BundleError, SourceError
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget

R, T = Repository(REPO), Tag(TAG)


def test_a_looping_symlink_the_manifest_never_names_does_not_stop_the_patch(site, tmp_path, caplog):
    """Before: 'accessing BUNDLE/loop failed: [ELOOP] ...: a symlink in the storage points back at
    itself', exit 4, for a file the manifest never names (and the symlink is in the bundle)."""
    staged = tmp_path / "staged"
    shutil.copytree(site.scenario["staged"], staged)
    (staged / "loop").symlink_to("loop")
    layout = tmp_path / "layout"
    shutil.copytree(site.scenario["new_layout"], layout)
    (layout / "blobs" / "sha256" / "loop").symlink_to("loop")
    # one the manifest names is missing from the bundle (exit 3), the warning before says why
    named = tmp_path / "named"
    shutil.copytree(site.scenario["staged"], named)
    (named / "delta.tar.gz").unlink()
    (named / "delta.tar.gz").symlink_to("delta.tar.gz")
    with caplog.at_level(logging.WARNING, logger="regpatch.bundle"):
        with pytest.raises(BundleError, match="is in neither the bundle nor the registry") as e:
            engine.patch(site.request(named))
    assert e.value.exit_code == 3 and f"bundle file {named / 'delta.tar.gz'} is a symlink that loops" in caplog.text
    with caplog.at_level(logging.WARNING, logger="regpatch.bundle"):
        result = engine.patch(site.request(staged))
    assert result.changed and site.current() == str(site.new).encode()
    assert f"bundle file {staged / 'loop'} is a symlink that loops" in caplog.text
    assert engine.patch(site.request(layout, tag="from-layout")).changed
    with pytest.raises(SourceError, match="is a symlink that loops"):
        LocalFolderSource(staged).open("loop")


def test_a_url_policy_that_was_not_checked_is_said(site, tmp_path):
    """Before: with only --storage (and --registry-url), a foreign layer's URL the registry's config
    would refuse was patched and nothing said the policy was not checked."""
    foreign_bundle(tmp_path / "bundle")
    result = engine.patch(site.request(tmp_path / "bundle"))
    said = [w for w in result.warnings if "URL policy" in w]
    assert said and "was not checked" in said[0] and "--registry-config" in said[0]
    assert "https://mcr.microsoft.com/v2/windows/servercore/blobs/x" in said[0]
    report = sorted((site.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert "was not checked" in report
    # with the registry's config the policy is checked: refused, the override named as an option
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {site.root}\n"
                   "http:\n  addr: 127.0.0.1:1\n")
    with pytest.raises(BundleError, match="allows no URL at all.*override with --ignore-url-policy"):
        engine.patch(site.request(tmp_path / "bundle", tag="checked",
                                  target=RegistryTarget.resolve(config=str(cfg))))


def test_the_plan_and_the_summary_count_the_same_links(site):
    """Before: the plan said '6 links to write', the summary '4 links written' (the tag's two
    links, written at publish, were not counted)."""
    dry = engine.patch(site.request(dry_run=True))
    assert "6 links to write" in dry.plan_text and len(dry.links_written) == 6
    result = engine.patch(site.request())
    assert len(result.links_written) == 6 and "6 links written" in result.summary_line()
    assert result.links_written[-1].endswith(f"_manifests/tags/{TAG}/current/link")
    assert "| links written | 6 |" in result.markdown()


def test_a_malformed_current_link_is_warned_about_once(site, caplog):
    current = site.layout.tag_current_link(R, T)
    current.write_bytes(current.read_bytes() + b"\r\n")
    with caplog.at_level(logging.WARNING):
        engine.patch(site.request())
    said = [r for r in caplog.records if "does not hold 'sha256:<hex>' exactly" in r.getMessage()]
    assert len(said) == 1
    assert site.current() == str(site.new).encode()  # and replaced when the tag moved
