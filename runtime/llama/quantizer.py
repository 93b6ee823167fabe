"""llama.cpp's quantizer, for tools/quantize.py's child process."""

from __future__ import annotations

import ctypes
import os

from .bindings import bindings


def ftype_value(ll: object, name: str) -> int:
    """The llama_ftype for a type name, from llama_cpp's LLAMA_FTYPE_* constants."""
    return int(
        getattr(ll, "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}")
    )


def quantize_file(src: str, out: str, type_name: str, threads: int, requantize: bool) -> int:
    """Quantize `src` into `out`; llama.cpp's log goes to stdout (fd 1). llama.cpp's return
    code (0: done)."""
    ll = bindings()

    @ll.llama_log_callback
    def log(level: int, text: bytes, user_data: object) -> None:
        try:
            os.write(1, text)
        except OSError:  # the parent is gone: nobody wants the result
            os._exit(1)

    ll.llama_log_set(log, ctypes.c_void_p(0))
    ll.llama_backend_init()
    params = ll.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype_value(ll, type_name)
    params.allow_requantize = requantize
    return int(ll.llama_model_quantize(os.fsencode(src), os.fsencode(out), ctypes.byref(params)))
