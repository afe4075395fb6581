"""Hostile bundles and careless operators, end to end, against a real docker-registry.

Every refusal runs the CLI's stable surface (``regpatch patch BUNDLE --storage ROOT
--registry-url URL --repository R --tag T``), expects its exit code and ONE
``regpatch: error:`` line, hashes the storage's whole ``docker/`` tree before
and after (byte-identical), and pulls the previous image with skopeo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from support.util import error_line, skopeo_inspect_digest, skopeo_pull, tree_hash
from test_registry_api import ISSUER, SERVICE, CustomRegistry, TokenServer, self_signed, write_pem

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import push_with_skopeo
from regpatch.demo.loopback import LocalRegistry
from regpatch.digest import Digest
from regpatch.engine.plan import make_plan, url_refusals
from regpatch.errors import AuthError, ManifestError, VerificationError
from regpatch.manifest import DOCKER_FOREIGN_LAYER, DOCKER_LAYER, OCI_LAYER, OCI_MANIFEST, parse_manifest
from regpatch.reference import Repository, Tag
from regpatch.registry.client import RegistryClient
from regpatch.registry.credentials import credentials_from_helper, load_credentials
from regpatch.registry.url_policy import url_policy_from_config
from regpatch.registry.verify_command import run_verify_command
from regpatch.storage.store import RegistryStore

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO, TAG = "servercore", "ltsc2019"
USER, PASSWORD = "patcher", "Sup3r-s3cret-PW"


def run(capsys, *args) -> tuple[int, str, str]:
    code = regpatch_main(["patch", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def patch(capsys, registry, bundle, *extra, repository=REPO, tag=TAG):
    return run(capsys, bundle, "--storage", registry.root, "--registry-url", registry.url,
               "--repository", repository, "--tag", tag, *extra)


def assert_refused(capsys, registry, scenario, tmp_path, bundle, *extra, code, needle,
                   repository=REPO, tag=TAG) -> str:
    """Refused with ``code`` and one error line holding ``needle``; docker/ unchanged; old image pulls."""
    before = tree_hash(registry.root / "docker")
    got, out, err = patch(capsys, registry, bundle, *extra, repository=repository, tag=tag)
    assert got == code, err
    line = error_line(err)
    assert needle in line, line
    # (no "Traceback" check in-process: Prefect's console handler may still hold the
    # stream of an earlier test's capsys; the console-script tests below check it)
    assert tree_hash(registry.root / "docker") == before
    old = str(scenario["old"].manifest_digest)
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
    skopeo_pull(registry.host, REPO, TAG, tmp_path / f"pulled-{uuid.uuid4().hex[:8]}")
    return line


def copy_bundle(scenario, tmp_path, name="bundle") -> Path:
    dest = tmp_path / name
    shutil.copytree(scenario["staged"], dest)
    return dest


MANIFEST = "delta.tar.gz.manifest.json"
CONFIG = "delta.tar.gz.config.json"


def edit_manifest(bundle: Path, edit) -> None:
    p = bundle / MANIFEST
    doc = json.loads(p.read_bytes())
    edit(doc)
    p.write_bytes(json.dumps(doc, indent=2).encode())


# -- names -------------------------------------------------------------------------

@pytest.mark.parametrize("repository,tag", [
    (REPO + "\n", TAG), (REPO + "\r\n", TAG), (REPO, TAG + "\n"), (REPO, TAG + "\x00"),
    ("serverc\u043ere", TAG), (REPO, TAG + "\u2028"), (REPO, "ltsc2019\nregpatch: error: forged"),
], ids=repr)
def test_names_followed_by_anything_are_refused(capsys, registry, scenario, tmp_path, repository, tag):
    line = assert_refused(capsys, registry, scenario, tmp_path, scenario["staged"], code=2,
                          needle="invalid", repository=repository, tag=tag)
    assert "forged" not in line or "\\nregpatch: error: forged" in line


def test_registry_url_followed_by_a_newline_is_refused(capsys, registry, scenario, tmp_path):
    before = tree_hash(registry.root / "docker")
    code, out, err = run(capsys, scenario["staged"], "--storage", registry.root, "--registry-url",
                         registry.url + "\n", "--repository", REPO, "--tag", TAG)
    assert code == 2 and "control character" in error_line(err)
    assert tree_hash(registry.root / "docker") == before
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_a_name_the_registry_would_refuse_is_refused_before_any_write(capsys, registry, scenario, tmp_path):
    """Registry 2.8.2 with its blob descriptor cache (the session's registry has it)
    answers HTTP 500 for a name longer than 255 characters as docker.io/library/NAME:
    238 characters without a '/'. Refused before the first write, through the URL or the
    registry's config.yml; 237 characters patch and pull."""
    long_repo = "a" * 238
    assert_refused(capsys, registry, scenario, tmp_path, scenario["staged"], code=2,
                   needle="answers HTTP 500 for it", repository=long_repo)
    before = tree_hash(registry.root / "docker")
    code, out, err = run(capsys, scenario["staged"], "--registry-config", registry.config_path,
                         "--repository", "windows/" + "s" * 238, "--tag", TAG)
    assert code == 2 and "sets storage.cache.blobdescriptor" in error_line(err), err
    assert tree_hash(registry.root / "docker") == before
    code, out, err = patch(capsys, registry, scenario["staged"], repository="a" * 237)
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, "a" * 237, TAG) == str(scenario["new"].manifest_digest)


