"""End-to-end patches into a real docker-registry's storage, checked with skopeo.

Each test builds real images (regpatch.demo.images), pushes the "old" one with
skopeo, runs ``regpatch patch`` (the CLI, in-process, on Prefect's test
harness), and pulls the result with skopeo, which checks every digest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.util import error_line, skopeo_inspect_digest, skopeo_inspect_raw, skopeo_pull, tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import (
    make_image,
    make_index,
    make_layer,
    push_with_skopeo,
    scenario_servercore,
    write_oci_layout,
)

REPO, TAG = "servercore", "ltsc2019"


def run(capsys, *args) -> tuple[int, str, str]:
    code = regpatch_main(["patch", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def patch(capsys, registry, bundle, *extra, repository=REPO, tag=TAG) -> tuple[int, str, str]:
    return run(capsys, bundle, "--storage", registry.root, "--registry-url", registry.url,
               f"--repository={repository}", f"--tag={tag}", *extra)


def storage_hash(registry) -> str:
    return tree_hash(registry.root / "docker")


# -- the happy paths ------------------------------------------------------------

def test_staged_bundle_patches_and_pulls(capsys, registry, scenario, tmp_path):
    old, new = scenario["old"].manifest_digest, scenario["new"].manifest_digest
    # another tag of the same repository, pointing at the old image
    push_with_skopeo(scenario["old_layout"], scenario["ref"], registry.host, REPO, "other")

    code, out, err = patch(capsys, registry, scenario["staged"],
                           "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}")
    assert code == 0, err
    assert f"{old} -> {new}" in out
    assert "verified:" in out

    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(new)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    # nothing was lost: the other tag and the previous revision still pull
    assert skopeo_inspect_digest(registry.host, REPO, "other") == str(old)
    skopeo_pull(registry.host, REPO, "other", tmp_path / "pulled-other")
    skopeo_pull(registry.host, REPO, str(old), tmp_path / "pulled-old")

    # link files are exactly the ASCII digest, files 0644, folders 0755
    v2 = registry.root / "docker/registry/v2"
    current = v2 / f"repositories/{REPO}/_manifests/tags/{TAG}/current/link"
    assert current.read_bytes() == str(new).encode()
    for layer in scenario["new"].layers:
        link = v2 / f"repositories/{REPO}/_layers/sha256/{layer.digest.hex}/link"
        assert link.read_bytes() == str(layer.digest).encode()
        assert oct(link.stat().st_mode & 0o777) == "0o644"
        assert oct(link.parent.stat().st_mode & 0o777) == "0o755"
    # the manifest blob is the bundle file byte for byte (never re-serialised)
    data = v2 / f"blobs/sha256/{new.hex[:2]}/{new.hex}/data"
    assert data.read_bytes() == scenario["new"].manifest_bytes
    assert not list(v2.rglob(".regpatch-tmp-*"))


def test_rerun_changes_nothing(capsys, registry, scenario):
    assert patch(capsys, registry, scenario["staged"])[0] == 0
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, scenario["staged"])
    assert code == 0, err
    assert "nothing to do" in out
    assert "unchanged since a pull through" in out  # no second full pull
    assert storage_hash(registry) == before
    code, out, err = patch(capsys, registry, scenario["staged"], "--always-verify")
    assert code == 0, err
    assert "nothing to do" in out and "3 blob(s)" in out
    assert storage_hash(registry) == before


def test_oci_layout_bundle_with_image_choice(capsys, registry, scenario, tmp_path):
    new = scenario["new"]
    layout = write_oci_layout(tmp_path / "two-images", {"old": scenario["old"], "ltsc2019-patch": new})
    code, out, err = patch(capsys, registry, layout)
    assert code == 2 and "choose one with --image" in error_line(err)
    code, out, err = patch(capsys, registry, layout, "--image", "nope")
    assert code == 2 and "ltsc2019-patch" in error_line(err)
    code, out, err = patch(capsys, registry, layout, "--image", "ltsc2019-patch")
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(new.manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_index_with_two_windows_children(capsys, registry, scenario, tmp_path, fmt):
    """Windows images come as a list with one child per os.version: all applied together."""
    work = tmp_path / "win"
    base = make_layer(work, "base.tar.gz", seed=31, size=512 << 10, oci=fmt == "oci")
    children = []
    for i, osv in enumerate(["10.0.17763.6000", "10.0.20348.2000"]):
        delta = make_layer(work, f"delta{i}.tar.gz", seed=40 + i, size=128 << 10, oci=fmt == "oci")
        children.append(make_image(work, [base, delta], fmt=fmt, os="windows", os_version=osv, seed=50 + i))
    index = make_index(work, children, fmt=fmt)
    layout = write_oci_layout(tmp_path / "win-layout", {"ltsc": index})

    code, out, err = patch(capsys, registry, layout)
    assert code == 0, err
    raw = skopeo_inspect_raw(registry.host, REPO, TAG)
    assert raw == index.manifest_bytes
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled", all_images=True)
    v2 = registry.root / "docker/registry/v2"
    for child in children:  # every child has its revision link
        assert (v2 / f"repositories/{REPO}/_manifests/revisions/sha256/{child.manifest_digest.hex}/link").is_file()
    # the old image is still there by digest
    skopeo_pull(registry.host, REPO, str(scenario["old"].manifest_digest), tmp_path / "old")


def test_dry_run_writes_nothing(capsys, registry, scenario):
    before = tree_hash(registry.root)  # the whole root: not even regpatch's state folder
    code, out, err = patch(capsys, registry, scenario["staged"], "--dry-run")
    assert code == 0, err
    assert "dry run: nothing was written" in out
    assert "copy" in out and str(scenario["new"].manifest_digest) in out
    assert tree_hash(registry.root) == before
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)


def test_registry_config_gives_storage_and_url(capsys, registry, scenario):
    code, out, err = run(capsys, scenario["staged"], "--registry-config", registry.config_path,
                         "--repository", REPO, "--tag", TAG)
    assert code == 0, err
    assert "verified:" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)


def test_new_repository_and_tag(capsys, registry, scenario, tmp_path):
    code, out, err = patch(capsys, registry, scenario["staged"], repository="windows/servercore",
                           tag="ltsc2019-2026-11")
    assert code == 0, err
    assert "(new tag)" in out
    skopeo_pull(registry.host, "windows/servercore", "ltsc2019-2026-11", tmp_path / "pulled")


def test_managed_process_restart_then_verified_pull(capsys, registry, scenario):
    old_pid = int(registry.pidfile.read_text())
    spec = f"process:pidfile={registry.pidfile},config={registry.config_path}"
    code, out, err = patch(capsys, registry, scenario["staged"], "--restart", spec)
    assert code == 0, err
    new_pid = int(registry.pidfile.read_text())
    assert new_pid != old_pid
    assert "verified:" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)


def test_foreign_layer_missing_is_a_warning(capsys, registry, scenario, tmp_path):
    """A non-distributable Windows layer with urls, in neither bundle nor registry."""
    new = scenario["new"]
    doc = json.loads(new.manifest_bytes)
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "size": 1234, "digest": "sha256:" + "ab" * 32,
               "urls": ["https://mcr.example.invalid/foreign-base"]}
    doc["layers"].insert(0, foreign)
    bundle = tmp_path / "foreign"
    shutil.copytree(scenario["staged"], bundle)
    (bundle / "delta.tar.gz.manifest.json").write_bytes(json.dumps(doc, indent=3).encode())
    code, out, err = patch(capsys, registry, bundle)
    assert code == 0, err
    assert "foreign layer" in out + err
    v2 = registry.root / "docker/registry/v2"
    assert not (v2 / f"repositories/{REPO}/_layers/sha256/{'ab' * 32}").exists()


def test_basic_auth_registry(capsys, tmp_path, monkeypatch):
    from regpatch.demo.loopback import LocalRegistry

    password = "s3cret-Pa55word"
    with LocalRegistry(tmp_path / "authreg", htpasswd=("patcher", password)).start() as reg:
        s = scenario_servercore(tmp_path / "sample", base_size=64 << 10, delta_size=16 << 10)
        push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG, creds=f"patcher:{password}")
        monkeypatch.setenv("REGPATCH_REGISTRY_USERNAME", "patcher")
        monkeypatch.setenv("REGPATCH_REGISTRY_PASSWORD", "wrong-" + password)
        before = tree_hash(reg.root / "docker")
        code, out, err = patch(capsys, reg, s["staged"])
        assert code == 5 and "refused" in error_line(err)
        assert password not in out + err
        monkeypatch.setenv("REGPATCH_REGISTRY_PASSWORD", password)
        code, out, err = patch(capsys, reg, s["staged"])
        assert code == 0, err
        assert password not in out + err
        assert skopeo_inspect_digest(reg.host, REPO, TAG, creds=f"patcher:{password}") == str(s["new"].manifest_digest)
        assert tree_hash(reg.root / "docker") != before


# -- bad input: a clear one-line error, the storage byte-identical ----------------

def _corrupt(bundle: Path) -> str:
    p = bundle / "base.tar.gz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    return "base.tar.gz"


def _truncate(bundle: Path) -> str:
    p = bundle / "delta.tar.gz"
    p.write_bytes(p.read_bytes()[:-100])
    return "delta.tar.gz"


def _wrong_sidecar(bundle: Path) -> str:
    (bundle / "base.tar.gz.digest").write_text("sha256:" + "0" * 64 + "\r\n")
    return "base.tar.gz.digest"


def _duplicate_sidecar(bundle: Path) -> str:
    (bundle / "base.tar.gz.digest").write_bytes((bundle / "delta.tar.gz.digest").read_bytes())
    return "both name"


def _malformed_manifest(bundle: Path) -> str:
    p = bundle / "delta.tar.gz.manifest.json"
    p.write_bytes(p.read_bytes().replace(b'"layers"', b'"layers" "', 1))
    return "malformed JSON"


def _missing_layer(bundle: Path) -> str:
    (bundle / "delta.tar.gz").unlink()
    (bundle / "delta.tar.gz.digest").unlink()
    return "in neither the bundle nor the registry"


def _symlink_outside(bundle: Path) -> str:
    outside = bundle.parent / "outside.tar.gz"
    (bundle / "base.tar.gz").rename(outside)
    (bundle / "base.tar.gz").symlink_to(outside)
    return "outside the bundle"


def _wrong_config(bundle: Path) -> str:
    p = bundle / "delta.tar.gz.config.json"
    p.write_bytes(p.read_bytes().replace(b"amd64", b"arm64"))
    return "delta.tar.gz.config.json"


@pytest.mark.parametrize("breaker,exit_code", [
    (_corrupt, 3), (_truncate, 3), (_wrong_sidecar, 3), (_duplicate_sidecar, 3), (_malformed_manifest, 3),
    (_missing_layer, 3), (_symlink_outside, 3), (_wrong_config, 3),
], ids=lambda v: getattr(v, "__name__", str(v)).strip("_"))
def test_bad_bundle_is_refused_and_storage_untouched(capsys, registry, scenario, tmp_path, breaker, exit_code):
    bundle = tmp_path / "broken"
    shutil.copytree(scenario["staged"], bundle)
    expected_in_message = breaker(bundle)
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, bundle)
    assert code == exit_code, err
    line = error_line(err)
    assert expected_in_message in line
    assert storage_hash(registry) == before
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)


@pytest.mark.parametrize("repository,tag,what", [
    ("ServerCore", TAG, "invalid repository"),
    ("../../etc", TAG, "invalid repository"),
    ("servercore/_layers", TAG, "invalid repository"),
    (REPO, "../current", "invalid tag"),
    (REPO, "-dash", "invalid tag"),
    (REPO, "x" * 129, "invalid tag"),
])
def test_invalid_repository_or_tag(capsys, registry, scenario, repository, tag, what):
    before = tree_hash(registry.root)
    code, out, err = patch(capsys, registry, scenario["staged"], repository=repository, tag=tag)
    assert code == 2
    assert what in error_line(err)
    assert tree_hash(registry.root) == before


def test_incomplete_docker_save_archive_is_refused(capsys, registry, tmp_path):
    """A docker save archive is converted (tests/e2e/test_formats.py); one whose manifest.json
    names files it does not hold is refused, as an archive or unpacked, storage untouched."""
    import tarfile

    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "manifest.json").write_text('[{"Config": "abc.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]')
    (folder / "repositories").write_text("{}")
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as t:
        t.add(folder / "manifest.json", "manifest.json")
        t.add(folder / "repositories", "repositories")
    before = storage_hash(registry)
    for bundle in (archive, folder):
        code, out, err = patch(capsys, registry, bundle, "--init")  # a new registry: nothing pushed yet
        assert code == 3
        line = error_line(err)
        assert "docker save archive" in line and "abc.json" in line and "incomplete" in line
    assert storage_hash(registry) == before


def test_cli_process_exit_code_and_one_line_error(registry, scenario, tmp_path):
    """The installed console script: non-zero exit, one line on stderr, no traceback."""
    bundle = tmp_path / "broken"
    shutil.copytree(scenario["staged"], bundle)
    _corrupt(bundle)
    exe = Path(sys.executable).with_name("regpatch")
    proc = subprocess.run([str(exe), "patch", str(bundle), "--storage", str(registry.root),
                           "--repository", REPO, "--tag", TAG], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 3, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("regpatch: error:")]
    assert len(errors) == 1 and "digest mismatch" in errors[0] and "base.tar.gz" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_symlink_in_storage_leading_outside_is_refused(capsys, registry, scenario, tmp_path):
    """Nothing is written outside the registry storage, even through a planted symlink."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = registry.root / f"docker/registry/v2/repositories/{REPO}/_layers"
    moved = tmp_path / "layers-moved"
    layers.rename(moved)
    layers.symlink_to(outside)
    before = storage_hash(registry)
    code, out, err = patch(capsys, registry, scenario["staged"])
    assert code == 3 and "outside the registry storage" in error_line(err)
    assert list(outside.iterdir()) == []
    assert storage_hash(registry) == before  # refused at plan time, before any write


def test_a_failed_verification_says_where_it_failed_not_not_run(capsys, registry, scenario, tmp_path):
    """The pull ran and passed, the operator's command ran and failed: the summary names the
    stage that failed (issue 25 item 5), never 'not run'; the tag stays where it was."""
    from regpatch.storage.layout import Layout

    code, out, err = patch(capsys, registry, scenario["staged"], "--verify-command", "sh -c 'exit 3' {ref}")
    assert code != 0, out + err
    reports = sorted(Layout(registry.root).state.rglob("*.md"), key=lambda p: p.stat().st_mtime)
    text = reports[-1].read_text()
    assert "| verification | failed at the verify command: " in text, text
    assert "not run" not in text.split("| verification |")[1].split("\n")[0]
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)
