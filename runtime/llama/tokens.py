"""Token sequences: what the engine, generation and the prompt cache compare.

In llama/ because the engine needs it (KV reuse) and may not import generation/, the layer above
that also uses it."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from ..errors import UsageError


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """How many leading tokens `a` and `b` share, at most `limit` (0 when it is negative).
    Callers that must decode at least the prompt's last token, for its logits, pass
    len(prompt) - 1."""
    pairs = zip(a, b, strict=False)
    n = 0
    for x, y in pairs if limit is None else islice(pairs, max(limit, 0)):
        if x != y:
            break
        n += 1
    return n


def check_ids(n_vocab: int, ids: Sequence[int], field: str) -> None:
    """A UsageError naming `field` when an id in `ids` is outside the vocabulary (0 to
    n_vocab - 1). The one check for token ids a request gives (prompts of ids, /detokenize,
    embeddings inputs, logit_bias keys): llama.cpp reads them with `.at()` (an exception that
    ends the process in std::terminate) or as an index into its tables, before any check of its
    own."""
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise UsageError(f"'{field}' has token {bad}, outside the vocabulary (0..{n_vocab - 1})")