def test_longest_valid_names_patch_and_pull(capsys, registry, scenario, tmp_path):
    """A 255-character repository and a 200-character one with a 128-character tag:
    the state folder's lock and journal names stay short."""
    new = str(scenario["new"].manifest_digest)
    long_repo, long_tag = "r" * 255, "T" * 128
    # registry 2.8.2's in-memory blob descriptor cache normalises the name to
    # docker.io/library/<name> and then finds it too long (HTTP 500): a 255-character
    # name works only on a registry without that cache
    nocache = LocalRegistry(tmp_path / "nocache", blobdescriptor_cache=False).start()
    try:
        code, out, err = patch(capsys, nocache, scenario["staged"], "--init", repository=long_repo,
                               tag=long_tag)
        assert code == 0, err
        # skopeo counts the registry host in the 255 characters: check this one over raw HTTP
        resp = httpx.get(f"{nocache.url}/v2/{long_repo}/manifests/{long_tag}",
                         headers={"Accept": scenario["new"].media_type})
        assert resp.status_code == 200 and str(Digest.of_bytes(resp.content)) == new
        for layer in scenario["new"].layers:
            blob = httpx.get(f"{nocache.url}/v2/{long_repo}/blobs/{layer.digest}")
            assert blob.status_code == 200 and Digest.of_bytes(blob.content) == layer.digest
        names = os.listdir(nocache.root / ".regpatch" / "journal") + os.listdir(nocache.root / ".regpatch" / "locks")
        assert names and all(len(n) < 200 for n in names)
    finally:
        nocache.stop()
    repo200 = "windows/" + "s" * 192
    code, out, err = patch(capsys, registry, scenario["staged"], repository=repo200, tag=long_tag)
    assert code == 0, err
    assert skopeo_inspect_digest(registry.host, repo200, long_tag) == new
    skopeo_pull(registry.host, repo200, long_tag, tmp_path / "pulled")


# -- manifests, configs and layouts read the way Go reads them ------------------------

