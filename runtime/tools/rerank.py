"""`infer rerank`: how relevant each document is to a query, by a reranker model (a GGUF whose
pooling is "rank", such as bge-reranker-v2-m3): each (query, document) pair is built as
llama-server builds it (llama/special.py) and scored through the embeddings context
(llama/embedder.py), the one home of pooled outputs. The server's /v1/rerank uses the same
pieces (its backend scores on the model's decode thread) and `ranked` below.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import OptionError, UsageError
from ..llama.embedder import gguf_pooling
from ..llama.special import rerank_tokens

if TYPE_CHECKING:
    from ..llama.embedder import Embedder
    from ..llama.interface import Model


def check_reranker(engine: Model, name: str) -> None:
    """An OptionError naming the model unless its GGUF asks for rank pooling."""
    if gguf_pooling(engine) != "rank":
        raise OptionError(
            "model",
            f"{name} is not a reranker (its GGUF's pooling is not 'rank'): use a reranker "
            "model such as a bge-reranker-v2-m3 GGUF",
            sep=": ",
        )


def pair_tokens(engine: Model, query: str, documents: Sequence[str], limit: int) -> list[list[int]]:
    """Each (query, document) pair's tokens; a pair over `limit` is an error naming it."""
    out = []
    for i, doc in enumerate(documents):
        tokens = rerank_tokens(engine, query, doc)
        if len(tokens) > limit:
            raise UsageError(
                f"document {i + 1} with the query is {len(tokens)} tokens; the context holds "
                f"{limit} (use a larger --ctx-size)"
            )
        out.append(tokens)
    return out


def scores(
    embedder: Embedder,
    inputs: Sequence[Sequence[int]],
    cancel: threading.Event | None = None,
) -> list[float]:
    """One relevance score per pair: the first output of the rank pooling, as llama-server
    reports it (no normalisation)."""
    vectors = embedder.embed(inputs, normalize=False, cancel=cancel)
    return [float(v[0]) for v in vectors]  # type: ignore[arg-type]  # pooled: one list each


def ranked(values: Sequence[float], top_n: int | None = None) -> list[tuple[int, float]]:
    """(index, score) best first (a stable sort: equal scores keep their order), at most
    `top_n` of them."""
    order = sorted(enumerate(values), key=lambda s: s[1], reverse=True)
    return order if top_n is None else order[:top_n]
