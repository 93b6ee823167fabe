"""Which of llama.cpp's CPU weight layouts are safe to use on this machine.

llama.cpp repacks quantized weights into "extra buffer types" for faster CPU kernels. On
Sapphire Rapids and later Xeons a build with AMX (any `-march=native` build there) repacks them
for AMX, and `ggml_backend_amx_mul_mat` then segfaults on the first decode (llama.cpp issue
#20824, closed unfixed; seen here with the bundled SmolLM2 Q4_1 and with llama.cpp's own
llama-completion). Loading without extra buffer types (llama.cpp's `--no-repack`) avoids the
AMX path; the plain AVX-512 kernels compute the same model.
"""

from __future__ import annotations


def repack_is_safe(system_info: str) -> bool:
    """False when llama.cpp's CPU backend was built with AMX (its system-info line says
    "AMX_INT8 = 1"): its repacked AMX kernels crash (see the module's docstring)."""
    return "AMX_INT8 = 1" not in system_info
