"""Writes a tiny random-weight llama GGUF (about half a megabyte) for fast engine tests.

A 2-layer llama, n_embd 64, 4 heads, f32, with an SPM vocabulary of 4 control tokens and the 256
byte tokens. Its random output includes invalid UTF-8 byte sequences: exactly what the
detokeniser must survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_EMBD, N_HEAD, N_FF, N_LAYER, N_CTX = 64, 4, 128, 2, 256
CONTROL = ["<unk>", "<s>", "</s>", "<|im_start|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(
    path: Path, *, template: str | None = TEMPLATE, seed: int = 0, block_count: int | str = N_LAYER
) -> Path:
    """`block_count` as a string makes a file whose metadata is of the wrong type."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [t.encode() for t in CONTROL] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] * 256
    n_vocab = len(tokens)

    w = llama_writer(path, tokens, types, template=template, block_count=block_count)
    write_llama_weights(w, rng, n_vocab)
    return finish(w, path)


def write_llama_weights(
    w: Any, rng: np.random.Generator, n_vocab: int, *, head_rows: Sequence[int] | None = None
) -> None:
    """The tiny llama's tensors, random (scale 0.3) in one fixed draw order, so a seed always
    gives the same file. `head_rows`: only these rows of `output.weight` stay (the others are
    zero, so only those tokens can win at temperature 0)."""

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    tensor("token_embd.weight", n_vocab, N_EMBD)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    head = (rng.standard_normal((n_vocab, N_EMBD)) * 0.3).astype(np.float32)
    if head_rows is not None:
        keep = np.zeros(n_vocab, dtype=bool)
        keep[list(head_rows)] = True
        head[~keep] = 0.0
    w.add_tensor("output.weight", head)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)


def llama_writer(
    path: Path,
    tokens: Sequence[bytes],
    types: Sequence[int],
    *,
    template: str | None,
    block_count: int | str = N_LAYER,
) -> Any:
    """A GGUFWriter with the tiny llama's hyperparameters and this vocabulary written: the
    caller adds the tensors and calls finish()."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    if isinstance(block_count, str):
        w.add_string("llama.block_count", block_count)
    else:
        w.add_block_count(block_count)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * len(tokens))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    if template is not None:
        w.add_chat_template(template)
    return w


def finish(w: Any, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BERT_WORDS = ["the", "cat", "sat", "on", "mat", "dog", "hello", "world", "query", ":", "."]


def write_tiny_bert_gguf(
    path: Path,
    *,
    seed: int = 0,
    pooling: int = 1,
    extra: dict[str, Any] | None = None,
    words: Sequence[str] = BERT_WORDS,
) -> Path:
    """A tiny random-weight BERT encoder (non-causal, mean pooling by default) with a
    WordPiece vocabulary of a few words, [CLS]/[SEP], and the 26 letters as pieces. `extra`:
    more tensors by name (a reranker's classification head: tests/tiny_rerank.py); `words`:
    the whole-word tokens (llama.cpp's WordPiece looks words up as "\u2581word")."""
    import gguf

    rng = np.random.default_rng(seed)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = special + list(words) + letters + ["##" + c for c in letters]
    types = [gguf.TokenType.CONTROL] * len(special) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(special)
    )
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "bert")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_file_type(0)
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_unk_token_id(1)
    w.add_sep_token_id(3)
    w.add_pad_token_id(0)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_bos_token_id(2)
    w.add_eos_token_id(3)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    def norm(name: str) -> None:
        w.add_tensor(f"{name}.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"{name}.bias", np.zeros(N_EMBD, dtype=np.float32))

    tensor("token_embd.weight", n_vocab, N_EMBD)
    tensor("token_types.weight", 2, N_EMBD)
    tensor("position_embd.weight", N_CTX, N_EMBD)
    norm("token_embd_norm")
    for i in range(N_LAYER):
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
            tensor(f"blk.{i}.attn_{part}.bias", N_EMBD)
        norm(f"blk.{i}.attn_output_norm")
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.bias", N_FF)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
        tensor(f"blk.{i}.ffn_down.bias", N_EMBD)
        norm(f"blk.{i}.layer_output_norm")
    for name, array in (extra or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
