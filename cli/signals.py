"""Ctrl-C during generation: stop the answer, not the process. SIGTERM and SIGHUP: stop the
process, but through every `finally` (no half-written file left behind)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


_ENDING = ("SIGTERM", "SIGHUP")


@contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise Terminated (exit 128 + signal number) instead of
    killing the process on the spot, so every `finally` deletes its temp file (a prompt-cache
    entry being saved, a quantizer's output) as it does for Ctrl-C. A signal that lands while
    llama.cpp is calling back into Python (its abort callback) raises inside the callback,
    where ctypes swallows exceptions: it is then delivered again a moment later, and the block
    ends with Terminated whatever it did meanwhile (an aborted decode reads as Ctrl-C)."""
    from infer.runtime.errors import Terminated

    swallowed: list[int] = []
    timers: list[threading.Timer] = []

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, Terminated):
            previous_hook(info)
            return
        swallowed.append(info.exc_value.signum)
        timer = threading.Timer(0.01, os.kill, (os.getpid(), info.exc_value.signum))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    signums = [getattr(signal, name) for name in _ENDING if hasattr(signal, name)]
    try:
        previous = {s: signal.signal(s, handler) for s in signums}
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for timer in timers:
            timer.cancel()
        for s, h in previous.items():
            signal.signal(s, h)
        if swallowed:
            raise Terminated(swallowed[0])  # replaces the Interrupted of an aborted decode
