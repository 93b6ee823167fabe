"""llama.cpp for the whole process: its log, the default context size, which backends the build
has, and what loading a model and making a context need (Ctrl-C deferred, --threads kept).
The model is llama/model.py's LlamaModel (llama/weights.py); contexts are llama/context.py's
LlamaContext and llama/session.py's LlamaSession.
"""

from __future__ import annotations

import ctypes
import re
import signal
import sys
import threading
import warnings
from typing import Any

from ..errors import OptionWarning
from ..models.gguf import GGUFHeader
from .bindings import bindings
from .offload import check_kv_fits, has_offload_devices, kv_bytes_per_layer

KV_BUDGET_BYTES = 4 << 30  # default context is capped so its KV cache stays within this
ALL_LAYERS = 999


def default_ctx(header: GGUFHeader, budget: int = KV_BUDGET_BYTES) -> int:
    """The model's trained context, capped so an f16 KV cache fits in `budget` bytes."""
    trained = header.context_length or 4096
    n_layer = header.arch_int("block_count")
    per_token = n_layer * kv_bytes_per_layer(header)
    if not per_token:
        return min(trained, 8192)
    cap = max(2048, budget // max(per_token, 1) // 256 * 256)
    return min(trained, cap)


_log_state: dict[str, Any] = {"verbose": False}
_captured = threading.local()  # .lines: llama.cpp's log of this thread's model load, when kept


def _install_log_callback(verbose: bool) -> None:
    """Route llama.cpp's logs through one callback: silent unless --verbose. The callback object
    must live as long as the process, so it is kept in a module global. It must not raise: ctypes
    prints an exception in a callback ("Exception ignored on calling ctypes callback function")
    and drops it, and llama.cpp carries on. (Ctrl-C during a load never lands here as an
    exception: see _DeferredSigint.)"""
    llama_cpp = bindings()
    _log_state["verbose"] = verbose
    if "callback" not in _log_state:

        @llama_cpp.llama_log_callback
        def _log(level: int, text: bytes, user_data: Any) -> None:
            lines = getattr(_captured, "lines", None)
            if lines is not None and text:
                lines.append(text)
            if _log_state["verbose"] and text:
                try:
                    sys.stderr.write(text.decode("utf-8", errors="replace"))
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):  # stderr None, closed or full
                    pass

        _log_state["callback"] = _log
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))


def route_mtmd_logs(lib: Any) -> None:
    """libmtmd (and its helpers) log through their own setters: the same callback as llama.cpp's,
    so they too are silent unless --verbose."""
    lib.mtmd_log_set(_log_state["callback"], ctypes.c_void_p(0))
    lib.mtmd_helper_log_set(_log_state["callback"], ctypes.c_void_p(0))


def _check_ctx_size(ll: Any, header: GGUFHeader, n_ctx: int, gpu: bool) -> None:
    """Refuse a context whose KV cache cannot fit in memory (llama.cpp would try to allocate
    it, for a minute, before failing), and warn about one longer than the model was trained
    on (allowed: a user may know the model copes, e.g. with RoPE scaling). `gpu`: layers go to
    GPU or RPC devices."""
    check_kv_fits(ll, header, n_ctx, gpu=gpu)
    trained = header.context_length
    if trained and n_ctx > trained:
        problem = (
            f"{n_ctx} is more than the {trained} tokens {header.path.name} was trained on: "
            "answers past that may lose coherence"
        )
        warnings.warn(OptionWarning("ctx_size", problem), stacklevel=3)


def supports_gpu_offload() -> bool:
    """Whether this build has a device to offload layers to (a GPU; RPC servers once added).
    Not llama_supports_gpu_offload(): that is true for any build with the RPC backend."""
    return has_offload_devices(bindings())


def system_info() -> str:
    """llama.cpp's build line: backends and CPU features, e.g. "CPU : AVX2 = 1 | ..."."""
    return bindings().llama_print_system_info().decode("utf-8", errors="replace")


def backends(info: str | None = None) -> list[str]:
    """Backends compiled into llama.cpp ("CUDA", "Metal", "CPU"…), from its system-info line,
    whose sections read "NAME : FEATURE = 1 | …"."""
    info = system_info() if info is None else info
    names = re.findall(r"(?:^|\|)\s*([A-Za-z][\w-]*) : ", info)
    return list(dict.fromkeys(names)) or ["CPU"]


class _DeferredSigint:
    """Ctrl-C while llama.cpp loads a model or creates a context. Python runs a signal handler
    when the main thread next runs Python code, which during a load is inside llama.cpp's log or
    progress callback: an exception raised there is printed and dropped by ctypes, and the load
    went on. So, inside `with`, Ctrl-C only sets `requested`; `progress` (for the model params)
    then returns False, which makes llama.cpp abandon the model load and return NULL; the loader
    raises Interrupted once llama.cpp has returned. Only on the main thread (the only one that
    may set a handler), and never where SIGINT is ignored."""

    def __init__(self, ll: Any) -> None:
        self.requested = False
        self.progress = ll.llama_progress_callback(self._progress)
        self._previous: Any = None

    def _progress(self, _fraction: float, _data: Any) -> bool:
        return not self.requested

    def _handler(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def __enter__(self) -> _DeferredSigint:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