def _deep_manifest(bundle: Path) -> str:
    (bundle / MANIFEST).write_bytes(b'{"schemaVersion":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    return "nested more than 64 levels"


def _both_layer_lists(bundle: Path) -> str:
    p = bundle / MANIFEST
    # Go would read the second list (LAYERS, the last of the two), Python the first
    p.write_bytes(p.read_bytes().replace(b'"layers"', b'"LAYERS": [], "layers"', 1))
    return "differ only in letter case"


def _look_alike_key(bundle: Path) -> str:
    p = bundle / MANIFEST
    p.write_bytes(p.read_bytes().replace(b'"layers"', '"layer\u017f"'.encode(), 1))
    return "Go's encoding/json reads it as 'layers'"


def _replace_config(bundle: Path, config: bytes) -> None:
    """Write a new config and point the manifest at it (digest and size)."""
    (bundle / CONFIG).write_bytes(config)

    def edit(doc):
        doc["config"]["digest"], doc["config"]["size"] = str(Digest.of_bytes(config)), len(config)
    edit_manifest(bundle, edit)


def _deep_config(bundle: Path) -> str:
    _replace_config(bundle, b'{"architecture":"amd64","os":"windows","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    return "nested more than 64 levels"


def _duplicate_config_key(bundle: Path) -> str:
    _replace_config(bundle, (bundle / CONFIG).read_bytes().replace(b'"os":', b'"OS":"linux","os":', 1))
    return "differ only in letter case"


def _ordinary_layer_with_urls_nowhere(bundle: Path) -> str:
    def edit(doc):
        doc["layers"].append({"mediaType": DOCKER_LAYER, "size": 1234, "urls": ["https://example.invalid/l"],
                              "digest": str(Digest.of_bytes(b"bytes nobody has"))})
    edit_manifest(bundle, edit)
    return "not a foreign / non-distributable layer"


@pytest.mark.parametrize("breaker", [_deep_manifest, _both_layer_lists, _look_alike_key, _deep_config,
                                     _duplicate_config_key, _ordinary_layer_with_urls_nowhere],
                         ids=lambda f: f.__name__.strip("_"))
def test_hostile_json_is_refused(capsys, registry, scenario, tmp_path, breaker):
    bundle = copy_bundle(scenario, tmp_path)
    needle = breaker(bundle)
    assert_refused(capsys, registry, scenario, tmp_path, bundle, code=3, needle=needle)


def test_deep_index_json_is_refused(capsys, registry, scenario, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(scenario["new_layout"], layout)
    (layout / "index.json").write_bytes(b'{"schemaVersion":2,"manifests":' + b"[" * 200_000
                                        + b"]" * 200_000 + b"}")
    assert_refused(capsys, registry, scenario, tmp_path, layout, code=3,
                   needle="index.json: JSON nested more than 64 levels")


# -- the storage ----------------------------------------------------------------------

def test_state_dir_inside_docker_is_refused(capsys, registry, scenario, tmp_path):
    state = registry.root / "docker" / "registry" / "v2" / "repositories" / ".regpatch"
    assert_refused(capsys, registry, scenario, tmp_path, scenario["staged"], "--state-dir", state,
                   code=2, needle="inside the registry's storage tree")
    assert not state.exists()


def test_blobs_on_another_filesystem_through_a_symlink(capsys, registry, scenario, tmp_path):
    """The operator moved blobs/ to another disk (tmpfs here) and left a symlink."""
    v2 = registry.root / "docker" / "registry" / "v2"
    other = Path("/dev/shm") / f"regpatch-test-blobs-{uuid.uuid4().hex}"
    assert os.stat("/dev/shm").st_dev != os.stat(registry.root).st_dev
    shutil.move(str(v2 / "blobs"), str(other))
    try:
        (v2 / "blobs").symlink_to(other, target_is_directory=True)
        code, out, err = patch(capsys, registry, scenario["staged"])
        assert code == 0, err
        new, old = scenario["new"], scenario["old"]
        assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(new.manifest_digest)
        skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")
        skopeo_pull(registry.host, REPO, str(old.manifest_digest), tmp_path / "pulled-old")
        for layer in new.layers:  # the new bytes are on the other disk, behind the symlink
            assert (other / "sha256" / layer.digest.hex[:2] / layer.digest.hex / "data").is_file()
        assert (v2 / "blobs").is_symlink()
    finally:
        if (v2 / "blobs").is_symlink():
            (v2 / "blobs").unlink()
        shutil.rmtree(other, ignore_errors=True)


def test_symlink_planted_below_the_layout_is_refused(capsys, registry, scenario, tmp_path):
    outside = tmp_path / "etc"
    outside.mkdir()
    delta = scenario["new"].layers[1].digest
    planted = registry.root / f"docker/registry/v2/repositories/{REPO}/_layers/sha256/{delta.hex}"
    planted.symlink_to(outside, target_is_directory=True)
    assert_refused(capsys, registry, scenario, tmp_path, scenario["staged"], code=3,
                   needle=f"{planted} is a symlink")
    assert list(outside.iterdir()) == []


def test_enotdir_in_the_storage(capsys, registry, scenario, tmp_path):
    index = registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/index"
    moved = tmp_path / "index-moved"
    index.rename(moved)
    index.write_text("a file where the tag's index folder must be")
    try:
        line = assert_refused(capsys, registry, scenario, tmp_path, scenario["staged"], code=4,
                              needle="[ENOTDIR]")
        assert "storage layout is damaged" in line
    finally:
        index.unlink()
        moved.rename(index)


def _console(prefect_server, *args, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("regpatch")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=prefect_server.env(**(env_extra or {})))


def test_read_only_filesystem(registry, scenario, tmp_path, prefect_server):
    """docker/ mounted read-only (in a private mount namespace): exit 4, one line, what to do."""
    docker = registry.root / "docker"
    before = tree_hash(docker)
    exe = Path(sys.executable).with_name("regpatch")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"')
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(docker),
         str(exe), "patch", str(scenario["staged"]), "--storage", str(registry.root),
         "--registry-url", registry.url, "--repository", REPO, "--tag", TAG],
        capture_output=True, text=True, timeout=300, env=prefect_server.env())
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc.stderr)
    assert "[EROFS]" in line and "remount it read-write" in line
    assert "Traceback" not in proc.stderr
    assert tree_hash(docker) == before
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_immutable_folder_is_eperm(capsys, registry, scenario, tmp_path):
    """chattr +i: even root may not add a revision link there."""
    revisions = registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/revisions/sha256"
    subprocess.run(["chattr", "+i", str(revisions)], check=True)
    try:
        code, out, err = patch(capsys, registry, scenario["staged"])
    finally:
        subprocess.run(["chattr", "-i", str(revisions)], check=True)
    assert code == 4, err
    line = error_line(err)
    assert "[EPERM]" in line and "immutable" in line and str(revisions) in line
    # blobs and layer links may have been added (a patch only adds); the tag never moved
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["old"].manifest_digest)
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


