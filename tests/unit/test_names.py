"""Names as NTFS and Win32 take them (regpatch.storage.names): device names, trailing dots,
the same folder under another spelling. The Windows rules are checked here on any host;
a real case-insensitive filesystem is in tests/e2e/test_case_insensitive.py."""

from __future__ import annotations

import pytest

from regpatch.errors import UsageError
from regpatch.reference import Repository, Tag
from regpatch.storage.layout import Layout
from regpatch.storage.names import case_insensitive, check_names, reserved_on_windows, win32_name


@pytest.mark.parametrize("name", ["CON", "con", "nul", "NUL.txt", "com1", "LPT9", "aux.tar.gz", "com¹", "prn "])
def test_device_names_are_reserved_on_windows(name):
    assert reserved_on_windows(name)


@pytest.mark.parametrize("name", ["console", "nullable", "com10", "lpt", "ltsc2019", "v1.0"])
def test_ordinary_names_are_not(name):
    assert not reserved_on_windows(name)


def test_win32_drops_trailing_dots_and_spaces():
    assert win32_name("v1.") == "v1" and win32_name("v1. .") == "v1" and win32_name("v1.0") == "v1.0"


def _storage(tmp_path, *tags: str) -> Layout:
    layout = Layout(tmp_path)
    repo = Repository.parse("windows/servercore")
    for t in tags:
        (layout.tags_dir(repo) / t).mkdir(parents=True)
    return layout


def test_on_windows_a_tag_that_lands_in_another_tags_folder_is_refused(tmp_path):
    """A storage written elsewhere holds a folder 'v1.' (Linux keeps the dot): on Windows
    the tag 'v1' would open that folder."""
    layout = _storage(tmp_path, "v1.")
    repo = Repository.parse("windows/servercore")
    with pytest.raises(UsageError, match="tag 'v1' would land in the existing folder .*/v1. of the tag 'v1.'"):
        check_names(layout, repo, Tag.parse("v1"), windows=True)
    check_names(layout, repo, Tag.parse("v1"), windows=False)  # Linux keeps 'v1.' and 'v1' apart


@pytest.mark.parametrize("tag,why", [("CON", "device name"), ("nul.ltsc", "device name"), ("v2.", "trailing dot")])
def test_on_windows_names_windows_cannot_create_are_refused(tmp_path, tag, why):
    layout = _storage(tmp_path)
    with pytest.raises(UsageError, match=why):
        check_names(layout, Repository.parse("windows/servercore"), Tag.parse(tag), windows=True)


def test_a_repository_component_is_checked_too(tmp_path):
    layout = _storage(tmp_path)
    with pytest.raises(UsageError, match="repository name 'com1'"):
        check_names(layout, Repository.parse("windows/com1"), None, windows=True)


def test_a_case_sensitive_folder_is_told_from_a_case_insensitive_one(tmp_path):
    (tmp_path / "Probe").mkdir()
    assert case_insensitive(tmp_path / "Probe") is False  # ext4/XFS/tmpfs here
