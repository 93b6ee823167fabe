"""How a pull reports progress. The runtime calls these methods; the CLI renders them (a rich
bar on a terminal, plain lines otherwise), so the runtime never imports rich."""

from __future__ import annotations

from typing import Protocol


class PullProgress(Protocol):
    def note(self, message: str) -> None:
        """A one-line status message (which file was chosen, waiting for a lock...)."""

    def start(self, filename: str, total: int, done: int) -> None:
        """A file download begins; `done` bytes are already there (a resumed download)."""

    def advance(self, nbytes: int) -> None:
        """`nbytes` more bytes of the current file arrived."""

    def finish(self) -> None:
        """The current file is complete (or abandoned)."""


class NullProgress:
    """Reports nothing: the default for library callers."""

    def note(self, message: str) -> None:
        pass

    def start(self, filename: str, total: int, done: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass
