"""Where things are written, and how: the answer to stdout; notes, warnings, errors, stats and
progress to stderr. Every command writes through here, so what a user sees is decided once."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

from infer.runtime.errors import OutputError

if TYPE_CHECKING:
    from infer.runtime.answer import Stats

EVERY_S = 5.0  # without a terminal, a progress line at most this often


def use_color(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


class OutputClosed(Exception):
    """stdout's reader went away (`infer run ... | head`). Not an OSError, so that Typer's
    own EPIPE handling (exit 1) leaves it to infer's quiet exit."""


# --- stdout: the answer -------------------------------------------------------------------
def write_answer(piece: str) -> None:
    """One piece of the answer, flushed at once so a reader sees tokens as they come."""
    try:
        sys.stdout.write(piece)
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed() from None
    except OSError as e:  # a full disk (> /dev/full), a read-only descriptor (1</dev/null)
        raise OutputError(f"cannot write the answer to stdout: {e.strerror or e}") from None


# --- stderr: everything else --------------------------------------------------------------
def end_answer(
    model: str,
    text: str,
    finish_reason: str,
    stats: dict[str, Any],
    *,
    json_out: bool,
    logprobs: list[dict[str, Any]] | None = None,
) -> None:
    """How a one-shot answer ends, local or remote: the JSON object (`--json`, with the tokens'
    `logprobs` when --logprobs asked), or the newline after streamed text that lacked one."""
    if json_out:
        record: dict[str, Any] = {"model": model, "text": text, "finish_reason": finish_reason}
        record["stats"] = stats
        if logprobs is not None:
            record["logprobs"] = logprobs
        write_answer(json.dumps(record, ensure_ascii=False) + "\n")
    elif text and not text.endswith("\n"):
        write_answer("\n")


def say(message: str) -> None:
    """A line on stderr as it is (REPL notices, the newline after ^C)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def note(message: str) -> None:
    say(f"infer: {message}")


def warn(message: str) -> None:
    say(f"infer: warning: {message}")


def error(message: str) -> None:
    say(f"infer: error: {message}")


def dim(line: str) -> None:
    """A summary line (the stats) on stderr, faint on a terminal."""
    say(f"\x1b[2m{line}\x1b[0m" if use_color(sys.stderr) else line)


def stats_line(stats: Stats, remote: str | None = None) -> str:
    """The faint line after an answer; a `remote`'s says only what the client measured."""
    if remote is not None:
        return (
            f"remote {remote} · prompt {stats.prompt_tokens} tok"
            f" · first token {stats.ttft_s * 1000:.0f} ms"
            f" · generated {stats.generated_tokens} tok, {stats.generate_tps:.1f} tok/s"
        )
    return (
        (
            f"load {stats.load_s:.2f} s · prompt {stats.prompt_tokens} tok"
            f" ({stats.prompt_eval_tokens} evaluated, {stats.prompt_tps:.1f} tok/s)"
            f" · first token {stats.ttft_s * 1000:.0f} ms"
            f" · generated {stats.generated_tokens} tok, {stats.generate_tps:.1f} tok/s"
        )
        + (
            f" · draft {stats.draft}: {stats.accepted}/{stats.drafted} accepted"
            f" ({stats.acceptance:.0%})"
            if stats.draft
            else ""
        )
        + (f" · layers on {stats.split}" if stats.split else "")
        + (
            f" · media {stats.media} ({stats.media_tokens} tok),"
            f" {stats.media_encoded} encoded in {stats.encode_s * 1000:.0f} ms"
            if stats.media
            else ""
        )
    )


def print_stats(stats: Stats, remote: str | None = None) -> None:
    dim(stats_line(stats, remote))


@contextmanager
def status(text: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while a step runs, on a terminal only; yields a function that
    changes its text."""
    if quiet or not use_color(sys.stderr):
        yield lambda _text: None
        return
    from rich.console import Console

    with Console(stderr=True).status(text, spinner="dots") as spinner:
        yield lambda new: spinner.update(new)


# --- formatting ---------------------------------------------------------------------------
def human_size(n: int) -> str:
    """Decimal units, as the Hub and Ollama show them."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - unreachable


def human_count(n: int) -> str:
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.1f}{unit} ({n:,})"
    return str(n)


def relative_time(iso: str, now: datetime | None = None) -> str:
    """'3 hours ago' for an ISO timestamp; the text itself if it is not one."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    now = now or datetime.now(timezone.utc)
    s = max(0, int((now - then).total_seconds()))
    for span, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if s >= span:
            return f"{s // span} {unit}{'s' if s // span != 1 else ''} ago"
    return "just now"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def key_values(rows: list[tuple[str, Any]]) -> str:
    """`key  value` lines, keys padded to the longest; None shows as '-'."""
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {'-' if v is None else v}\n" for k, v in rows)


# --- progress -----------------------------------------------------------------------------
_COLUMNS = {
    "spinner": "SpinnerColumn",
    "bar": "BarColumn",
    "bytes": "DownloadColumn",
    "speed": "TransferSpeedColumn",
    "remaining": "TimeRemainingColumn",
    "count": "MofNCompleteColumn",
    "elapsed": "TimeElapsedColumn",
}


class Reporter:
    """THE progress reporter. On a terminal (and without NO_COLOR) a rich bar made of
    `columns` (names from _COLUMNS, anything else a rich TextColumn template), drawn from the
    first `begin()`; otherwise `line()` writes a plain `infer: ...` line at most every `every`
    seconds (`force` for the first and last); with `quiet` (--json) it shows nothing."""

    def __init__(
        self,
        *columns: str,
        quiet: bool = False,
        transient: bool = False,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = EVERY_S,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.mode = "off" if quiet else "bar" if use_color(self.stream) else "lines"
        self.columns, self.transient = columns, transient
        self.clock, self.every = clock, every
        self.last = clock()
        self.bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self, description: str = "", total: float | None = None, **fields: Any) -> None:
        """Start the bar's task (or restart it, for the same description again)."""
        if self.mode != "bar":
            return
        if self.bar is None:
            self._start_bar()
        if self._task is not None and self.bar.tasks[-1].description == description:
            self.bar.reset(self._task, total=total, **fields)
        else:
            self._task = self.bar.add_task(description, total=total, **fields)

    def _start_bar(self) -> None:
        from rich import progress as rp
        from rich.console import Console

        columns = [
            getattr(rp, _COLUMNS[c])() if c in _COLUMNS else rp.TextColumn(c) for c in self.columns
        ]
        console = Console(file=self.stream)
        self.bar = rp.Progress(*columns, console=console, transient=self.transient)
        self.bar.start()

    def update(self, **fields: Any) -> None:
        """Move the bar (completed=, advance=, total=, or a column's field)."""
        if self._task is not None:
            self.bar.update(self._task, **fields)

    def line(self, text: str, *, force: bool = False) -> bool:
        """Without a terminal: `infer: text`, if `every` seconds passed since the last (or
        `force`). Whether it was written."""
        now = self.clock()
        if self.mode != "lines" or not (force or now - self.last >= self.every):
            return False
        self.last = now
        self._write(f"infer: {text}\n")
        return True

    def note(self, message: str) -> None:
        """A message that is not progress: above the bar when one is drawn."""
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            self._write(f"infer: {message}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def refresh(self) -> None:
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
