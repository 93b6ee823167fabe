"""The default --gpu-layers: every layer that fits in the GPUs' free memory
(runtime/llama/offload.py).

The fit is checked with the real GGUF tables of the tiny and bundled models and made-up free
memory, on any build. The device query itself is checked against the devices llama.cpp
registered: on a build without GPU devices (CPU-only, or a GPU build on a machine without one)
it must find none and offload nothing; on a GPU build with a GPU, the tiny model must go there
whole. Each of those two skips on the other kind of build, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer.runtime import LoadOptions
from infer.runtime.llama.bindings import bindings
from infer.runtime.llama.model import LlamaModel
from infer.runtime.llama.offload import (
    RESERVE_BYTES,
    Device,
    default_gpu_layers,
    devices,
    gpu_free_memory,
    kv_bytes_per_layer,
    layer_bytes,
    layers_that_fit,
)
from infer.runtime.models.gguf import GGUFHeader, TensorInfo, read_header

MIB = 1 << 20


def test_the_last_layers_first_and_the_output_layer_only_with_all() -> None:
    layers, output = [100 * MIB] * 10, 50 * MIB
    free_for = {n: int((RESERVE_BYTES + n) / 0.95) + 1 for n in (0, 450 * MIB, 1050 * MIB)}
    assert layers_that_fit(layers, output, 0) == 0
    assert layers_that_fit(layers, output, free_for[0]) == 0
    assert layers_that_fit(layers, output, free_for[450 * MIB]) == 4
    assert layers_that_fit(layers, output, free_for[1050 * MIB]) == 11  # 10 layers + output
    assert layers_that_fit(layers, 60 * MIB, free_for[1050 * MIB]) == 10  # output does not fit
    uneven = [10 * MIB, 10 * MIB, 440 * MIB]  # llama.cpp offloads the last layer first
    assert layers_that_fit(uneven, 0, free_for[450 * MIB]) == 2


def test_layer_sizes_come_from_the_tensor_table(bundled_model: Path) -> None:
    header = read_header(bundled_model)
    layers, output = layer_bytes(header, n_ctx=4096)
    n_layer = header.arch_value("block_count")
    assert len(layers) == n_layer == 30
    weights = sum(t.nbytes for t in header.tensors if t.name.startswith("blk."))
    kv = kv_bytes_per_layer(header)
    assert kv == 3 * (64 + 64) * 2  # 3 KV heads of 64, f16 K and V
    assert sum(layers) == weights + n_layer * kv * 4096
    embeddings = next(t.nbytes for t in header.tensors if t.name == "token_embd.weight")
    assert output >= embeddings  # tied embeddings: the output layer is a copy of them
    # 30 layers and the output layer need ~285 MB at 8192 tokens: a 1 GiB GPU takes them all.
    assert layers_that_fit(*layer_bytes(header, 8192), free=1 << 30) == 31
    assert 0 < layers_that_fit(*layer_bytes(header, 8192), free=700 * MIB) < 31


def test_a_split_model_is_spread_over_its_layers(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00002.gguf"
    first.write_bytes(b"\0" * 3000)
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"\0" * 5000)
    metadata = {"general.architecture": "llama", "llama.block_count": 3, "split.count": 2}
    tensors = [TensorInfo("blk.0.attn_q.weight", (4, 4), 0, 0, 64)]
    header = GGUFHeader(first, 3, metadata, tensors)
    layers, output = layer_bytes(header, n_ctx=512)
    assert layers == [2000] * 3 and output == 2000  # 8000 bytes over 3 layers + output


def gpus() -> list[Device]:
    """The GPU devices this build and machine have (RPC servers count as GPUs; none is added
    in these tests)."""
    ll = bindings()
    ll.llama_backend_init()
    found = devices(ll)
    assert found is not None, "these bindings lack the ggml device API"
    assert any(d.kind == "CPU" for d in found)  # every build has the CPU
    return [d for d in found if d.kind in ("GPU", "iGPU")]


def test_no_gpu_offloads_nothing(tiny_model: Path) -> None:
    if found := gpus():
        pytest.skip(f"needs a build or machine without a GPU; this one has {found[0].name}")
    ll = bindings()
    assert gpu_free_memory(ll) is None
    assert default_gpu_layers(ll, read_header(tiny_model), 512) is None
    engine = LlamaModel(tiny_model, read_header(tiny_model), LoadOptions(ctx_size=256))
    try:
        assert engine.offloaded_layers == 0
    finally:
        engine.close()


def test_a_gpu_takes_a_model_that_fits_whole(tiny_model: Path) -> None:
    found = gpus()
    if not found:
        pytest.skip("needs a GPU build (CUDA, Metal, Vulkan …) on a machine with a GPU")
    ll = bindings()
    free = gpu_free_memory(ll)
    assert free == sum(d.free for d in found) and free > 0
    header = read_header(tiny_model)
    n_layer = header.arch_int("block_count")
    assert default_gpu_layers(ll, header, 256) == n_layer + 1  # a few MB: all, and the output
    engine = LlamaModel(tiny_model, header, LoadOptions(ctx_size=256))
    try:
        assert engine.offloaded_layers == engine.n_layers == n_layer + 1
    finally:
        engine.close()
