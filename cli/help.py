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

# Where each command is documented: the last line of its --help names the page, relative to
# infer's repository (no web site to link to). docs/gen_cli_reference.py links the same pages
# from the generated CLI reference, and tests/test_docs.py checks that each page and anchor exists.
DOCS = {
    "": "index.md",
    "run": "run.md",
    "chat": "run.md#chat",
    "pull": "models.md",
    "list": "models.md",
    "ls": "models.md",
    "show": "models.md",
    "rm": "models.md",
    "bench": "bench.md",
    "quantize": "quantize.md",
    "perplexity": "quantize.md",
    "serve": "serve.md",
    "embed": "embeddings.md",
    "rerank": "embeddings.md#rerank",
    "rpc-server": "scaling.md#split-a-model-over-machines",
    "cache": "speed.md#prompt-cache",
}


def docs_page(command_path: str) -> str:
    """The page documenting `infer cache list` and the like: the longest registered prefix of
    the words after the program's name, else the docs' index."""
    words = command_path.split()[1:]
    while words and " ".join(words) not in DOCS:
        words.pop()
    return DOCS[" ".join(words)]


def _format_docs(ctx: Any, formatter: Any) -> None:
    formatter.write_paragraph()
    with formatter.indentation():  # as click indents an epilog: not a section heading
        formatter.write_text(f"Docs: docs/{docs_page(ctx.command_path)}")


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

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        _format_docs(ctx, formatter)


class SectionedHelpCommand(HelpCommand):
    """A command with many options (run): its --help groups them by `rich_help_panel`."""

    sectioned = True


class HelpGroup(TyperGroup):
    """A group whose --help is plain text in sections, then its commands."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter, sectioned=False)
        self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        _format_docs(ctx, formatter)