def test_permission_denied_as_another_user(scenario, tmp_path, prefect_server):
    """Run as 'nobody' on a storage owned by root: EACCES on the first write, exit 4.

    Everything 'nobody' must reach lives in a folder of its own under /var/tmp: pytest's
    temp folders are private, and other pytest sessions reset their modes at any time."""
    work = Path(tempfile.mkdtemp(prefix="regpatch-nobody-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    reg = LocalRegistry(work / "registry").start()
    try:
        push_with_skopeo(scenario["old_layout"], scenario["ref"], reg.host, REPO, TAG)
        bundle = shutil.copytree(scenario["staged"], work / "bundle")
        state, home = work / "nobody-state", work / "nobody-home"
        locks = reg.root / ".regpatch" / "locks"  # the repository lock is always kept here
        for d in (state, home, locks):
            d.mkdir(parents=True)
            os.chmod(d, 0o777)
        before = tree_hash(reg.root / "docker")
        exe = Path(sys.executable).with_name("regpatch")
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(exe), "patch",
             str(bundle), "--storage", str(reg.root), "--state-dir", str(state),
             "--registry-url", reg.url, "--repository", REPO, "--tag", TAG],
            capture_output=True, text=True, timeout=300,
            env=prefect_server.env(HOME=str(home), PREFECT_HOME=str(home / ".prefect")))
        assert proc.returncode == 4, proc.stderr
        line = error_line(proc.stderr)
        assert "[EACCES]" in line and "run regpatch as the user that owns the registry storage" in line
        assert "Traceback" not in proc.stderr
        assert tree_hash(reg.root / "docker") == before
        skopeo_pull(reg.host, REPO, TAG, tmp_path / "pulled")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- control characters ------------------------------------------------------------------

