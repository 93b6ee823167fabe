"""`--markdown`: answers rendered as Markdown on a terminal while they stream (rich Live)."""

from __future__ import annotations

from collections.abc import Iterable


def stream_markdown(pieces: Iterable[str]) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown

    text = ""
    # Live redraws the whole region on each refresh: acceptable for answer-sized text, and why
    # it is an opt-in rather than the default.
    with Live(Markdown(""), console=Console(), refresh_per_second=8, transient=False) as live:
        for piece in pieces:
            text += piece
            live.update(Markdown(text))
