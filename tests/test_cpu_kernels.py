"""llama.cpp's AMX kernels crash (llama.cpp #20824): infer loads without repacking there."""

from infer.runtime.llama.cpu_kernels import repack_is_safe


def test_amx_builds_load_without_repacking() -> None:
    assert not repack_is_safe("CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    assert repack_is_safe("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 | REPACK = 1 |")
    assert repack_is_safe("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |")
