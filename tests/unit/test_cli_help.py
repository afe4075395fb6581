"""The command line explains itself (issue 27 item 4): --version from the installed package's
metadata, a help line for every option of every command, BUNDLE's help naming every format the
bundle reader accepts."""

from __future__ import annotations

import argparse
from importlib import metadata

import pytest

from regpatch.bundle.open import FORMATS
from regpatch.cli import main
from regpatch.cli.parser import BUNDLE_HELP, build_parser, commands, options_without_help

# each format of the reader (regpatch.bundle.open.FORMATS) and the words BUNDLE's help names it by;
# a format added to the reader and not to the help fails here (KeyError)
FORMAT_WORDS = {
    "oci-layout": ["OCI image layout folder"],
    "oci-archive": ["OCI archive", "gzip", "zstd", "xz", "bzip2"],
    "dir": ["dir: folder"],
    "docker-archive": ["docker save archive", "unpacked docker save folder"],
    "staged": ["staged folder"],
}


def test_version_is_the_installed_package_metadata(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"regpatch {metadata.version('regpatch')}\n"


def test_every_option_of_every_command_has_a_help_line():
    parser = build_parser()
    names = [path for path, _ in commands(parser)]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert names == ["regpatch"] + [f"regpatch {n}" for n in sub.choices]  # the walk reaches every command
    assert {"regpatch patch", "regpatch rollback", "regpatch prune", "regpatch inspect"} <= set(names)
    assert options_without_help(parser) == []


def test_the_help_check_finds_an_option_without_help():
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--fine", help="has one")
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("child")
    child.add_argument("--bare")
    child.add_argument("thing", help=argparse.SUPPRESS)
    assert options_without_help(parser) == ["x child --bare", "x child thing"]


def test_bundle_help_names_the_six_formats_the_reader_accepts():
    assert set(FORMAT_WORDS) == set(FORMATS)
    for words in FORMAT_WORDS.values():
        for w in words:
            assert w in BUNDLE_HELP, w
    assert BUNDLE_HELP.count(";") == 5  # six forms, one per docker save shape
    for command in ("patch", "rollout", "inspect"):
        parser = dict(commands(build_parser()))[f"regpatch {command}"]
        bundle = next(a for a in parser._actions if a.dest == "bundle")
        assert bundle.help.startswith(BUNDLE_HELP)


def test_bundle_help_is_shown_by_patch_help(capsys):
    with pytest.raises(SystemExit):
        main(["patch", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "an unpacked docker save folder (converted)" in out and "a skopeo dir: folder" in out
