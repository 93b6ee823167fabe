"""A tiny random-weight reranker: the tiny BERT of tiny_gguf.py with pooling type RANK and a
classification head as llama.cpp's BERT loads it (models/bert.cpp): `cls.weight`/`cls.bias`
(n_embd → n_embd, then tanh) and `cls.output.weight`/`cls.output.bias` (n_embd → 1 score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiny_gguf import BERT_WORDS, N_EMBD, write_tiny_bert_gguf

RANK = 4  # LLAMA_POOLING_TYPE_RANK
# As llama.cpp's converter writes a WordPiece vocabulary: a word's first piece with "\u2581"
# (the letters, so any word tokenizes), the rest plain: documents get tokens of their own.
WORDS = ["\u2581" + w for w in BERT_WORDS] + ["\u2581" + chr(c) for c in range(97, 123)]


def write_tiny_rerank_gguf(path: Path, *, seed: int = 5) -> Path:
    rng = np.random.default_rng(seed + 1)

    def weights(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head = {
        "cls.weight": weights(N_EMBD, N_EMBD, scale=0.05),  # tanh unsaturated: scores differ
        "cls.bias": weights(N_EMBD),
        "cls.output.weight": weights(1, N_EMBD),
        "cls.output.bias": weights(1),
    }
    return write_tiny_bert_gguf(path, seed=seed, pooling=RANK, extra=head, words=WORDS)
