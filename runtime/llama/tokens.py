"""Token sequences: what the engine, generation and the prompt cache compare.

In llama/ because the engine needs it (KV reuse) and may not import generation/, the layer above
that also uses it."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice


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
