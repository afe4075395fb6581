"""regpatch's tar reader against Go's: every hostile construction, and the issue's six end to end.

The reference is tests/support/tarref/main.go, built here with Debian's ``go``
(golang-go, Go 1.19: the toolchain skopeo 1.9.3 is built with), reading with
``archive/tar`` and extracting as containers/storage 1.43 does (what skopeo's
``oci-archive:`` does). For every construction of
tests/support/tarref/constructions.py, plain and gzip-compressed:

* the reader: regpatch reads the same members as Go's ``Next()`` (name once
  cleaned, type, size, link name, sha256 of the data), or refuses;
* the bundle: every name regpatch offers reads the same bytes as the extracted
  tree does through the file system (symlinks resolved by the kernel), or
  regpatch refuses; regpatch never reads an archive Go cannot read or extract.

Archives that real writers make (GNU tar in its five formats, Python's tarfile in
three) must be read, and read as Go reads them: the rules refuse no honest archive.

Then the issue's headline: OCI archives in which a lax reader sees image A and
Go sees image B; skopeo (``inspect --raw`` and ``copy`` to ``dir:``) must show B,
and regpatch must read B or refuse.

Without ``go`` the tests skip, saying so; under CI (``CI`` set) they fail instead:
golang-go belongs in scripts/bootstrap.sh's APT_PACKAGES.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Optional

import pytest

from regpatch.bundle.open import load_bundle, open_source
from regpatch.bundle.tarstream import FILE, TarMember, TarReader
from regpatch.errors import BundleError
from regpatch.demo.images import make_image, make_layer, write_oci_layout
from support.tarref import constructions as tc
from support.tarref.build import GoMissing, build
from support.util import skopeo

GO_KINDS = {"0": "file", "5": "dir", "1": "hardlink", "2": "symlink", "3": "other", "4": "other", "6": "other"}


@pytest.fixture(scope="module")
def tarref() -> Path:
    """The built Go reference (the build is cached across runs)."""
    try:
        return build()
    except GoMissing as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e}; CI must install it (add golang-go to scripts/bootstrap.sh APT_PACKAGES)")
        pytest.skip(f"{e} (the differential suite compares regpatch with Go's archive/tar)")


def go_lines(binary: Path, *args: str) -> list[dict]:
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"tarref {args[0]} failed: {proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def clean(name: str) -> str:
    """A name as extraction cleans it (and as regpatch normalises it)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def regpatch_members(data: bytes) -> list[dict] | BundleError:
    """regpatch's reading as the Go reference prints it, or its refusal."""
    out = []
    try:
        reader = TarReader(_Stream(data), what="t")   # type: ignore[arg-type]
        for m in reader.members():
            body = reader.member_stream(m).read() if m.kind == FILE else b""
            out.append(_as_go(m, body))
    except BundleError as e:
        return e
    return out


def _as_go(m: TarMember, body: bytes) -> dict:
    return {"name": m.name, "kind": m.kind, "size": m.size, "linkname": m.linkname,
            "sha256": hashlib.sha256(body).hexdigest()}


class _Stream:
    """Front to back only, as a decompressor."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk


def go_members(lines: list[dict]) -> tuple[list[dict], Optional[str]]:
    """Go's members in regpatch's terms, and Go's error (None when it read to the end)."""
    members, error = [], None
    for line in lines:
        if "error" in line or "data_error" in line:
            error = line.get("error") or line.get("data_error")
        if "name" not in line:
            continue
        kind = GO_KINDS.get(line["typeflag"], f"type {line['typeflag']!r}")
        members.append({"name": clean(line["name"]), "kind": kind,
                        "size": line["size"] if kind == "file" else 0, "linkname": line["linkname"],
                        "sha256": line["sha256"] if kind == "file" else hashlib.sha256(b"").hexdigest()})
    return members, error


def write_case(tmp: Path, data: bytes, compress: str) -> Path:
    path = tmp / ("a.tar.gz" if compress else "a.tar")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


CASES = tc.constructions()


def check_reader(tarref: Path, path: Path, data: bytes) -> Optional[BundleError]:
    """regpatch's reader reads what Go's Next() reads, or refuses (returned)."""
    theirs, go_error = go_members(go_lines(tarref, "list", str(path)))
    ours = regpatch_members(data)
    if isinstance(ours, BundleError):
        return ours                              # refused: never a different reading
    assert go_error is None, f"regpatch read what Go cannot: Go says {go_error!r}; regpatch read {ours}"
    assert ours == theirs
    return None