def test_file_names_cannot_forge_output(capsys, registry, scenario, tmp_path):
    bundle = copy_bundle(scenario, tmp_path)
    hostile = "delta\nregpatch: error: nothing wrong, patched OK\n.tar.gz"
    (bundle / "delta.tar.gz").rename(bundle / hostile)
    (bundle / "delta.tar.gz.digest").rename(bundle / f"{hostile}.digest")
    data = bytearray((bundle / hostile).read_bytes())
    data[100] ^= 0xFF
    (bundle / hostile).write_bytes(bytes(data))
    (bundle / "orphan\nregpatch: error: forged too.digest").write_text("sha256:" + "0" * 64)
    line = assert_refused(capsys, registry, scenario, tmp_path, bundle, code=3, needle="digest mismatch")
    assert "delta\\nregpatch: error: nothing wrong, patched OK\\n.tar.gz" in line
    _, _, err = patch(capsys, registry, bundle)
    for l in err.splitlines():
        assert not l.startswith("regpatch: error: nothing wrong") and not l.startswith("regpatch: error: forged")
        assert not l.startswith(".tar.gz")


# -- the registry's URL policy -------------------------------------------------------------

URLS = [
    "https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:abc",
    "https://go.microsoft.com/fwlink/?linkid=1",
    "http://mcr.microsoft.com/layer",
    "https://evil.example/layer",
    "https://mcr.microsoft.com.evil.example/layer",
    "https://blocked.mcr.microsoft.com/layer",
    "ftp://mcr.microsoft.com/layer",
    "https://mcr.microsoft.com/layer#fragment",
    "https://mcr.microsoft.com:44x/layer",
    "HTTPS://MCR.microsoft.com/layer",
]
POLICIES = {
    "default": None,  # no validation section: the registry allows no URL at all
    "rules": {"manifests": {"urls": {"allow": [r"^https?://([^/]+\.)?microsoft\.com/"],
                                     "deny": [r"^https://blocked\."]}}},
    "deny-only": {"manifests": {"urls": {"deny": [r"evil"]}}},
    "disabled": {"disabled": True},
}


