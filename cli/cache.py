"""`infer cache list|clear`: the prompt cache, saved prompt states that let a run skip
re-evaluating a long prompt prefix an earlier run has seen (see
runtime/generation/prompt_cache.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated

import typer

from . import output
from .help import HelpCommand, HelpGroup
from .output import human_size, relative_time, table

cache_app = typer.Typer(
    help="Inspect or clear the prompt cache: saved states of long prompts (256+ tokens) that "
    "let a later run with the same beginning skip evaluating it again.",
    cls=HelpGroup,
    rich_markup_mode=None,
)


@cache_app.callback(invoke_without_command=True)
def _cache(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # `infer cache` alone: its help, as `infer` alone does
        output.write_answer(ctx.get_help() + "\n")


@cache_app.command("list", cls=HelpCommand)
def list_entries(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON (stable field names) instead of a table.")
    ] = False,
) -> None:
    """List the saved prompt states: model, tokens, size, last used; the total and the limit."""
    from infer.runtime.generation import prompt_store

    found = list(reversed(prompt_store.entries()))  # most recently used first
    total, limit = sum(e.size for e in found), prompt_store.max_bytes()
    where = prompt_store.root()
    if json_out:
        record = {
            "entries": [
                {
                    "model": e.model,
                    "tokens": e.tokens,
                    "size": e.size,
                    "last_used": _iso(e.last_used),
                    "path": str(e.path),
                }
                for e in found
            ],
            "total_bytes": total,
            "limit_bytes": limit,
            "cache_dir": str(where),
        }
        output.write_answer(json.dumps(record, indent=2) + "\n")
        return
    rows = [
        [e.model, f"{e.tokens:,}", human_size(e.size), relative_time(_iso(e.last_used))]
        for e in found
    ]
    if rows:
        output.write_answer(table(["MODEL", "TOKENS", "SIZE", "LAST USED"], rows))
    count = f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}"
    output.write_answer(f"{count}, {human_size(total)} of {human_size(limit)} (limit) in {where}\n")


@cache_app.command(cls=HelpCommand)
def clear() -> None:
    """Remove every saved prompt state."""
    from infer.runtime.generation import prompt_store

    count, size = prompt_store.clear()
    noun = "entry" if count == 1 else "entries"
    output.write_answer(f"removed {count} prompt cache {noun} ({human_size(size)})\n")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
