"""ggml's abort callback: a GGML_ASSERT or GGML_ABORT inside llama.cpp (a damaged model file, an
RPC server that stopped answering) ends the process with one line on stderr and exit 1, instead
of abort(): ggml would print a backtrace (attaching gdb when it finds one) and dump core.

ggml calls the callback with its message just before abort(); the callback leaves first. What
infer was doing (`doing`) makes the line say where it happened.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

_state: dict[str, Any] = {"doing": ""}


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
        start = "" if _state["doing"] else "\n"
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
    doing = _state["doing"]
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
