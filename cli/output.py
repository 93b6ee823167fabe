"""Where things are written: the answer to stdout, everything else to stderr."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from infer.runtime.errors import OutputError

if TYPE_CHECKING:
    from infer.runtime.generation.loop import Stats


def use_color(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


class OutputClosed(Exception):
    """stdout's reader went away (`infer run ... | head`). Not an OSError, so that Typer's
    own EPIPE handling (exit 1) leaves it to infer's quiet exit."""


def write_answer(piece: str) -> None:
    """One piece of the answer, flushed at once so a reader sees tokens as they come."""
    try:
        sys.stdout.write(piece)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed() from None
    except OSError as e:  # a full disk (> /dev/full), a read-only descriptor (1</dev/null)
        raise OutputError(f"cannot write the answer to stdout: {e.strerror or e}") from None


def error(message: str) -> None:
    sys.stderr.write(f"infer: error: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"infer: warning: {message}\n")
    sys.stderr.flush()


def stats_line(stats: Stats) -> str:
    return (
        f"load {stats.load_s:.2f} s · prompt {stats.prompt_tokens} tok"
        f" ({stats.prompt_eval_tokens} evaluated, {stats.prompt_tps:.1f} tok/s)"
        f" · first token {stats.ttft_s * 1000:.0f} ms"
        f" · generated {stats.generated_tokens} tok, {stats.generate_tps:.1f} tok/s"
    ) + (
        f" · draft {stats.draft}: {stats.accepted}/{stats.drafted} accepted"
        f" ({stats.acceptance:.0%})"
        if stats.draft
        else ""
    )


def print_stats(stats: Stats) -> None:
    line = stats_line(stats)
    if use_color(sys.stderr):
        line = f"\x1b[2m{line}\x1b[0m"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
