"""The command-line reference page, generated at every build from the CLI's own parser
(``regpatch.cli.parser.build_parser``), so it cannot drift from the program.

mkdocs.yml names this file under ``hooks:``; ``on_files`` adds ``reference/cli.md`` to the
site as a generated page (there is no such file in docs/). ``cli_reference_markdown()`` is
the page's text, also read by tests/unit/test_docs.py."""

from __future__ import annotations

import argparse
import html

from regpatch.cli.parser import build_parser, commands

PAGE = "reference/cli.md"


def _cell(text: str) -> str:
    """Text for a markdown table cell: no HTML, no emphasis, no column break."""
    return html.escape(" ".join(text.split()), quote=False).replace("*", r"\*").replace("|", r"\|")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        title = group.title if group.title not in ("options", "optional arguments") else "options"
        rows += ["", f"*{_cell(title)}*", "", "| option | meaning |", "|---|---|"]
        for a in actions:
            invocation = formatter._format_action_invocation(a)
            rows.append(f"| `{invocation}` | {_cell(formatter._expand_help(a))} |")
    return rows


def cli_reference_markdown() -> str:
    parser = build_parser()
    found = commands(parser)
    out = ["# Command-line reference", "",
           "Generated from the command line's own definitions (`regpatch.cli.parser.build_parser`) "
           "at every build of this site: what `regpatch COMMAND --help` prints, as tables.", ""]
    out += [f"- [`{path}`](#{path.replace(' ', '-')})" for path, _ in found[1:]]
    for path, p in found:
        out += ["", f"## `{path}` {{#{path.replace(' ', '-')}}}", ""]
        if p.description:
            out += [_cell(p.description), ""]
        out += ["```text", _usage(p), "```"]
        out += _rows(p)
    return "\n".join(out) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=cli_reference_markdown()))
    return files
