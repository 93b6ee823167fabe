"""Ctrl-C during generation: stop the answer, not the process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cancel_on_sigint() -> Iterator[threading.Event]:
    """While active, the first Ctrl-C sets the returned event (the engine polls it per token and,
    through llama.cpp's abort callback, inside a long prompt evaluation); a second Ctrl-C raises
    KeyboardInterrupt at once, for a user who really wants out."""
    cancel = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)
