"""The engine and its Prefect shell against real components: the scenarios of issue 9.

A real docker-registry, skopeo as the independent client, the command line as an
operator runs it (a process of its own, signals and all), and one real Prefect
server for the session where a run goes through Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.util import skopeo_inspect_digest, skopeo_pull, tree_hash

from regpatch.demo.images import (
    make_image,
    make_layer,
    push_with_skopeo,
    scenario_servercore,
    write_oci_layout,
    write_staged_bundle,
)
from regpatch.demo.loopback import LocalRegistry
from regpatch.reference import Repository, Tag
from regpatch.storage.layout import Layout

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))


def env_without_prefect(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = "/nonexistent-prefect-home"
    env.update(extra)
    return env


def cli(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([REGPATCH, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def target(registry) -> list[str]:
    return ["--storage", str(registry.root), "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]


def current(registry) -> str:
    return (registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link").read_text()


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory):
    """A 320 MiB patch: long enough to be interrupted while it is staged."""
    wd = tmp_path_factory.mktemp("big")
    base = make_layer(wd / "img", "base.tar.gz", seed=91, size=320 << 20, compresslevel=0)
    delta = make_layer(wd / "img", "delta.tar.gz", seed=92, size=64 << 10)
    img = make_image(wd / "img", [base, delta], os="windows", os_version="10.0.17763.9", seed=92)
    return write_staged_bundle(wd / "staged", img), img


# -- the storage is the only source of truth ----------------------------------------

def test_storage_recreated_at_the_same_path_is_patched_again_through_prefect(tmp_path, scenario, registry,
                                                                              prefect_env):
    """Patch through Prefect, re-create the storage at the same path (a restore from
    backup), patch again: nothing cached anywhere stands in for the storage."""
    env = {**os.environ}
    new = str(scenario["new"].manifest_digest)
    proc = cli("patch", scenario["staged"], *target(registry), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Flow run" in proc.stderr and "publish-tag" in proc.stderr  # it ran as a flow, step by step
    registry.stop()
    subprocess.run(["rm", "-rf", str(registry.root)], check=True)
    registry.start()
    push_with_skopeo(scenario["old_layout"], scenario["ref"], registry.host, REPO, TAG)
    proc = cli("patch", scenario["staged"], *target(registry), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 blobs copied" in proc.stdout
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_garbage_collection_after_a_rollback_then_the_same_patch_again(tmp_path, scenario, registry):
    env = env_without_prefect()
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    assert cli("patch", scenario["staged"], *target(registry), env=env).returncode == 0
    proc = cli("rollback", *target(registry), env=env)
    assert proc.returncode == 0, proc.stderr
    registry.stop()
    gc = subprocess.run(["docker-registry", "garbage-collect", "--delete-untagged", str(registry.config_path)],
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    for layer in scenario["new"].layers:
        assert not (registry.root / f"docker/registry/v2/blobs/sha256/{layer.digest.hex[:2]}/{layer.digest.hex}").exists()
    registry.start()
    proc = cli("patch", scenario["staged"], *target(registry), env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"{old} -> {new}" in proc.stdout
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


# -- stopping ------------------------------------------------------------------------

def _session_processes(sid: int) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 (session), state
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{d.name}: {cmdline}")
    return found


@pytest.mark.parametrize("how, prefect", [("SIGINT-group", False), ("SIGTERM", False),
                                          ("SIGINT-group", True), ("SIGTERM", True)])
def test_interrupt_stops_cleanly_and_the_same_command_resumes(tmp_path, scenario, registry, big_bundle, how,
                                                              prefect, request):
    bundle, img = big_bundle
    env = env_without_prefect()
    if prefect:
        server = request.getfixturevalue("prefect_server")
        env = server.env()
    before = tree_hash(registry.root / "docker")
    p = subprocess.Popen([REGPATCH, "patch", str(bundle), *target(registry), "--verify-command",
                          "skopeo inspect --tls-verify=false docker://{ref}"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    staging = registry.root / ".regpatch/staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the big blob is being staged
        tmp = list(staging.glob(".regpatch-tmp-*")) if staging.is_dir() else []
        if any(t.stat().st_size > 32 << 20 for t in tmp if t.exists()):
            break
        assert p.poll() is None, p.communicate()[0].decode()
        time.sleep(0.05)
    else:
        pytest.fail("the patch never started staging")
    sig = signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM
    t0 = time.monotonic()
    if how.endswith("group"):
        os.killpg(p.pid, sig)  # what a terminal's Ctrl-C does
    else:
        os.kill(p.pid, sig)
    out = p.communicate(timeout=60)[0].decode()
    stopped_in = time.monotonic() - t0
    assert p.returncode == 128 + sig, out
    assert stopped_in < 15, f"took {stopped_in:.1f}s to stop"
    assert out.strip().splitlines()[-1] == (f"regpatch: error: interrupted by {signal.Signals(sig).name}; nothing "
                                            "is half-written: run the same command again to resume"), out
    assert "Traceback" not in out
    time.sleep(0.5)
    assert _session_processes(p.pid) == []  # no child left behind (a temporary server, a verify command)
    assert not list(staging.glob(".regpatch-tmp-*"))
    assert tree_hash(registry.root / "docker") == before
    journal = json.loads(Layout(registry.root).journal(Repository.parse(REPO), Tag.parse(TAG)).read_text())
    assert journal["status"] == "interrupted"
    proc = cli("patch", bundle, *target(registry), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming the patch" in proc.stdout + proc.stderr
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(img.manifest_digest)


# -- verify before the tag moves ------------------------------------------------------

def test_a_concurrent_push_of_the_same_tag_is_never_overwritten(tmp_path, scenario, registry):
    """While the patch verifies the new image, someone pushes another image to the tag:
    the patch stops (exit 4) naming both digests and the pushed image stays."""
    other_layer = make_layer(tmp_path / "other", "l.tar.gz", seed=555, size=32 << 10)
    other = make_image(tmp_path / "other", [other_layer], os="windows", seed=555)
    layout = write_oci_layout(tmp_path / "other-layout", {"other": other})
    push = (f"skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false oci:{layout} "
            f"docker://{registry.host}/{REPO}:{TAG} >/dev/null && true {{ref}}")
    proc = cli("patch", scenario["staged"], *target(registry), "--verify-command", push, env=env_without_prefect())
    assert proc.returncode == 4, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "was moved by another writer" in line
    assert str(scenario["old"].manifest_digest) in line and str(other.manifest_digest) in line
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(other.manifest_digest)
    assert current(registry) == str(other.manifest_digest)


def test_verification_fails_before_the_tag_moves(tmp_path, scenario, registry):
    proc = cli("patch", scenario["staged"], *target(registry), "--verify-command", "false {ref}",
               env=env_without_prefect())
    assert proc.returncode == 5, proc.stderr
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)
    new = str(scenario["new"].manifest_digest)
    assert skopeo_inspect_digest(registry.host, REPO, new) == new  # stored, pullable by digest only


def test_checks_that_need_no_network_come_before_the_first_write(tmp_path, scenario, registry):
    env = env_without_prefect()
    before = tree_hash(registry.root)
    cases = [
        (["--verify-command", "skopeo inspect docker://x"], 2, "must contain {ref}"),
        (["--registry-ca", str(tmp_path / "missing.pem")], 2, "does not exist"),
        (["--registry-auth-file", str(tmp_path / "missing.json")], 2, "does not exist"),
    ]
    for extra, code, message in cases:
        proc = cli("patch", scenario["staged"], *target(registry), *extra, env=env)
        assert proc.returncode == code and message in proc.stderr, (extra, proc.stderr)
    proc = cli("patch", scenario["staged"], "--storage", registry.root, "--registry-url", "ftp://" + registry.host,
               "--repository", REPO, "--tag", TAG, env=env)
    assert proc.returncode == 2 and "must start with https://" in proc.stderr
    assert tree_hash(registry.root) == before


# -- secrets -------------------------------------------------------------------------

def test_no_secret_reaches_prefect_or_the_state_folder(tmp_path, prefect_server):
    password = "Zx9-very-secret-Pa55"
    with LocalRegistry(tmp_path / "authreg", htpasswd=("patcher", password)).start() as reg:
        s = scenario_servercore(tmp_path / "sample", base_size=64 << 10, delta_size=16 << 10)
        push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG, creds=f"patcher:{password}")
        env = prefect_server.env(REGPATCH_REGISTRY_USERNAME="patcher", REGPATCH_REGISTRY_PASSWORD=password,
                                 REG_CREDS=f"patcher:{password}")
        outputs = []
        # a credential inline is refused before any flow run exists
        for extra in (["--verify-command", f"skopeo inspect --tls-verify=false --creds patcher:{password} docker://{{ref}}"],):
            proc = cli("patch", s["staged"], *target(reg), *extra, env=env)
            assert proc.returncode == 2 and "carries a credential inline" in proc.stderr
            outputs.append(proc.stdout + proc.stderr)
        proc = cli("patch", s["staged"], "--storage", reg.root, "--registry-url",
                   f"http://patcher:{password}@{reg.host}", "--repository", REPO, "--tag", TAG, env=env)
        assert proc.returncode == 2, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        # credentials from the environment, and in the verify command as a variable
        proc = cli("patch", s["staged"], *target(reg), "--verify-command",
                   'skopeo inspect --tls-verify=false --creds "$REG_CREDS" docker://{ref}', env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        proc = cli("rollback", *target(reg), env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    for text in outputs:
        assert password not in text
    secret = password.encode()
    for folder in (prefect_server.home, reg.root / ".regpatch"):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), f"the password is in {path}"


# -- the environment never leaks into the registry ----------------------------------------

def test_registry_auth_file_in_the_environment_does_not_break_a_process_restart(tmp_path, scenario, registry):
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {}}))
    env = env_without_prefect(REGISTRY_AUTH_FILE=str(auth))
    spec = f"process:pidfile={registry.pidfile},config={registry.config_path}"
    old_pid = int(registry.pidfile.read_text())
    proc = cli("patch", scenario["staged"], *target(registry), "--restart", spec, env=env)
    assert proc.returncode == 0, proc.stderr
    new_pid = int(registry.pidfile.read_text())
    assert new_pid != old_pid
    environ = Path(f"/proc/{new_pid}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith(b"REGISTRY_") for v in environ)
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)


def test_a_storage_and_a_url_of_two_different_registries_are_refused(tmp_path, scenario, registry):
    other = LocalRegistry(tmp_path / "other").start()
    try:
        push_with_skopeo(scenario["new_layout"], scenario["ref"], other.host, REPO, TAG)
        before = tree_hash(registry.root / "docker")
        proc = cli("patch", scenario["staged"], "--storage", registry.root, "--registry-url", other.url,
                   "--repository", REPO, "--tag", TAG, env=env_without_prefect())
        assert proc.returncode == 4, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert f"the registry at {other.url} serves" in line and "different registries" in line
        assert tree_hash(registry.root / "docker") == before
    finally:
        other.stop()


def test_an_empty_folder_is_refused_unless_init(tmp_path, scenario):
    empty = tmp_path / "typo"
    empty.mkdir()
    proc = cli("patch", scenario["staged"], "--storage", empty, "--repository", REPO, "--tag", TAG,
               env=env_without_prefect())
    assert proc.returncode == 4 and "pass --init" in proc.stderr
    assert list(empty.iterdir()) == []


def test_reflink_on_xfs_shares_the_blocks_instead_of_copying(tmp_path, scenario):
    """On a filesystem with reflinks (XFS here, a loop-mounted image) staging clones the
    bundle file: the blob costs no space, and is still hashed as stored."""
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        root = mnt / "registry"
        (root / "docker/registry/v2").mkdir(parents=True)
        bundle = mnt / "bundle"
        big = make_layer(mnt / "img", "base.tar.gz", seed=77, size=96 << 20, compresslevel=0)
        img = make_image(mnt / "img", [big], os="windows", seed=77)
        write_staged_bundle(bundle, img)
        used = lambda: os.statvfs(mnt).f_blocks - os.statvfs(mnt).f_bfree  # noqa: E731
        before = used() * os.statvfs(mnt).f_frsize
        proc = cli("patch", bundle, "--storage", root, "--repository", REPO, "--tag", TAG, env=env_without_prefect())
        assert proc.returncode == 0, proc.stderr
        assert "cloned (reflink)" in proc.stderr
        grown = used() * os.statvfs(mnt).f_frsize - before
        assert grown < 16 << 20, f"the storage grew by {grown} bytes for a 96 MiB blob"
        data = root / f"docker/registry/v2/blobs/sha256/{big.digest.hex[:2]}/{big.digest.hex}/data"
        assert data.read_bytes() == big.path.read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
