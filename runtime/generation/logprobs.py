"""Log-probabilities of generated tokens, as llama-server reports them (its
`get_token_probabilities`): the log-softmax over the whole vocabulary of the raw logits row the
token was sampled from, before any sampler touched it (temperature, top-k/p, min-p, penalties,
grammar), for the sampled token and the `n` most likely tokens of that row.

Computed only for a sequence that asks (`GenerateOptions.logprobs`): numpy over one logits row
per generated token, 0.1 to 0.3 ms for SmolLM2's 49k vocabulary on 2 busy cores (a token takes
about 8 ms to decode there); nothing at all otherwise. numpy comes with llama-cpp-python, and
is imported when a reader is made.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_TOP = 20  # alternatives per token on every door that follows OpenAI's chat limit
MAX_TOP_COMPLETIONS = 100  # /v1/completions' `logprobs`: llama-server allows more than OpenAI's 5
WINDOW = 8.0  # the top alternatives are looked for this far below the largest logit first


class _Vocabulary(Protocol):
    n_vocab: int

    def piece(self, token: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Alternative:
    """One of the most likely tokens at a position. `text` is the token's text as llama-server
    writes it (an unfinished UTF-8 sequence at its end left out); `raw` its bytes."""

    token: int
    text: str
    raw: bytes
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token. `text` is the text this token adds to the answer (a character split
    over two tokens belongs to the token that completes it), so the texts of an answer's tokens
    join to its text; `raw` is the token's own bytes, which join to the answer's bytes."""

    token: int
    text: str
    raw: bytes
    logprob: float
    top: tuple[Alternative, ...]


class LogprobReader:
    """Reads a sampled token's log-probability and the `n_top` most likely tokens out of the
    logits row it was sampled from."""

    def __init__(self, model: _Vocabulary, n_top: int) -> None:
        import numpy as np

        self._np, self._model, self.n_top = np, model, max(0, min(n_top, model.n_vocab))
        self._n_vocab = model.n_vocab
        self._texts: dict[int, str] = {}
        self._buf = np.empty(model.n_vocab, dtype=np.float32)  # exp() of one row

    def read(self, logits: Any, token: int) -> tuple[float, tuple[Alternative, ...]]:
        """(log p(token), the top alternatives, most likely first) of one row: `logits` is a
        buffer of n_vocab float32 (Context.logits(row, 1))."""
        np, buf = self._np, self._buf
        row = np.frombuffer(logits, dtype=np.float32, count=self._n_vocab)
        peak = row.max()
        # In float32 as llama-server computes it, into a buffer kept between tokens. A value is
        # logit - log-sum-exp, never the log of an exp: it stays finite where llama-server's
        # float32 probability underflows to 0 (it then reports -FLT_MAX).
        np.subtract(row, peak, out=buf)
        np.exp(buf, out=buf)
        lse = float(peak) + float(np.log(buf.sum()))
        top: tuple[Alternative, ...] = ()
        if self.n_top:
            top = tuple(
                self._alternative(int(t), float(row[t]) - lse) for t in self._top(row, peak)
            )
        return float(row[token]) - lse, top

    def of_probs(
        self, prob: float, top: Sequence[tuple[int, float]]
    ) -> tuple[float, tuple[Alternative, ...]]:
        """(log p(token), the alternatives) from probabilities the sampler chain gave (the
        token's and its likeliest candidates', Context.sample_probs): llama-server's
        post_sampling_probs, kept as logarithms as `read`'s values are."""
        alternatives = tuple(self._alternative(t, _log(p)) for t, p in top[: self.n_top])
        return _log(prob), alternatives

    def _top(self, row: Any, peak: float) -> Any:
        """The ids of the n_top largest logits, most likely first, ties broken by the lower id
        (a partition alone picks among equal values arbitrarily)."""
        np, k = self._np, self.n_top
        # Where at least k logits lie within WINDOW of the largest, the k largest are among
        # them: partition those few rather than the whole row.
        ids = np.flatnonzero(row >= peak - WINDOW)
        if len(ids) < k:
            ids = np.arange(self._n_vocab)
        near = row[ids]
        kth = np.partition(near, -k)[-k]
        above = ids[near > kth]
        chosen = np.concatenate((above, ids[near == kth][: k - len(above)]))
        return chosen[np.lexsort((chosen, -row[chosen]))]

    def _alternative(self, token: int, logprob: float) -> Alternative:
        raw = self._model.piece(token)
        text = self._texts.get(token)
        if text is None:
            # The incremental decoder leaves an unfinished UTF-8 sequence at the end out, as
            # llama-server's validate_utf8 does; other invalid bytes become U+FFFD.
            text = self._texts[token] = codecs.getincrementaldecoder("utf-8")("replace").decode(raw)
        return Alternative(token, text, raw, logprob)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


class Trail:
    """A sequence's token log-probabilities on their way out with its text. Text is released
    later than tokens are sampled (a UTF-8 character split over tokens, text held back while it
    may begin a stop string), so each token waits here until text reaching into it goes out,
    and goes out with that text: a streamed chunk carries the tokens of its own text. Tokens
    wholly inside a stop string are never released, as llama-server drops them."""

    __slots__ = ("_decoded", "_pending", "_released", "reader", "tokens")

    def __init__(self, reader: LogprobReader) -> None:
        self.reader = reader
        self.tokens: list[TokenLogprob] = []  # released so far, in order
        self._pending: list[tuple[int, TokenLogprob]] = []  # (where its text starts, token)
        self._decoded = 0  # characters of the answer's text decoded so far
        self._released = 0  # ... and released

    def add(
        self,
        logits: Any,
        token: int,
        raw: bytes,
        text: str,
        probs: tuple[float, Sequence[tuple[int, float]]] | None = None,
    ) -> None:
        """A sampled token: its logits row, its bytes and the text they completed; `probs`:
        the chain's probabilities instead of the row's (post-sampling; see `of_probs`)."""
        if probs is None:
            logprob, top = self.reader.read(logits, token)
        else:
            logprob, top = self.reader.of_probs(*probs)
        self._pending.append((self._decoded, TokenLogprob(token, text, raw, logprob, top)))
        self._decoded += len(text)

    def release(self, released: str, *, end: bool = False) -> tuple[TokenLogprob, ...]:
        """The tokens that go out with `released`, the text released now; at the `end` (no stop
        string cut the answer), every token still waiting."""
        self._released += len(released)
        n = len(self._pending)
        if not end:
            n = next((i for i, (at, _) in enumerate(self._pending) if at >= self._released), n)
        out = tuple(entry for _, entry in self._pending[:n])
        del self._pending[:n]
        self.tokens.extend(out)
        return out


def as_json(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """Tokens as OpenAI's chat answers list them (`choices[].logprobs.content`), with
    llama-server's `id` beside: {id, token, logprob, bytes, top_logprobs: [{id, token, logprob,
    bytes}]}. The server's chat door and `infer run --json --logprobs N` write this."""
    return [
        {
            "id": t.token,
            "token": t.text,
            "logprob": t.logprob,
            "bytes": list(t.raw),
            "top_logprobs": [
                {"id": a.token, "token": a.text, "logprob": a.logprob, "bytes": list(a.raw)}
                for a in t.top
            ],
        }
        for t in tokens
    ]
