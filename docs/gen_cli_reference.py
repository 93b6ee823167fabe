"""Write docs/cli.md, the CLI reference, from the Typer app itself, so that it cannot drift from
`infer --help`: each command's usage line, help text, arguments and options with their help,
defaults and environment variables, exactly as click renders them for --help.

    python docs/gen_cli_reference.py           # rewrite docs/cli.md
    python docs/gen_cli_reference.py --check   # exit 1 if docs/cli.md is out of date

tests/test_docs.py runs the check, so a changed option fails the suite until this is re-run.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from typer.main import get_command

from infer.cli.app import app
from infer.cli.help import OPTIONS, docs_page

PAGE = Path(__file__).resolve().parent / "cli.md"
REGENERATE = "python docs/gen_cli_reference.py"
HEADER = f"""# CLI reference

Every command and option of `infer`, as `infer COMMAND --help` shows them. This page is
generated from the code: do not edit it, run `{REGENERATE}`.
"""


def render() -> str:
    """The whole page, commands in the order `infer --help` lists them."""
    root = get_command(app)
    ctx = root.make_context("infer", [], resilient_parsing=True)
    parts = [HEADER, *_command(root, ctx, level=1)]
    return "\n".join(parts).rstrip("\n") + "\n"


def _command(command: Any, ctx: Any, level: int) -> Iterator[str]:
    if level > 1:  # the root's own section is the page's introduction
        yield f"{'#' * level} {ctx.command_path}\n"
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    yield f"```\n{usage}\n```\n"
    if command.help:
        yield inspect.cleandoc(command.help) + "\n"
    yield from _params(command, ctx)
    page = docs_page(ctx.command_path)
    yield f"Docs: [{page}]({page})\n"
    for name in getattr(command, "list_commands", lambda _: [])(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
        yield from _command(sub, sub_ctx, level + 1)


def _params(command: Any, ctx: Any) -> Iterator[str]:
    """A table per section, as --help groups them (`rich_help_panel`), arguments first."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            title = "Arguments"
        else:
            title = getattr(param, "rich_help_panel", None) or OPTIONS
        sections.setdefault(title, []).append(record)
    if OPTIONS in sections:
        sections[OPTIONS] = sections.pop(OPTIONS)
    for title, rows in sections.items():
        yield f"**{title}**\n"
        yield "| | |\n|---|---|"
        yield "\n".join(f"| `{_cell(opts)}` | {_cell(text)} |" for opts, text in rows) + "\n"


def _cell(text: str) -> str:
    """One table cell: one line, and a `|` that does not end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if PAGE.read_text() != text:
            sys.stderr.write(f"{PAGE} is out of date: run `{REGENERATE}`\n")
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