def _push_blob(client: httpx.Client, url: str, repo: str, data: bytes) -> None:
    r = client.post(f"{url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    loc = loc if loc.startswith("http") else url + loc
    sep = "&" if "?" in loc else "?"
    r = client.put(f"{loc}{sep}digest={Digest.of_bytes(data)}", content=data,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("policy", list(POLICIES), ids=str)
def test_url_policy_agrees_with_the_registrys_own_push_validation(tmp_path, policy):
    """For each URL and manifest kind, the real registry's answer to a push (201 or an
    error) equals what make_plan decides from the same config.yml."""
    extra = {"validation": POLICIES[policy]} if POLICIES[policy] is not None else {}
    reg = CustomRegistry(tmp_path / "reg", extra=extra).start()
    try:
        config_policy = url_policy_from_config(reg.config_path)
        config = b'{"architecture":"amd64","os":"windows","rootfs":{"type":"layers","diff_ids":[]}}'
        layer = b"an ordinary layer the registry holds"
        disagreements, accepted = [], 0
        with httpx.Client(timeout=30) as client:
            _push_blob(client, reg.url, "policy/test", config)
            _push_blob(client, reg.url, "policy/test", layer)
            for oci in (False, True):
                for url in URLS:
                    doc = {"schemaVersion": 2,
                           "mediaType": OCI_MANIFEST if oci else
                           "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json" if oci else
                                      "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": str(Digest.of_bytes(config))},
                           "layers": [{"mediaType": OCI_LAYER if oci else DOCKER_FOREIGN_LAYER,
                                       "size": 5, "digest": str(Digest.of_bytes(b"never")), "urls": [url]},
                                      {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(layer),
                                       "digest": str(Digest.of_bytes(layer))}]}
                    raw = json.dumps(doc).encode()
                    r = client.put(f"{reg.url}/v2/policy/test/manifests/t", content=raw,
                                   headers={"Content-Type": doc["mediaType"]})
                    registry_accepts = r.status_code == 201
                    accepted += registry_accepts
                    ours = url_refusals([parse_manifest(raw, what="m")], config_policy)
                    if registry_accepts != (not ours):
                        disagreements.append((oci, url, r.status_code, r.text[:200], ours))
        assert not disagreements
        # the cases do discriminate: the default config refuses every URL, the others some
        assert (accepted == 0) if policy == "default" else (0 < accepted < 2 * len(URLS))
    finally:
        reg.stop()


def test_make_plan_refuses_what_the_registry_would_refuse(registry, scenario, tmp_path):
    """The core refusal (the CLI flag is wired by the integrator): before any write."""
    bundle = copy_bundle(scenario, tmp_path)

    def edit(doc):
        doc["layers"][0]["mediaType"] = DOCKER_FOREIGN_LAYER
        doc["layers"][0]["urls"] = ["https://evil.example/base.tar.gz"]
    edit_manifest(bundle, edit)
    before = tree_hash(registry.root / "docker")
    store = RegistryStore(registry.root)
    loaded = load_bundle(LocalFolderSource(bundle))
    policy = url_policy_from_config(registry.config_path)
    with pytest.raises(ManifestError) as e:
        make_plan(loaded, store, Repository.parse(REPO), Tag.parse(TAG), url_policy=policy)
    assert "'https://evil.example/base.tar.gz'" in str(e.value) and "allows no URL at all" in str(e.value)
    p = make_plan(loaded, store, Repository.parse(REPO), Tag.parse(TAG), url_policy=policy,
                  ignore_url_policy=True)
    assert any("URL policy overridden" in w for w in p.warnings)
    assert tree_hash(registry.root / "docker") == before
    skopeo_pull(registry.host, REPO, TAG, tmp_path / "pulled")


# -- secrets: credential helpers and the verify command -------------------------------------

HELPER = textwrap.dedent('''\
    #!{python}
    import json, sys, time
    mode = open({mode!r}).read().strip()
    server = sys.stdin.read()
    with open({log!r}, "a") as f:
        f.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
    if mode == "ok":
        print(json.dumps({{"ServerURL": server, "Username": {user!r}, "Secret": {password!r}}}))
    elif mode == "token":
        print(json.dumps({{"ServerURL": server, "Username": "<token>", "Secret": {identity!r}}}))
    elif mode == "lowercase-keys":
        print(json.dumps({{"serverurl": server, "username": {user!r}, "secret": {password!r}}}))
    elif mode == "notfound":
        print("credentials not found in native keychain")
        sys.exit(1)
    elif mode == "fail":
        print("error: token {password} expired", file=sys.stderr)
        print("cannot unlock {password}")
        sys.exit(2)
    elif mode == "garbage":
        print("user={user} password={password}")
    elif mode == "hang":
        time.sleep(60)
''')
IDENTITY = "identity-token-ABC123-secret"


@pytest.fixture
def helper(tmp_path):
    """A docker-credential-regpatchtest on a PATH folder; ``helper.mode(...)`` switches its answer."""
    folder = tmp_path / "helper-bin"
    folder.mkdir()
    mode, log = tmp_path / "helper-mode", tmp_path / "helper.log"
    mode.write_text("ok")
    exe = folder / "docker-credential-regpatchtest"
    exe.write_text(HELPER.format(python=sys.executable, mode=str(mode), log=str(log), user=USER,
                                 password=PASSWORD, identity=IDENTITY))
    exe.chmod(0o755)

    class Helper:
        path = folder
        env = {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

        @staticmethod
        def mode(m: str) -> None:
            mode.write_text(m)

        @staticmethod
        def calls() -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

    return Helper


@pytest.fixture
def basic_registry(tmp_path, scenario):
    reg = LocalRegistry(tmp_path / "basic", htpasswd=(USER, PASSWORD)).start()
    try:
        push_with_skopeo(scenario["old_layout"], scenario["ref"], reg.host, REPO, TAG,
                         creds=f"{USER}:{PASSWORD}")
        yield reg
    finally:
        reg.stop()


@pytest.mark.parametrize("where", ["credHelpers", "credsStore"])
def test_credential_helper_against_an_htpasswd_registry(tmp_path, helper, basic_registry, scenario, where,
                                                         caplog):
    cfg = tmp_path / "config.json"
    doc = ({"credHelpers": {basic_registry.host: "regpatchtest"}} if where == "credHelpers"
           else {"auths": {basic_registry.host: {}}, "credsStore": "regpatchtest"})
    cfg.write_text(json.dumps(doc))
    for mode in ("ok", "lowercase-keys"):
        helper.mode(mode)
        creds = load_credentials(basic_registry.host, auth_file=cfg, env=helper.env)
        assert creds.username == USER and PASSWORD not in repr(creds)
        with RegistryClient(basic_registry.url, credentials=creds) as client:
            report = client.verify_image(REPO, TAG, scenario["old"].manifest_digest)
        assert report.blobs_verified == 3
    assert helper.calls()[-1] == f"get {basic_registry.host}"
    # no entry in the helper: anonymous, and the registry then says so
    helper.mode("notfound")
    assert load_credentials(basic_registry.host, auth_file=cfg, env=helper.env) is None
    with RegistryClient(basic_registry.url) as client, pytest.raises(AuthError, match="requires authentication"):
        client.check()
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("mode,needle", [
    ("fail", "exited with code 2"), ("garbage", "did not answer"), ("token", "identity token"),
])
def test_credential_helper_failures_never_show_its_output(tmp_path, helper, basic_registry, scenario,
                                                          mode, needle):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {basic_registry.host: "regpatchtest"}}))
    helper.mode(mode)
    with pytest.raises(AuthError) as e:
        creds = load_credentials(basic_registry.host, auth_file=cfg, env=helper.env)
        with RegistryClient(basic_registry.url, credentials=creds) as client:
            client.verify_image(REPO, TAG, scenario["old"].manifest_digest)
    msg = str(e.value)
    assert needle in msg and PASSWORD not in msg and IDENTITY not in msg
    assert e.value.exit_code == 5