def check_bundle(tarref: Path, path: Path, scratch: Path) -> Optional[BundleError]:
    """Every name the bundle offers reads what the extracted tree reads, or regpatch refuses."""
    out = scratch / "extracted"
    out.mkdir()
    lines = go_lines(tarref, "extract", str(path), str(out))
    try:
        src = open_source(str(path))
        ours = {name: hashlib.sha256(src.read_bytes(name, 1 << 20)).hexdigest() for name in src.list()}
    except BundleError as e:
        return e
    failed = [line for line in lines if "error" in line or "untar_error" in line]
    assert not failed, f"regpatch read an archive skopeo cannot extract: {failed}; regpatch read {sorted(ours)}"
    theirs = {line["path"]: line["sha256"] for line in lines if "sha256" in line and "path" in line}
    assert ours == theirs
    return None


@pytest.mark.parametrize("compress", ["", "gzip"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reader_reads_what_go_reads_or_refuses(case, compress, tarref, tmp_path):
    check_reader(tarref, write_case(tmp_path, case.data, compress), case.data)


@pytest.mark.parametrize("compress", ["", "gzip"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bundle_reads_what_the_extracted_tree_reads_or_refuses(case, compress, tarref, tmp_path):
    check_bundle(tarref, write_case(tmp_path, case.data, compress), tmp_path)


# -- archives real writers make: read, and read as Go reads them ----------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A folder like an OCI layout, with what writers encode specially: long and UTF-8 names,
    a symlink, a hard link, an empty folder."""
    root = tmp_path_factory.mktemp("writers") / "src"
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "index.json").write_bytes(A_JSON)
    (root / "blobs" / "sha256" / ("a" * 64)).write_bytes(b"blob\n" * 300)
    (root / "empty").mkdir()
    (root / "caf\u00e9.txt").write_text("\u00fc\n")
    os.symlink("index.json", root / "link")
    os.link(root / "index.json", root / "hard")
    deep = root / ("n" * 120)
    deep.mkdir()
    (deep / ("m" * 120)).write_bytes(b"deep\n")
    return root


A_JSON = b'{"schemaVersion": 2, "manifests": []}\n'
GNU_FORMATS = ["gnu", "oldgnu", "posix", "ustar", "v7"]


def _gnu_tar(tree: Path, fmt: str, dest: Path) -> Path:
    long_ok = fmt in ("gnu", "oldgnu", "posix")
    exclude = [] if long_ok else [f"--exclude=./{'n' * 120}"]
    subprocess.run(["tar", f"--format={fmt}", *exclude, "-cf", str(dest), "-C", str(tree), "."], check=True,
                   capture_output=True)
    return dest


def _python_tar(tree: Path, fmt: int, dest: Path) -> Path:
    with tarfile.open(dest, "w", format=fmt) as t:
        for p in sorted(tree.rglob("*")):
            name = p.relative_to(tree).as_posix()
            if fmt == tarfile.USTAR_FORMAT and len(name) > 100 and "/" not in name[-100:]:
                continue
            t.add(p, name, recursive=False)
    return dest


WRITERS = [f"gnu-tar-{f}" for f in GNU_FORMATS] + ["python-gnu", "python-pax", "python-ustar"]


@pytest.mark.parametrize("writer", WRITERS)
def test_archives_real_writers_make_are_read_as_go_reads_them(writer, tree, tarref, tmp_path):
    dest = tmp_path / "w.tar"
    if writer.startswith("gnu-tar-"):
        _gnu_tar(tree, writer[len("gnu-tar-"):], dest)
    else:
        _python_tar(tree, {"python-gnu": tarfile.GNU_FORMAT, "python-pax": tarfile.PAX_FORMAT,
                           "python-ustar": tarfile.USTAR_FORMAT}[writer], dest)
    assert check_reader(tarref, dest, dest.read_bytes()) is None
    assert check_bundle(tarref, dest, tmp_path) is None
    assert open_source(str(dest)).read_bytes("link", 100) == A_JSON


# -- the headline, through skopeo ---------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two small OCI images, A and B, their index.json documents and every blob file."""
    w = tmp_path_factory.mktemp("ab")
    out = {}
    for key, seed in (("A", 81), ("B", 82)):
        img = make_image(w / "s", [make_layer(w / "s", f"l{key}", seed=seed, size=2048, oci=True)], fmt="oci",
                         name=key)
        layout = write_oci_layout(w / f"layout-{key}", {key.lower(): img})
        out[key] = (img, (layout / "index.json").read_bytes())
    blobs = {}
    for key in ("A", "B"):
        for p in sorted((w / f"layout-{key}" / "blobs" / "sha256").iterdir()):
            blobs[p.name] = p.read_bytes()
    out["blobs"] = blobs
    return out


def _headline_members(kind: str, index_a: bytes, index_b: bytes) -> bytes:
    """index.json members where a lax reader sees A and Go sees B (constructions.py's headers)."""
    e, pax, long, hdr = tc.entry, tc.pax, tc.gnu_long, tc.header
    if kind == "pax-x-then-x":
        return (pax(("path", "index.json")) + pax(("comment", "2")) + e("decoy-a.json", index_a)
                + pax(("path", "decoy-b.json")) + pax(("comment", "2")) + e("index.json", index_b))
    if kind == "gnu-long-name-and-pax-path":
        return (pax(("path", "decoy-a.json")) + long("index.json") + e("hdr-a", index_b)
                + pax(("path", "index.json")) + long("decoy-b.json") + e("hdr-b", index_a))
    if kind == "v7-nul-type-dir-with-data":
        swallowed = e("index.json", index_a)
        return e("pad/", e("index.json", index_b) + hdr("junk", size=len(swallowed)), typeflag=b"\0") + swallowed
    if kind == "star-prefix-131":
        return e("index.json", index_a) + e("index.json", index_b, fmt=tc.STAR, prefix=b"x" * 128 + b"/..")
    if kind == "pax-x-then-g":
        return (pax(("path", "index.json")) + pax(("comment", "g"), typeflag=b"g") + e("decoy-a.json", index_a)
                + pax(("path", "decoy-b.json")) + pax(("comment", "g"), typeflag=b"g") + e("index.json", index_b))
    assert kind == "symlink-dotdot-through-symlinked-folder"
    return (tc.dir_entry("d/") + tc.dir_entry("d/e/") + e("ia.json", index_a) + e("d/ia.json", index_b)
            + tc.symlink("s", "d/e") + tc.symlink("index.json", "s/../ia.json"))


HEADLINE = ["pax-x-then-x", "gnu-long-name-and-pax-path", "v7-nul-type-dir-with-data", "star-prefix-131",
            "pax-x-then-g", "symlink-dotdot-through-symlinked-folder"]
LAX_READS_A_WITH_TARFILE = {"pax-x-then-x", "gnu-long-name-and-pax-path", "star-prefix-131", "pax-x-then-g"}


def _archive(images, kind: str) -> bytes:
    body = tc.entry("oci-layout", b'{"imageLayoutVersion": "1.0.0"}') + tc.dir_entry("blobs/")
    body += tc.dir_entry("blobs/sha256/")
    for name, data in images["blobs"].items():
        body += tc.entry(f"blobs/sha256/{name}", data)
    return body + _headline_members(kind, images["A"][1], images["B"][1]) + tc.END


def _tarfile_index(path: Path) -> bytes:
    """What Python's tarfile (a lax reader) takes for index.json: the last member of that name."""
    found = None
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.name.lstrip("./") == "index.json" and m.isfile():
                found = t.extractfile(m).read()
    assert found is not None
    return found


@pytest.mark.parametrize("compress", ["", "gzip"])
@pytest.mark.parametrize("kind", HEADLINE)
def test_skopeo_sees_b_and_regpatch_reads_b_or_refuses(kind, compress, images, tmp_path):
    img_a, img_b = images["A"][0], images["B"][0]
    path = write_case(tmp_path, _archive(images, kind), compress)
    if kind in LAX_READS_A_WITH_TARFILE:
        assert _tarfile_index(path) == images["A"][1]          # the construction does split readers
    raw = skopeo("inspect", "--raw", f"oci-archive:{path}").stdout
    assert hashlib.sha256(raw).hexdigest() == img_b.manifest_digest.hex
    skopeo("copy", "--quiet", f"oci-archive:{path}", f"dir:{tmp_path / 'out'}")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == img_b.manifest_bytes
    try:
        bundle = load_bundle(open_source(str(path)))
    except BundleError as e:
        assert "ambiguous" in str(e) or kind == "symlink-dotdot-through-symlinked-folder", str(e)
        return
    assert bundle.top.digest == img_b.manifest_digest, f"regpatch read {bundle.top.digest}, not B"
    assert bundle.top.digest != img_a.manifest_digest
