"""A storage on a case-insensitive filesystem: exFAT (a Windows filesystem, like NTFS it
matches names without regard to case), loop-mounted through FUSE (exfat-fuse). The
tests run as root. ``LTSC2019`` and ``ltsc2019`` are one folder there: patching one would
move the other's tag, so it is refused before any write, naming both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.util import tree_hash

from regpatch.demo.images import scenario_servercore

REGPATCH = str(Path(sys.executable).with_name("regpatch"))


@pytest.fixture
def exfat(tmp_path):
    image = tmp_path / "exfat.img"
    subprocess.run(["truncate", "-s", "128M", str(image)], check=True)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount.exfat-fuse", device, str(mnt)], check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def _patch(bundle, storage, tag, *extra):
    return subprocess.run([REGPATCH, "patch", str(bundle), "--storage", str(storage), "--repository",
                           "servercore", "--tag", tag, "--local", *extra], capture_output=True, text=True,
                          timeout=300)


def test_a_tag_of_another_case_is_refused_naming_both(exfat, tmp_path):
    s = scenario_servercore(tmp_path / "sample", base_size=512 << 10, delta_size=128 << 10)
    first = _patch(s["staged"], exfat, "LTSC2019", "--init")
    assert first.returncode == 0, first.stderr
    before = tree_hash(exfat / "docker")
    p = _patch(s["staged"], exfat, "ltsc2019")
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "tag 'ltsc2019' would land in the existing folder" in line and "of the tag 'LTSC2019'" in line
    assert "case-insensitive" in line and "nothing was written" in line
    assert tree_hash(exfat / "docker") == before
    again = _patch(s["staged"], exfat, "LTSC2019")  # the tag's own name is fine
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
