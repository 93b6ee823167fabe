"""ggml's abort callback: a GGML_ASSERT or GGML_ABORT inside llama.cpp (a damaged model file, an
RPC server that stopped answering) ends the process with one line on stderr and exit 1, instead
of abort(): ggml would print a backtrace (attaching gdb when it finds one) and dump core.

ggml calls the callback with its message just before abort(); the callback leaves first. What
infer was doing (`doing`) makes the line say where it happened; a server's decode threads say
which requests of which model they are decoding (`serving`), so the line of an abort no check
foresaw names them (the server still ends: llama.cpp's state is not known to be sound after it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"doing": ""}
_serving: dict[int, str] = {}  # thread id -> what that decode thread is doing now


def catch_aborts(ll: Any) -> None:
    """Install the callback (once per process; it must outlive every llama.cpp call)."""
    if "callback" in _state:
        return
    lib = getattr(ll, "_lib", None)
    setter = getattr(lib, "ggml_set_abort_callback", None)
    if setter is None:  # bindings without it: llama.cpp aborts as it always did
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def on_abort(message: bytes | None) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # the answer so far stays
        # Mid-answer, the answer's line on a terminal may be open: the error starts its own.
        start = "" if _doing_now() else "\n"
        os.write(2, (start + describe(message) + "\n").encode("utf-8", "replace"))
        os._exit(1)

    setter.restype = ctypes.c_void_p
    setter.argtypes = [ctypes.c_void_p]
    setter(ctypes.cast(on_abort, ctypes.c_void_p))
    _state["callback"] = on_abort


def describe(message: bytes | None) -> str:
    """The line for ggml's message ("path/file.cpp:123: GGML_ASSERT(x) failed")."""
    lines = (message or b"").decode("utf-8", errors="replace").strip().splitlines()
    reason = lines[0].split(": ", 1)[-1] if lines else "llama.cpp aborted"
    if "RPC" in reason:
        return f"infer: error: llama.cpp's RPC backend failed: {reason}"
    doing = _doing_now()
    where = f" while {doing}" if doing else ""
    hint = " (the model file may be damaged or of a kind this llama.cpp cannot read)"
    return f"infer: error: llama.cpp failed{where}: {reason}" + (hint if "loading" in where else "")


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name what llama.cpp is about to do, for the line an abort prints ("loading x.gguf")."""
    before, _state["doing"] = _state["doing"], what
    try:
        yield
    finally:
        _state["doing"] = before


def serving(what: str) -> None:
    """Say what this thread asks llama.cpp to do from now on ("" when nothing): a server's
    decode thread names the model and the requests in its batch. One dict write: cheap enough
    to call at every change of the batch."""
    if what:
        _serving[threading.get_ident()] = what
    else:
        _serving.pop(threading.get_ident(), None)


def _doing_now() -> str:
    """This thread's work if it said; else everything under way (ggml may abort on one of its
    own worker threads, which says nothing)."""
    mine = _serving.get(threading.get_ident())
    if mine:
        return mine
    parts = [_state["doing"]] if _state["doing"] else []
    return " or ".join([*parts, *list(_serving.values())])