def test_credential_helper_timeout_and_bad_names(tmp_path, helper):
    helper.mode("hang")
    start = time.monotonic()
    with pytest.raises(AuthError, match="did not answer within 1s"):
        credentials_from_helper("regpatchtest", "reg:5000", origin="test", env=helper.env, timeout=1)
    assert time.monotonic() - start < 10
    for bad in ("../../bin/sh", "regpatchtest\n", "", 42):
        with pytest.raises(AuthError, match="not a helper name"):
            credentials_from_helper(bad, "reg:5000", origin="test", env=helper.env)


def test_identity_token_from_a_helper_against_a_token_server(tmp_path, helper, registry, scenario):
    """'<token>' from the helper: the refresh-token grant (POST) of the token server."""
    key, cert = self_signed("regpatch hardening token signer")
    _, cert_path = write_pem(tmp_path / "pki", "token", key, cert)
    grants = []
    with TokenServer(key, cert) as ts:
        handler = ts.httpd.RequestHandlerClass

        def do_POST(self):
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
            grants.append({k: v[0] for k, v in form.items() if k != "refresh_token"})
            ok = form.get("grant_type") == ["refresh_token"] and form.get("refresh_token") == [IDENTITY]
            body = (json.dumps({"access_token": ts.issue("id-user", form.get("service", [""])[0],
                                                         form.get("scope", [""])[0].split())})
                    if ok else '{"error":"invalid_grant"}').encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        handler.do_POST = do_POST
        reg = CustomRegistry(tmp_path / "token-reg", root=registry.root, extra={"auth": {"token": {
            "realm": ts.url, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(cert_path)}}}).start()
        try:
            cfg = tmp_path / "config.json"
            cfg.write_text(json.dumps({"credHelpers": {reg.host: "regpatchtest"}}))
            helper.mode("token")
            creds = load_credentials(reg.host, auth_file=cfg, env=helper.env)
            assert creds.identity_token and IDENTITY not in repr(creds)
            with RegistryClient(reg.url, credentials=creds) as client:
                report = client.verify_image(REPO, TAG, scenario["old"].manifest_digest)
            assert report.blobs_verified == 3
            assert grants and grants[0]["grant_type"] == "refresh_token" and grants[0]["client_id"] == "regpatch"
            wrong = load_credentials(reg.host, auth_file=cfg, env=helper.env)
            object.__setattr__(wrong, "password", "not-the-token")
            with RegistryClient(reg.url, credentials=wrong) as client, \
                    pytest.raises(AuthError, match="refused the identity token"):
                client.check()
        finally:
            reg.stop()


