"""Every on-disk format the real tools write, patched into a real registry with the CLI.

Inputs are written by skopeo and podman from sample images (regpatch.demo.images);
each case runs ``regpatch patch`` and checks that the registry serves the
source's manifest digest (docker save archives: the converted digest, the
same one a second conversion gives), then pulls with skopeo (``--all`` for
lists) and, for some, podman, which checks every layer against the config's
diff ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from support.util import skopeo, skopeo_inspect_digest, skopeo_inspect_raw, skopeo_pull

from regpatch.bundle.open import load_bundle, open_source
from regpatch.cli import main as regpatch_main
from regpatch.demo.images import make_image, make_index, make_layer, write_oci_layout

pytestmark = pytest.mark.usefixtures("prefect_api")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _podman(root: Path, runroot: str, *args: str, timeout: float = 180) -> str:
    cmd = ["podman", "--root", str(root), "--runroot", runroot, "--storage-driver", "vfs", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr}"
    return proc.stdout


def _archive_index_digest(archive: Path, opener=open) -> str:
    """The digest index.json of an OCI archive names (read independently with tarfile)."""
    with opener(archive, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as t:
        for m in t:
            if m.name.lstrip("./") == "index.json":
                return json.loads(t.extractfile(m).read())["manifests"][0]["digest"]
    raise AssertionError(f"{archive} has no index.json")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every format, written by the real tools: name -> (bundle path, expected digest or None, is list)."""
    w = tmp_path_factory.mktemp("formats")
    base = make_layer(w / "s", "base", seed=71, size=300_000, oci=True)
    delta = make_layer(w / "s", "delta", seed=72, size=80_000, oci=True)
    empty = make_layer(w / "s", "empty", seed=73, size=0, oci=True)
    img = make_image(w / "s", [base, delta, empty], fmt="oci", name="img")
    win = make_image(w / "s", [base], fmt="oci", os="windows", os_version="10.0.17763.5000", name="win")
    index = make_index(w / "s", [img, win], fmt="oci")
    dimg = make_image(w / "s", [make_layer(w / "d", "b", seed=74, size=120_000)], name="dimg")
    dwin = make_image(w / "s", [make_layer(w / "d", "w", seed=75, size=60_000)], os="windows",
                      os_version="10.0.20348.1", name="dwin")
    dlist = make_index(w / "s", [dimg, dwin], fmt="docker")
    layout = write_oci_layout(w / "layout", {"img": img, "list": index})
    dlayout = write_oci_layout(w / "dlayout", {"dlist": dlist})  # a docker list: the only entry
    out: dict[str, tuple[Path, str | None, bool]] = {}

    def copy(*args):
        skopeo("copy", "--quiet", *args, timeout=300)

    copy(f"oci:{layout}:img", f"dir:{w / 'dir-image'}")
    out["dir-image"] = (w / "dir-image", str(img.manifest_digest), False)
    copy("--all", f"oci:{layout}:list", f"dir:{w / 'dir-oci-list'}")
    out["dir-oci-list"] = (w / "dir-oci-list", str(index.manifest_digest), True)
    copy("--all", "--preserve-digests", f"oci:{dlayout}", f"dir:{w / 'dir-docker-list'}")
    out["dir-docker-list"] = (w / "dir-docker-list", str(dlist.manifest_digest), True)
    copy(f"oci:{layout}:img", f"oci-archive:{w / 'img.tar'}")
    out["oci-archive"] = (w / "img.tar", str(img.manifest_digest), False)
    copy("--all", f"oci:{layout}:list", f"oci-archive:{w / 'list.tar'}")
    out["oci-archive-list"] = (w / "list.tar", _archive_index_digest(w / "list.tar"), True)
    with open(w / "img.tar", "rb") as src, gzip.open(w / "img.tar.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    out["oci-archive-gzip"] = (w / "img.tar.gz", str(img.manifest_digest), False)
    subprocess.run(["zstd", "-q", "-f", str(w / "list.tar"), "-o", str(w / "list.tar.zst")], check=True)
    out["oci-archive-list-zstd"] = (w / "list.tar.zst", out["oci-archive-list"][1], True)
    copy(f"oci:{layout}:img", f"docker-archive:{w / 'saved.tar'}:site/app:1")
    out["docker-archive"] = (w / "saved.tar", None, False)
    unpacked = w / "saved-folder"
    unpacked.mkdir()
    with tarfile.open(w / "saved.tar") as t:
        t.extractall(unpacked)
    out["docker-archive-folder"] = (unpacked, None, False)
    with open(w / "saved.tar", "rb") as src, gzip.open(w / "saved.tar.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    out["docker-archive-gzip"] = (w / "saved.tar.gz", None, False)

    with tempfile.TemporaryDirectory(prefix="rp-run-") as runroot:
        root = w / "podman-root"
        _podman(root, runroot, "pull", "-q", f"oci:{layout}:img")
        iid = _podman(root, runroot, "images", "-q").split()[0]
        _podman(root, runroot, "tag", iid, "localhost/site/app:2")
        _podman(root, runroot, "save", "-q", "--format", "docker-archive", "-o", str(w / "p-da.tar"),
                "localhost/site/app:2")
        out["podman-docker-archive"] = (w / "p-da.tar", None, False)
        _podman(root, runroot, "save", "-q", "--format", "oci-archive", "-o", str(w / "p-oa.tar"),
                "localhost/site/app:2")
        out["podman-oci-archive"] = (w / "p-oa.tar", _archive_index_digest(w / "p-oa.tar"), False)
        _podman(root, runroot, "save", "-q", "--format", "docker-dir", "-o", str(w / "p-dd"),
                "localhost/site/app:2")
        out["podman-docker-dir"] = (w / "p-dd", _sha((w / "p-dd" / "manifest.json").read_bytes()), False)
    return out


CASES = ["dir-image", "dir-oci-list", "dir-docker-list", "podman-docker-dir", "oci-archive",
         "oci-archive-list", "oci-archive-gzip", "oci-archive-list-zstd", "podman-oci-archive",
         "docker-archive", "docker-archive-folder", "docker-archive-gzip", "podman-docker-archive"]
PODMAN_PULLS = {"dir-docker-list", "oci-archive-gzip", "docker-archive", "podman-docker-archive"}


@pytest.mark.parametrize("case", CASES)
def test_format_patches_and_pulls(case, inputs, registry, capsys, tmp_path):
    bundle, expected, is_list = inputs[case]
    repo, tag = f"formats/{case}", "t1"
    code = regpatch_main(["patch", str(bundle), "--storage", str(registry.root), "--registry-url",
                          registry.url, "--repository", repo, "--tag", tag, "--init"])  # a new registry
    out, err = capsys.readouterr()
    assert code == 0, err
    served = skopeo_inspect_digest(registry.host, repo, tag)
    if expected is None:  # docker save: converted; the same digest a second conversion gives
        assert f"-> NEW manifest digest {served}" in out or f"{served}" in "".join(
            l for l in out.splitlines() if l.startswith("note: ")), out
        again = load_bundle(open_source(str(bundle)))
        assert again.format == "docker-archive"
        assert served == str(again.top.digest)
        assert again.conversion is not None and str(again.conversion.manifest_digest) == served
        raw = json.loads(skopeo_inspect_raw(registry.host, repo, tag))
        assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert raw["config"]["digest"] == str(again.conversion.image_id)  # the image id is kept
    else:
        assert served == expected
    assert re.search(rf"-> {re.escape(served)}", out), out
    skopeo_pull(registry.host, repo, tag, tmp_path / "pulled", all_images=is_list)
    if case in PODMAN_PULLS:
        with tempfile.TemporaryDirectory(prefix="rp-run-") as runroot:
            _podman(tmp_path / "pr", runroot, "pull", "-q", "--tls-verify=false", f"{registry.host}/{repo}:{tag}")


def test_inspect_every_format_is_fast_and_names_it(inputs, capsys):
    import time

    want = {"dir-image": "dir", "dir-docker-list": "dir", "oci-archive": "oci-archive",
            "oci-archive-list-zstd": "oci-archive", "docker-archive": "docker-archive",
            "docker-archive-folder": "docker-archive", "podman-docker-dir": "dir"}
    for case, fmt in want.items():
        bundle, expected, _ = inputs[case]
        t0 = time.monotonic()
        assert regpatch_main(["inspect", str(bundle), "--json"]) == 0
        took = time.monotonic() - t0
        doc = json.loads(capsys.readouterr().out)
        assert doc["format"] == fmt, case
        assert took < 5, f"inspect of {case} took {took:.1f}s"
        if expected:
            assert doc["images"][0]["manifest_digest"] == expected
        assert doc["total_bytes"] == sum(b["size"] for b in doc["blobs"] if b["in_bundle"])
    assert regpatch_main(["inspect", str(inputs["oci-archive-list"][0]), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "os.version 10.0.17763.5000" in out and "verified every blob" in out


def test_inspect_does_not_import_prefect(inputs):
    import sys

    exe = Path(sys.executable).with_name("regpatch")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys; from regpatch.cli import main; sys.exit(main(sys.argv[1:]))",
                           "inspect", str(inputs["dir-docker-list"][0])], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert not [m for m in imported if m == "prefect" or m.startswith(("prefect.", "prefect_"))], imported
    assert exe.exists()


def test_windows_docker_save_keeps_foreign_layers(registry, capsys, tmp_path):
    """A Windows docker save archive names its base layer's original descriptor in LayerSources
    (no Windows docker here: the archive is written in that layout by Python). The foreign
    layer is kept as a foreign descriptor with its urls, the delta is converted and stored."""
    import io
    import random

    def layer(seed: int, size: int) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as t:
            ti = tarfile.TarInfo(f"Files/f{seed}")
            ti.size = size
            t.addfile(ti, io.BytesIO(random.Random(seed).randbytes(size)))
        return raw.getvalue()

    base, delta = layer(1, 50_000), layer(2, 20_000)
    folder = tmp_path / "win-saved"
    folder.mkdir()
    config = json.dumps({"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.6000",
                         "rootfs": {"type": "layers", "diff_ids": [_sha(base), _sha(delta)]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    (folder / f"{cid}.json").write_bytes(config)
    for i, data in enumerate((base, delta)):
        (folder / f"l{i}").mkdir()
        (folder / f"l{i}" / "layer.tar").write_bytes(data)
    url = "https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:" + "b" * 64
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 1_234_567,
               "digest": "sha256:" + "b" * 64, "urls": [url]}
    (folder / "manifest.json").write_text(json.dumps([{
        "Config": f"{cid}.json", "RepoTags": ["windows/servercore:ltsc2019"],
        "Layers": ["l0/layer.tar", "l1/layer.tar"], "LayerSources": {_sha(base): foreign}}]))

    code = regpatch_main(["patch", str(folder), "--storage", str(registry.root), "--registry-url", registry.url,
                          "--repository", "windows/servercore", "--tag", "ltsc2019", "--init"])
    out, err = capsys.readouterr()
    assert code == 0, err
    served = json.loads(skopeo_inspect_raw(registry.host, "windows/servercore", "ltsc2019"))
    assert served["layers"][0] == foreign           # kept as it was, urls and all
    assert served["config"]["digest"] == f"sha256:{cid}"
    v2 = registry.root / "docker/registry/v2"
    assert not (v2 / "blobs/sha256/bb").exists()    # the foreign layer is not stored
    second = served["layers"][1]["digest"].split(":")[1]
    assert (v2 / f"blobs/sha256/{second[:2]}/{second}/data").is_file()
