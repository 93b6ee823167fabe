"""A tiny random-weight llama GGUF with fill-in-the-middle tokens (as a coder model such as
Qwen2.5-Coder has): the tiny llama of tiny_gguf.py with <|fim_prefix|>, <|fim_suffix|>,
<|fim_middle|> and, for repo-level context, <|repo_name|> and <|file_sep|> as control tokens,
their ids written as tokenizer.ggml.fim_*_token_id."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiny_gguf import CONTROL, finish, llama_writer, write_llama_weights

FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
REPO = ["<|repo_name|>", "<|file_sep|>"]


def write_tiny_fim_gguf(path: Path, *, repo_level: bool = True, seed: int = 3) -> Path:
    """`repo_level`: with the repo-name and file-separator tokens (extra context as
    [FIM_REP]myproject [FIM_SEP]file …); without them llama-server separates extra chunks with
    a plain-text snippet line."""
    import gguf

    rng = np.random.default_rng(seed)
    markers = CONTROL + FIM + (REPO if repo_level else [])
    tokens = [t.encode() for t in markers] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = (
        [gguf.TokenType.UNKNOWN]
        + [gguf.TokenType.CONTROL] * (len(markers) - 1)
        + [gguf.TokenType.BYTE] * 256
    )
    w = llama_writer(path, tokens, types, template=None)
    keys = gguf.Keys.Tokenizer
    ids = [keys.FIM_PRE_ID, keys.FIM_SUF_ID, keys.FIM_MID_ID]
    ids += [keys.FIM_REP_ID, keys.FIM_SEP_ID] if repo_level else []
    for i, key in enumerate(ids):
        w.add_uint32(key, len(CONTROL) + i)
    n_vocab = len(tokens)

    write_llama_weights(w, rng, n_vocab)
    return finish(w, path)
