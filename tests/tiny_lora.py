"""Tiny LoRA adapters for the tiny llama of tests/tiny_gguf.py, written with gguf-py as
llama.cpp's convert_lora_to_gguf.py writes them (src/llama-adapter.cpp reads them).

The base model here is tests/tiny_gguf.py's llama with one change: only the printable ASCII byte
tokens can win at temperature 0 (the other rows of `output.weight` are zero, so their logits are
0 while the best of 95 random logits is positive). Its answers are then plain text, compared
byte for byte with llama-completion's stdout.

An adapter holds, for each adapted weight W (numpy shape (out, in)), `W.lora_a` of shape
(rank, in) and `W.lora_b` of shape (out, rank); llama.cpp adds scale * alpha / rank * B·A·x.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .tiny_gguf import (
    CONTROL,
    N_EMBD,
    N_FF,
    N_LAYER,
    TEMPLATE,
    finish,
    llama_writer,
    write_llama_weights,
)

PRINTABLE = range(0x20, 0x7F)
# What an adapter adapts by default: (tensor, (out, in)) per block, and the output head.
TARGETS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("attn_q", (N_EMBD, N_EMBD)),
    ("attn_v", (N_EMBD, N_EMBD)),
    ("ffn_up", (N_FF, N_EMBD)),
)


def write_text_model(path: Path, *, seed: int = 0) -> Path:
    """The tiny llama whose greedy answers are printable ASCII."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [t.encode() for t in CONTROL] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] * 256
    n_vocab = len(tokens)
    w = llama_writer(path, tokens, types, template=TEMPLATE)

    write_llama_weights(w, rng, n_vocab, head_rows=[len(CONTROL) + b for b in PRINTABLE])
    return finish(w, path)


def write_tiny_lora(
    path: Path,
    *,
    seed: int = 1,
    rank: int = 4,
    alpha: float = 8.0,
    arch: str = "llama",
    general_type: str = "adapter",
    adapter_type: str = "lora",
    targets: Sequence[tuple[str, tuple[int, int]]] = TARGETS,
    strength: float = 1.0,
) -> Path:
    """A LoRA adapter for the tiny llama. `arch`, `general_type`, `adapter_type` and
    `targets` (shapes) can be set wrong, for the refusals."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", general_type)
    w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", alpha)
    for i in range(N_LAYER):
        for name, (n_out, n_in) in targets:
            a = rng.standard_normal((rank, n_in)) * strength
            b = rng.standard_normal((n_out, rank)) * strength
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", a.astype(np.float32))
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", b.astype(np.float32))
    return finish(w, path)


def write_lora_for(
    path: Path,
    model: Path,
    *,
    parts: Sequence[str] = ("attn_q", "attn_v"),
    seed: int = 2,
    rank: int = 4,
    strength: float = 0.05,
) -> Path:
    """A random LoRA adapter for any llama-architecture GGUF (the bundled SmolLM2): `parts`
    of every block adapted, with the shapes read from the model's header."""
    import gguf

    from infer.runtime.models.gguf import read_header

    header = read_header(model)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), header.architecture)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    wanted = {f".{part}.weight" for part in parts}
    for t in header.tensors:
        if t.name.startswith("blk.") and any(t.name.endswith(end) for end in wanted):
            n_in, n_out = t.shape[0], t.shape[1]  # GGUF order: ne0 is the input
            a = rng.standard_normal((rank, n_in)) * strength
            b = rng.standard_normal((n_out, rank)) * strength
            w.add_tensor(f"{t.name}.lora_a", a.astype(np.float32))
            w.add_tensor(f"{t.name}.lora_b", b.astype(np.float32))
    return finish(w, path)
