"""The documentation site (mkdocs.yml, docs/) and the README as its front door (issue 27).

``mkdocs build --strict`` (scripts/static_checks.sh) fails on a page left out of the nav
and on a broken link or anchor; these tests check what it cannot: that the generated CLI
reference covers every command and option of the parser, and that the README stays a
short front door whose links lead into the site."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import yaml

from regpatch.cli.parser import build_parser, commands

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "hooks" / "cli_reference.py"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", HOOK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(markdown: str) -> dict[str, str]:
    """The text under each '## `regpatch ...`' heading of the reference page."""
    parts = re.split(r"^## `([^`]+)` \{#[\w-]+\}$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_cli_reference_has_a_section_for_every_command_with_every_option():
    page = _hook().cli_reference_markdown()
    sections = _sections(page)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sections) == {"regpatch"} | {f"regpatch {name}" for name in sub.choices}
    for path, p in commands(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest
            assert f"`{shown}" in sections[path], (path, shown)  # the row of that option, in its command
    assert "- [`regpatch prune`](#regpatch-prune)" in page


def test_the_reference_helper_finds_a_missing_command():
    sections = _sections("## `regpatch patch` {#regpatch-patch}\n\n| `--tag TAG` | the tag |\n")
    assert set(sections) == {"regpatch patch"} and "`--repository" not in sections["regpatch patch"]


def test_mkdocs_config_is_strict_and_names_the_hook_and_the_generated_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True
    assert config["validation"] == {"nav": {"omitted_files": "warn", "not_found": "warn"},
                                    "links": {"not_found": "warn", "anchors": "warn"}}
    assert config["hooks"] == ["docs/hooks/cli_reference.py"]
    assert config["theme"]["font"] is False  # nothing fetched by the browser either
    assert config["plugins"] == ["search"]  # no privacy or social plugin: no network at build
    nav = yaml.safe_dump(config["nav"])
    assert _hook().PAGE in nav and not (ROOT / "docs" / _hook().PAGE).exists()


def test_the_readme_is_a_short_front_door_linking_into_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link
    for command in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"\n{command}" in text
    # .ci/run calls the README's test command
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
