"""`infer embed`: texts to vectors, packed many to a batch, as llama.cpp's llama-embedding
computes them (llama/embedder.py); splitting input text into items and a flat similarity scan.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OptionError, UsageError
from ..llama.embedder import embedding_tokens

if TYPE_CHECKING:
    from ..llama.embedder import Embedder
    from ..llama.interface import Model

SPLITS = ("line", "paragraph", "none")
_PARAGRAPH = re.compile(r"\n(?:[ \t]*\n)+")  # one or more blank lines


@dataclass
class Item:
    index: int  # in the input, counting skipped blank items too: a line's number minus one
    text: str


def split(text: str, mode: str) -> tuple[list[Item], int]:
    """The items of `text` (one per line, per blank-line-separated paragraph, or the whole
    text) and how many blank ones were skipped."""
    if mode not in SPLITS:
        raise OptionError("split", f"must be one of {', '.join(SPLITS)} (got {mode!r})")
    if mode == "none":
        parts = [text.removesuffix("\n")]
    elif mode == "paragraph":
        parts = _PARAGRAPH.split(text.strip("\n"))
    else:
        parts = text.removesuffix("\n").split("\n")
    items = [Item(i, p.rstrip("\r")) for i, p in enumerate(parts)]
    kept = [item for item in items if item.text.strip()]
    return kept, len(items) - len(kept)


def tokenize(
    engine: Model, items: Sequence[Item], limit: int, truncate: bool
) -> tuple[list[list[int]], int]:
    """Each item's tokens as llama-embedding makes them (BOS/EOS/SEP as the vocabulary adds
    them, control-token markup parsed), and how many were cut to `limit` (--truncate). Without
    --truncate an item over `limit` is an error naming it and both counts."""
    out, cut = [], 0
    for item in items:
        tokens = embedding_tokens(engine, item.text)
        if len(tokens) > limit:
            if not truncate:
                raise UsageError(
                    f"input {item.index + 1} is {len(tokens)} tokens; the context holds {limit} "
                    "(use a larger --ctx-size, or --truncate to cut it)"
                )
            tokens, cut = tokens[:limit], cut + 1
        out.append(tokens)
    return out, cut


def embed_all(
    embedder: Embedder,
    inputs: Sequence[Sequence[int]],
    *,
    normalize: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Any]:
    """Vectors for all inputs, in order; `progress(done, total)` after each batch's worth."""
    vectors: list[Any] = []
    step = 256  # inputs per progress report: the embedder packs them into batches itself
    for start in range(0, len(inputs), step):
        vectors.extend(
            embedder.embed(inputs[start : start + step], normalize=normalize, cancel=cancel)
        )
        if progress is not None:
            progress(len(vectors), len(inputs))
    return vectors


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def most_similar(
    query: Sequence[float], vectors: Sequence[Sequence[float]], k: int
) -> list[tuple[int, float]]:
    """(position, cosine) of the `k` vectors closest to `query`, best first (a flat scan)."""
    scored = [(i, cosine(query, v)) for i, v in enumerate(vectors)]
    scored.sort(key=lambda s: s[1], reverse=True)
    return scored[:k]
