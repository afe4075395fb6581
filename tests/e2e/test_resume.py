"""History, rollback, the repository lock, auto-rollback, disk full and concurrency,
against a real docker-registry, with skopeo as the independent client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from support.util import skopeo_inspect_digest, skopeo_pull, tree_hash

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_layer, push_with_skopeo, scenario_servercore, write_staged_bundle
from regpatch.demo.loopback import LocalRegistry
from regpatch.reference import Repository, Tag
from regpatch.storage.history import read_history
from regpatch.storage.layout import Layout
from regpatch.storage.lock import repository_lock

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))


def cli(capsys, *args) -> tuple[int, str, str]:
    code = regpatch_main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def target_args(registry) -> list:
    return ["--storage", registry.root, "--registry-url", registry.url]


def test_history_and_rollback(capsys, registry, scenario, tmp_path):
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    code, out, err = cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository", REPO,
                         "--tag", TAG)
    assert code == 0, err
    code, out, err = cli(capsys, "history", "--storage", registry.root)
    assert code == 0 and "servercore:ltsc2019" in out and "patch" in out and old[:19] in out

    code, out, err = cli(capsys, "rollback", *target_args(registry), "--repository", REPO, "--tag", TAG)
    assert code == 0, err
    assert f"rolled back servercore:ltsc2019: {new} -> {old}" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")

    entries = read_history(Layout(registry.root), REPO, TAG)
    assert [(e.action, e.old, e.new) for e in entries] == [("patch", old, new), ("rollback", new, old)]
    code, out, err = cli(capsys, "history", "--storage", registry.root, "--repository", REPO, "--json")
    assert [json.loads(l)["action"] for l in out.splitlines()] == ["patch", "rollback"]

    # and forward again by digest: the new image was never deleted
    code, out, err = cli(capsys, "rollback", *target_args(registry), "--repository", REPO, "--tag", TAG,
                         "--to", new)
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new


def test_rollback_refuses_incomplete_or_unknown_image(capsys, registry, scenario):
    new = scenario["new"]
    assert cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository", REPO,
               "--tag", TAG)[0] == 0
    v2 = registry.root / "docker/registry/v2"
    before = tree_hash(registry.root / "docker")
    code, out, err = cli(capsys, "rollback", *target_args(registry), "--repository", REPO, "--tag", TAG,
                         "--to", "sha256:" + "1" * 64)
    assert code == 4 and "no revision link" in err
    assert tree_hash(registry.root / "docker") == before

    # an image whose layer link is gone is not complete: refused before the flip
    (v2 / f"repositories/{REPO}/_layers/sha256/{scenario['old'].layers[0].digest.hex}/link").unlink()
    before = tree_hash(registry.root / "docker")
    code, out, err = cli(capsys, "rollback", *target_args(registry), "--repository", REPO, "--tag", TAG)
    assert code == 4 and "not linked" in err
    assert tree_hash(registry.root / "docker") == before
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(new.manifest_digest)


def test_failed_verification_never_moves_the_tag(capsys, registry, scenario):
    """The new image is proven by digest before current/link is written: a failed
    verification leaves the tag where it was (nothing to roll back), the new image
    stays pullable by digest, and the re-run resumes."""
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    current = registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link"
    before = current.read_bytes()
    code, out, err = cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository", REPO,
                         "--tag", TAG, "--verify-command", "test {ref} = nothing")
    assert code == 5, err
    assert "verify command for 127.0.0.1" in err and f"/{REPO}@{new}" in err  # {ref} is repo@digest
    assert current.read_bytes() == before
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
    assert skopeo_inspect_digest(registry.host, REPO, new) == new  # proven by digest, not published
    assert read_history(Layout(registry.root), REPO, TAG) == []
    journal = json.loads(Layout(registry.root).journal(Repository.parse(REPO), Tag.parse(TAG)).read_text())
    assert journal["status"] == "failed" and "verify pull" not in journal["steps"]
    report = sorted((registry.root / ".regpatch/reports").glob("*.md"))[-1].read_text()
    assert "The tag was not moved" in report
    code, out, err = cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository", REPO,
                         "--tag", TAG)
    assert code == 0, err
    assert f"{old} -> {new}" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new


def test_lock_timeout_and_other_repository_runs(capsys, registry, scenario):
    layout = Layout(registry.root)
    before = tree_hash(registry.root / "docker")
    with repository_lock(layout, Repository(REPO), timeout=1):
        code, out, err = cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository", REPO,
                             "--tag", TAG, "--lock-timeout", "1")
        assert code == 4 and "is being patched by another run" in err
        assert tree_hash(registry.root / "docker") == before
        # another repository is not blocked
        code, out, err = cli(capsys, "patch", scenario["staged"], *target_args(registry), "--repository",
                             "other", "--tag", TAG, "--lock-timeout", "1")
        assert code == 0, err


def test_disk_full_fails_cleanly(capsys, tmp_path):
    """A patch larger than the free space: a clear error, no temp files, the old image still pulls."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        with LocalRegistry(small / "registry").start() as reg:
            s = scenario_servercore(tmp_path / "sample", base_size=256 << 10, delta_size=64 << 10)
            push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG)
            work = tmp_path / "big"
            big = make_layer(work, "base.tar.gz", seed=77, size=8 << 20, compresslevel=0)
            image = make_image(work, [big], os="windows", os_version="10.0.17763.9")
            bundle = write_staged_bundle(tmp_path / "big-bundle", image)
            code, out, err = cli(capsys, "patch", bundle, *target_args(reg), "--repository", REPO, "--tag", TAG)
            assert code == 4, err
            assert "no space left on the device" in err
            assert not [p for p in small.rglob("*") if ".regpatch-tmp-" in p.name]
            assert skopeo_inspect_digest(reg.host, REPO, TAG) == str(s["old"].manifest_digest)
            skopeo_pull(reg.host, REPO, TAG, tmp_path / "pulled")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_two_patches_of_one_repository_at_once(registry, scenario, tmp_path):
    """Two processes patch the same repository together: one waits for the other."""
    procs, outs = [], {}
    bundles = {"a": scenario["staged"], "b": scenario["new_layout"]}

    def run(name):
        p = subprocess.run([REGPATCH, "patch", str(bundles[name]), "--storage", str(registry.root),
                            "--registry-url", registry.url, "--repository", REPO, "--tag", TAG,
                            "--lock-timeout", "120"], capture_output=True, text=True, timeout=300)
        outs[name] = p

    for name in bundles:
        t = threading.Thread(target=run, args=(name,))
        t.start()
        procs.append(t)
    for t in procs:
        t.join()
    for name, p in outs.items():
        assert p.returncode == 0, (name, p.stderr[-2000:])
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    entries = read_history(Layout(registry.root), REPO, TAG)
    assert len(entries) == 1  # the second run found the tag already patched
