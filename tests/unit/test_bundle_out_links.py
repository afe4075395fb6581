"""regpatch bundle --out: links planted in the output folder are never followed (issue 23, item 1):
a `.regpatch-partial` link made the clean-up delete another folder's files, a `blobs/sha256` link
wrote blobs outside the output, a planted file link overwrote an existing file."""

from __future__ import annotations

import os

import pytest

from regpatch.digest import Digest
from regpatch.errors import UsageError
from regpatch.shuttle.destinations import PARTIAL_DIR, FolderDestination

pytestmark = pytest.mark.posix_only  # symlinks as the test plants them (Windows: junctions, the seam's is_link)


@pytest.fixture
def elsewhere(tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("someone else's file")
    return other


@pytest.mark.parametrize("planted", [PARTIAL_DIR, "blobs", "blobs/sha256"])
def test_a_folder_of_the_bundle_that_is_a_link_is_refused_and_nothing_is_touched(tmp_path, elsewhere, planted):
    out = tmp_path / "out"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).symlink_to(elsewhere, target_is_directory=True)
    (out / "index.json").write_text("{}")  # an earlier bundle's folder
    (out / "regpatch-bundle.json").write_text("{}")
    with pytest.raises(UsageError, match="is a symbolic link: the folders of a bundle folder are never links"):
        FolderDestination(str(out)).prepare()
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"] and (elsewhere / "keep.txt").read_text() == "someone else's file"


def test_a_dangling_link_as_the_partial_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_DIR).symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="symbolic link"):
        FolderDestination(str(out)).prepare()
    assert not (tmp_path / "nowhere").exists()


def test_files_planted_as_links_are_replaced_never_written_through(tmp_path, elsewhere):
    out = tmp_path / "out"
    dest = FolderDestination(str(out))
    dest.prepare()
    target = elsewhere / "keep.txt"
    (dest.partial / "file-index.json").symlink_to(target)
    (out / "oci-layout").symlink_to(target)
    dest.put_file("index.json", b'{"schemaVersion": 2}')
    dest.put_file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    assert target.read_text() == "someone else's file"
    assert not (out / "oci-layout").is_symlink() and (out / "index.json").read_bytes() == b'{"schemaVersion": 2}'

    data = target.read_bytes()
    digest = Digest.of_bytes(data)
    (dest.blobs / digest.hex).symlink_to(target)  # the right bytes, through a link: not a blob of the bundle
    assert dest.has_blob(digest, len(data)) is False
    assert not os.path.lexists(dest.blobs / digest.hex) and target.read_text() == "someone else's file"

    (dest.partial / f"sha256-{digest.hex}").symlink_to(target)  # a planted "partial blob" is not resumed

    def feed(dst, offset, hasher, progress):
        assert offset == 0
        dst.write(data)
        hasher.update(data)

    assert dest.put_blob(digest, len(data), feed, None) == 0
    assert (dest.blobs / digest.hex).read_bytes() == data and not (dest.blobs / digest.hex).is_symlink()
    assert target.read_text() == "someone else's file"
    (dest.partial / "stray").symlink_to(target)
    dest.finish()
    assert not dest.partial.exists() and target.read_text() == "someone else's file"
