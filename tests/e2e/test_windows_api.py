"""End-to-end scenarios under the Windows-API layer (``pytest --windows-api``, see
``tests/support/winapi.py``): the project's code sees the API set of a Windows Python 3.11
(no ``fcntl``, no ``os.pread``, no ``os.killpg``, no ``signal.SIGKILL``, ``O_BINARY``
required) and runs the seam's Windows implementation over the recording Win32 doubles,
against a real docker-registry, checked with skopeo. A test that reached a Unix-only call
fails (the layer records every refusal), so each scenario proves its whole path Windows-clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from support.util import skopeo_inspect_digest, skopeo_pull
from support.winapi import native

from regpatch import platform
from regpatch.cli import main as regpatch_main
from regpatch.platform._windows import CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED, LOCK_OFFSET
from regpatch.signing.keys import load_private_key, load_public_key, sign_bytes, verify_bytes
from regpatch.storage.history import read_history
from regpatch.storage.layout import Layout

pytestmark = pytest.mark.windows_api

REPO, TAG = "servercore", "ltsc2019"
LAYER = Path(__file__).resolve().parents[1] / "support" / "winapi.py"


@pytest.fixture(autouse=True)
def windows_layer():
    """The layer is on: the seam runs its Windows implementation over the recording double."""
    assert platform.is_windows() and native() is not None
    start = len(native().calls)
    yield
    del native().calls[start:]


def run(capsys, *args) -> tuple[int, str, str]:
    code = regpatch_main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def target(registry) -> list[str]:
    return ["--storage", str(registry.root), "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]


def current(registry) -> str:
    return (registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link").read_text()


def assert_windows_path_taken() -> None:
    names = {c.name for c in native().calls}
    assert {"locking", "replace", "change_time"} <= names, names  # the lock, the renames, the markers
    assert {c.kwargs["offset"] for c in native().called("locking")} == {LOCK_OFFSET}


def test_the_staged_bundle_patches_and_pulls(capsys, registry, scenario, tmp_path):
    new = str(scenario["new"].manifest_digest)
    code, out, err = run(capsys, "patch", scenario["staged"], *target(registry),
                         "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}")
    assert code == 0, err
    assert f"{scenario['old'].manifest_digest} -> {new}" in out
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    assert_windows_path_taken()
    flags = native().called("popen")[-1].kwargs["creationflags"]  # the verify command: in a job
    assert flags & CREATE_SUSPENDED and flags & CREATE_NEW_PROCESS_GROUP and native().called("assign_to_job")


def test_an_oci_archive_patches_and_pulls(capsys, registry, scenario, tmp_path):
    archive = tmp_path / "new.tar"  # an OCI archive: the layout's files in one plain tar, read in place
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(Path(scenario["new_layout"]).iterdir()):
            tar.add(entry, arcname=entry.name)
    code, out, err = run(capsys, "patch", archive, *target(registry))
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
    assert_windows_path_taken()


def test_consume_takes_the_bundle_files_and_patches(capsys, registry, scenario, tmp_path):
    bundle = registry.root.parent / "bundle"  # the storage's filesystem: a rename works
    shutil.copytree(scenario["staged"], bundle)
    before = {p.name for p in bundle.rglob("*") if p.is_file()}
    code, out, err = run(capsys, "patch", bundle, *target(registry), "--consume")
    assert code == 0, err
    after = {p.name for p in bundle.rglob("*") if p.is_file()}
    taken = before - after
    assert {"base.tar.gz", "delta.tar.gz"} <= taken  # the layers were taken (renamed into the storage, hashed there)
    assert "regpatch-consumed.jsonl" in after
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_a_rollback_then_the_patch_again(capsys, registry, scenario, tmp_path):
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    assert run(capsys, "patch", scenario["staged"], *target(registry))[0] == 0
    code, out, err = run(capsys, "rollback", *target(registry))
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == old and current(registry) == old
    code, out, err = run(capsys, "patch", scenario["staged"], *target(registry))
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == new
    history = read_history(Layout(registry.root), REPO, TAG)
    assert [(e.action, e.new) for e in history] == [("patch", new), ("rollback", old), ("patch", new)]
    raw = (registry.root / ".regpatch/history.jsonl").read_bytes()
    assert b"\r\n" not in raw and raw.count(b"\n") == 3  # binary descriptors: no CRLF
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_keygen_writes_an_owner_only_key_that_signs(capsys, tmp_path):
    code, out, err = run(capsys, "keygen", "--out", tmp_path / "site")
    assert code == 0, err
    key, pub = tmp_path / "site.key", tmp_path / "site.pub"
    acl = native().called("set_owner_only")
    assert [c.args[0] for c in acl] == [str(key)] and acl[0].kwargs["size"] == 0  # before a byte was written
    assert "(private: its owner only)" in out
    signature = sign_bytes(load_private_key(key), b"regpatch-bundle.json")
    assert verify_bytes(load_public_key(pub), b"regpatch-bundle.json", signature)


def test_ctrl_c_during_the_verify_command_stops_cleanly_and_leaves_no_child(registry, scenario, tmp_path):
    """The command line under the layer, a process of its own; Ctrl-C reaches its console
    group, not the verify command (a process group of its own, in a Job Object): the run
    ends the job, exits 130 and leaves the tag as it was."""
    pids, record = tmp_path / "pids", tmp_path / "record.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "no-prefect"), REGPATCH_WINAPI_RECORD=str(record))
    verify = f"sh -c 'sleep 300 & echo $! >> {pids}; sleep 300' & echo $! >> {pids}; wait; true {{ref}}"
    p = subprocess.Popen([sys.executable, str(LAYER), "patch", str(scenario["staged"]), *target(registry),
                          "--verify-command", verify], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0].decode()
        time.sleep(0.05)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)  # the console's Ctrl-C: regpatch's group
    out = p.communicate(timeout=60)[0].decode()
    assert p.returncode == 130, out
    assert time.monotonic() - t0 < 15
    assert out.strip().splitlines()[-1] == ("regpatch: error: interrupted by SIGINT; nothing is half-written: run "
                                            "the same command again to resume"), out
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while platform.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not platform.pid_alive(pid), f"verify command {pid} outlived the run"
    assert current(registry) == str(scenario["old"].manifest_digest)  # the tag never moved
    seen = json.loads(record.read_text())
    names = [c[0] for c in seen["calls"]]
    assert seen["refused"] == [] and seen["exit"] == 130
    assert {"create_job", "assign_to_job", "resume", "terminate_job", "on_break", "on_console_event"} <= set(names)