def test_patch_cli_with_a_credential_helper(capsys, tmp_path, helper, basic_registry, scenario, monkeypatch):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {basic_registry.host: "regpatchtest"}}))
    monkeypatch.setenv("PATH", helper.env["PATH"])
    code, out, err = run(capsys, scenario["staged"], "--storage", basic_registry.root, "--registry-url",
                         basic_registry.url, "--registry-auth-file", cfg, "--repository", REPO, "--tag", TAG)
    assert code == 0, err
    assert "verified:" in out and PASSWORD not in out + err
    assert skopeo_inspect_digest(basic_registry.host, REPO, TAG, creds=f"{USER}:{PASSWORD}") == \
        str(scenario["new"].manifest_digest)


def test_verify_command_is_logged_and_reported_redacted(basic_registry, caplog, monkeypatch):
    monkeypatch.setenv("REGPATCH_REGISTRY_PASSWORD", PASSWORD)
    ref = f"{basic_registry.host}/{REPO}:{TAG}"
    with caplog.at_level("INFO", logger="regpatch.registry"):
        run_verify_command(f"skopeo --insecure-policy inspect --tls-verify=false --creds {USER}:{PASSWORD} "
                           "docker://{ref}", ref)
        with pytest.raises(VerificationError) as e:
            run_verify_command("skopeo --insecure-policy inspect --tls-verify=false "
                               f"--creds={USER}:wrong-{PASSWORD} docker://{{ref}}", ref)
        with pytest.raises(VerificationError) as e2:
            run_verify_command(f"echo 'login as {USER}:{PASSWORD} failed' >&2; false {{ref}}", ref)
    # (issue 20: one detector for refusal and redaction; the user name stays, as for -u and in URLs)
    assert f"--creds {USER}:*** docker://" in caplog.text and "verify command passed" in caplog.text
    assert PASSWORD not in caplog.text
    assert f"--creds={USER}:***" in str(e.value) and PASSWORD not in str(e.value)
    assert "exited with code 1" in str(e2.value) and PASSWORD not in str(e2.value)
