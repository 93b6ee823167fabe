"""Perplexity of a model over a text, computed exactly as llama.cpp's `llama-perplexity` does
(tools/perplexity/perplexity.cpp, `perplexity()`), so that the two figures can be compared:

- the whole text is tokenized once, with BOS when the vocabulary adds one (add_special);
- it is cut into non-overlapping windows of n_ctx tokens (a partial last window is dropped), and
  each is evaluated from an empty KV cache, its first token replaced by BOS when the vocabulary
  adds one;
- only the second half of each window is scored (first = n_ctx/2), so that every scored token
  has at least n_ctx/2 tokens of context;
- PPL = exp(mean NLL), and its standard error by the delta method:
  PPL * sqrt((mean(NLL²) - mean(NLL)²) / (N - 1)).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OptionError, TextTooShortError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..llama.interface import Model, Session

ROWS_PER_STEP = 64  # logits rows turned into log-probabilities at once: bounds the temporaries


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    ctx_size: int
    chunks: int
    tokens: int  # in the whole text
    scored_tokens: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Sums:
    """Running sums in float64, as llama.cpp keeps them."""

    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0

    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else math.nan

    def ppl_stderr(self) -> float:
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return self.ppl() * math.sqrt(var / (self.count - 1)) if var > 0 else math.nan


# progress(chunks done, chunks in all, PPL so far)
Progress = Callable[[int, int, float], None]


def tokenize_text(model: Model, text: str) -> np.ndarray:
    """All of `text` as tokens, with the vocabulary's special tokens (BOS) and without parsing
    special-token markup in the text: llama.cpp's common_tokenize(ctx, text, true)."""
    import numpy as np

    out, n = model.tokenize_into_buffer(text, add_special=True, special=False)
    return np.ctypeslib.as_array(out)[:n].copy()


def perplexity(
    model: Model,
    text: str,
    *,
    ctx_size: int = 512,
    max_chunks: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> PerplexityResult:
    """Perplexity of `text` in windows of `ctx_size` tokens (at most `max_chunks` of them),
    on a session of its own (the model's window must hold `ctx_size` tokens). Raises
    TextTooShortError below two windows of text, Interrupted when `cancel` is set."""
    if ctx_size < 16:
        raise OptionError("ctx_size", f"must be >= 16 (got {ctx_size})")
    if ctx_size > model.n_ctx:
        raise UsageError(f"the model's context holds {model.n_ctx} tokens, not {ctx_size}")
    started = time.perf_counter()
    tokens = tokenize_text(model, text)
    if len(tokens) < 2 * ctx_size:
        raise TextTooShortError(len(tokens), 2 * ctx_size, ctx_size)
    n_chunk = len(tokens) // ctx_size
    if max_chunks is not None:
        n_chunk = min(n_chunk, max(1, max_chunks))
    sums = _Sums()
    if progress is not None:
        progress(0, n_chunk, math.nan)
    session = model.new_session()
    try:
        with _Evaluator(session, ctx_size, cancel) as ev:
            for i in range(n_chunk):
                ev.chunk(tokens[i * ctx_size : (i + 1) * ctx_size], sums)
                if progress is not None:
                    progress(i + 1, n_chunk, sums.ppl())
    finally:
        session.close()
    return PerplexityResult(
        ppl=sums.ppl(),
        ppl_stderr=sums.ppl_stderr(),
        nll=sums.nll / sums.count,
        ctx_size=ctx_size,
        chunks=n_chunk,
        tokens=len(tokens),
        scored_tokens=sums.count,
        seconds=time.perf_counter() - started,
    )


class _Evaluator:
    """Decodes windows on sequence 0 of a session's context, through the engine interface's
    Context: logits for the second half of each window, scored in numpy."""

    def __init__(self, session: Session, n_ctx: int, cancel: threading.Event | None):
        self.model, self.context = session.model, session.context
        self.n_ctx, self.n_batch, self.n_vocab = n_ctx, session.n_batch, self.model.n_vocab
        self.cancel = cancel or threading.Event()

    def __enter__(self) -> _Evaluator:
        self.context.remove(0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.context.remove(0)  # the session's record of its KV cache stays true

    def chunk(self, window: np.ndarray, sums: _Sums) -> None:
        """Evaluate one window from an empty cache and add the NLL of its second half."""
        ctx, n_ctx, first = self.context, self.n_ctx, self.n_ctx // 2
        ctx.remove(0)
        tokens = window.tolist()
        if self.model.add_bos:
            tokens[0] = self.model.bos_id  # replaces the first token, as llama.cpp does
        for start in range(0, n_ctx, self.n_batch):
            size = min(self.n_batch, n_ctx - start)
            scored = min(size, start + size - first)  # positions >= first want logits
            row = ctx.add(0, tokens[start : start + size], max(0, scored))
            # llama.cpp polls the event during llama_decode: Ctrl-C stops a window within a
            # fraction of a second.
            ctx.decode(self.cancel)
            # The logits rows are the positions lo, lo+1, ...; position p predicts token p + 1,
            # and the window's last position predicts nothing.
            lo, hi = max(first, start), min(start + size, n_ctx - 1)
            if hi > lo:
                self._score(window[lo + 1 : hi + 1], ctx.logits(row, hi - lo), sums)

    def _score(self, targets: np.ndarray, logits: Any, sums: _Sums) -> None:
        """Add -log softmax(logits row i)[targets[i]] for each target, with llama.cpp's
        arithmetic: the max and exp in float32, their sum and the log in float64."""
        import numpy as np

        n_rows = len(targets)
        rows_all = np.frombuffer(logits, dtype=np.float32).reshape(n_rows, self.n_vocab)
        for r in range(0, n_rows, ROWS_PER_STEP):
            rows = rows_all[r : r + ROWS_PER_STEP]
            tgt = targets[r : r + len(rows)]
            peak = rows.max(axis=1)
            sum_exp = np.exp(rows - peak[:, None]).sum(axis=1, dtype=np.float64)
            picked = rows[np.arange(len(rows)), tgt] - peak
            nll = np.log(sum_exp) - picked.astype(np.float64)
            sums.nll += float(nll.sum())
            sums.nll2 += float((nll * nll).sum())
            sums.count += len(rows)
