"""Help pages as plain text, with the options grouped into sections (Sampling, Output, …).

Typer renders help through rich when rich is installed, which imports rich's markdown, syntax and
traceback modules: ~90 ms, half of `infer --help`'s start-up. Plain text from click's formatter
costs nothing extra, reads the same in a pipe or a pager, and keeps the sections: an option's
`rich_help_panel` names its section here.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

OPTIONS = "Options"


def _format_params(command: Any, ctx: Any, formatter: Any, sectioned: bool) -> None:
    """Arguments first, then each section in the order its first option was declared; options
    without a section come last, under "Options", as --help does in most tools."""
    arguments: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            panel = getattr(param, "rich_help_panel", None) if sectioned else None
            sections.setdefault(panel or OPTIONS, []).append(record)
    if OPTIONS in sections:
        sections[OPTIONS] = sections.pop(OPTIONS)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    for title, rows in sections.items():
        with formatter.section(title):
            formatter.write_dl(rows)


def _usage_pieces(command: Any, ctx: Any) -> list[str]:
    """Click's usage line (`MODEL [PROMPT]`), not Typer's (`{MODEL} [PROMPT]`)."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if param.param_type_name == "argument" and param.required and param.metavar:
            pieces.append(param.metavar)
        else:
            pieces.extend(param.get_usage_pieces(ctx))
    return pieces


class HelpCommand(TyperCommand):
    """A command whose --help is plain text: arguments, then options."""

    sectioned = False

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage_pieces(self, ctx)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter, self.sectioned)


class SectionedHelpCommand(HelpCommand):
    """A command with many options (run): its --help groups them by `rich_help_panel`."""

    sectioned = True


class HelpGroup(TyperGroup):
    """A group whose --help is plain text in sections, then its commands."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter, sectioned=False)
        self.format_commands(ctx, formatter)
