"""MkDocs hook: reference pages generated from the code at build time, so they never drift.

- ``<!-- settings-table -->``: one row per setting of :func:`workbench.settings.all_settings`
  (variable, default, meaning).
- ``<!-- cli-help -->``: ``workbench --help`` and each subcommand's help, from the CLI's argparse parser.

Wired in ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import os
from pathlib import Path

SETTINGS_MARKER = "<!-- settings-table -->"
CLI_MARKER = "<!-- cli-help -->"


def settings_table() -> str:
    """The Markdown table of every setting: name, default (home folder shown as ``~``), meaning."""
    from workbench import settings

    home = str(Path.home())
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in settings.all_settings():  # declaration order: core, serving, Kubernetes
        default = s.default.replace(home, "~") if s.default.startswith(home) else s.default
        shown = f"`{default}`" if default else "(empty)"
        meaning = s.help.replace("|", "\\|")
        rows.append(f"| `{s.name}` | {shown} | {meaning} |")
    return "\n".join(rows)


def cli_help() -> str:
    """``workbench --help`` and every subcommand's ``--help``, each in a code block under its own heading."""
    import argparse

    from workbench.cli import parser

    top = parser()
    # argparse wraps help to $COLUMNS; a fixed width gives the same page on every machine.
    os.environ["COLUMNS"] = "100"
    parts = ["```text", top.format_help().rstrip(), "```"]
    for action in top._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts += ["", f"## `workbench {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs' hook signature
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_help())
    return markdown
