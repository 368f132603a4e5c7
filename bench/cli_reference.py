"""docs/cli.md, the command-line reference, written from ``bench.cli.build_parser``:
``python -m bench.cli_reference > docs/cli.md`` (tests/test_docs.py fails when it is stale)."""

from __future__ import annotations

import argparse
import functools

from bench.cli import build_parser

WIDTH = 100  # fixed, so the page does not depend on the terminal that wrote it
COMMAND = "python -m bench.cli_reference > docs/cli.md"


def _help(parser: argparse.ArgumentParser) -> str:
    """The parser's ``--help`` text at WIDTH columns."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    return parser.format_help().rstrip()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def markdown() -> str:
    parser = build_parser()
    commands = _subcommands(parser)
    lines = ["# Command-line reference", "",
             "Every `bench` command's `--help`, generated from `bench.cli.build_parser` by",
             f"`{COMMAND}` (do not edit by hand). `python -m bench` is the same",
             "command. A guide to the commands: [command-line.md](command-line.md).", "",
             *(f"- [bench {name}](#bench-{name})" for name in commands), "",
             "## bench", "", "```text", _help(parser), "```"]
    for name, sub in commands.items():
        lines += ["", f"## bench {name}", "", "```text", _help(sub), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
