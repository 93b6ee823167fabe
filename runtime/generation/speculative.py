"""Speculative decoding: draft several tokens cheaply, verify them with one decode of the target.

A step decodes [last sampled token, d1..dk] in one batch with logits at every position, then
samples each position in order with the target's own sampler chain, keeping a draft only while it
equals the token sampled there. The first mismatch yields the sampled token instead and its KV
entries (and all after it) are removed. So every emitted token is drawn from exactly the
distribution plain decoding draws it from (at temperature 0: the same tokens, see
benchmarks/README.md for the one caveat, batched arithmetic), and one decode emits 1 to k+1
tokens.

Drafts come from prompt lookup (the n-gram that ends the text so far, found earlier in the prompt
or the answer: free, and right whenever the answer copies from the input) or from a small model
with the same vocabulary, which keeps its own KV cache in step with the accepted tokens.

The plain per-token loop in llama/session.py is left alone: this module runs only when a draft
is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import EngineError, IncompatibleDraftError, Interrupted, OptionError, UsageError
from ..params import SamplingParams
from .draft_policy import DraftPolicy

if TYPE_CHECKING:
    from ..llama.interface import Context, Model, Session
    from ..params import GenerateOptions

LOOKUP = "lookup"
DEFAULT_DRAFT_MAX = {LOOKUP: 16, "model": 6}  # chosen with benchmarks/speculative.py
DEFAULT_NGRAM = 3
VOCAB_SAMPLE = 64  # token texts compared between target and draft vocabularies


@dataclass
class DraftCounts:
    """What speculative decoding did, for the caller to merge into its own statistics."""

    drafter: str = ""  # "lookup" or the draft model's name
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, accepted (emitted without a decode of their own)


class Drafter(Protocol):
    name: str

    def draft(self, history: list[int], k: int, cancel: threading.Event) -> list[int]:
        """Up to `k` tokens likely to follow `history` (which only grows between calls)."""
        ...


class LookupDrafter:
    """Prompt lookup: find the longest n-gram (2 <= n <= `ngram`) ending the history that
    occurred before, most recent occurrence first, and propose the tokens that followed it there.
    An index from n-gram to the position after its last occurrence is extended incrementally,
    so a step costs a few dictionary lookups however long the prompt is."""

    name = LOOKUP

    def __init__(self, ngram: int = DEFAULT_NGRAM) -> None:
        self.ngram = ngram
        # A single matching token predicts little (measured: about 45% of such drafts held).
        self.min_ngram = min(2, ngram)
        self._next: dict[tuple[int, ...], int] = {}
        self._seen = 0

    def _index(self, history: list[int]) -> None:
        if len(history) < self._seen:  # not the same history: start again
            self._next.clear()
            self._seen = 0
        table, ngram = self._next, self.ngram
        # Position i continues every n-gram ending just before it; the n-gram ending the
        # history has no continuation yet and is never indexed (it would match itself).
        for i in range(max(self._seen, 1), len(history)):
            for n in range(1, min(ngram, i) + 1):
                table[tuple(history[i - n : i])] = i
        self._seen = len(history)

    def draft(self, history: list[int], k: int, cancel: threading.Event) -> list[int]:
        self._index(history)
        for n in range(min(self.ngram, len(history)), self.min_ngram - 1, -1):
            at = self._next.get(tuple(history[-n:]))
            if at is None:
                continue
            # The longer the text before the match agrees too, the likelier the copy goes on;
            # a rejected draft token costs most of a decode here (benchmarks/README.md), so
            # draft at most half as many tokens as agree.
            agree = n
            while agree < 2 * k and agree < at and history[at - agree - 1] == history[-agree - 1]:
                agree += 1
            return history[at : at + min(k, max(1, agree // 2))]
        return []


class ModelDrafter:
    """A small model with the target's vocabulary drafts greedily, in its own session. Its KV
    cache is brought to the accepted history at each step (only the new tokens are decoded:
    rejected drafts are cut off by the session's common-prefix reuse)."""

    def __init__(self, session: Session, name: str = "model") -> None:
        self.session, self.name = session, name
        session.context.set_sampler(0, SamplingParams(temperature=0))  # greedy

    def draft(self, history: list[int], k: int, cancel: threading.Event) -> list[int]:
        s, ctx = self.session, self.session.context
        k = min(k, s.n_ctx - len(history))
        if k <= 0:
            return []
        s.decode_prompt(history, cancel)
        out: list[int] = []
        row = -1  # the prompt's last logits
        while True:
            token = ctx.sample(0, row)
            if s.model.is_eog(token):
                return out
            out.append(token)
            if len(out) == k:
                return out
            row = ctx.add(0, [token], True)
            try:
                ctx.decode()
            except EngineError:
                return out  # a failed draft only costs acceptance; the target decides

    def close(self) -> None:
        """Nothing to free: the greedy chain belongs to the draft session's context, and its
        KV cache stays for the next answer (a chat's next turn shares the history)."""


def check_compatible(target: Model, draft: Model, draft_name: str = "the draft model") -> None:
    """Refuse a draft model whose tokens mean something else: the same vocabulary size and the
    same text for a spread of token ids (BOS and EOS included)."""
    t, d = target, draft
    if t.n_vocab != d.n_vocab:
        raise IncompatibleDraftError(
            f"{draft_name} has a different vocabulary ({d.n_vocab} tokens, the model has "
            f"{t.n_vocab}): a draft model must share the model's tokenizer"
        )
    step = max(1, t.n_vocab // VOCAB_SAMPLE)
    ids = {*range(0, t.n_vocab, step), t.n_vocab - 1, t.bos_id, t.eos_id} - {-1}
    for token in sorted(ids):
        if t.token_text(token) != d.token_text(token):
            raise IncompatibleDraftError(
                f"{draft_name} has a different vocabulary (token {token} is "
                f"{d.token_text(token)!r}, not {t.token_text(token)!r}): a draft model must "
                "share the model's tokenizer"
            )


def make_drafter(source: Session | str, options: GenerateOptions) -> Drafter:
    """The drafter for `source`: "lookup", or a draft model's session from api.load_draft()."""
    if source == LOOKUP:
        return LookupDrafter(options.draft_ngram or DEFAULT_NGRAM)
    if isinstance(source, str) or source is None:
        raise OptionError("draft", f"must be '{LOOKUP}' or a loaded draft model (got {source!r})")
    return ModelDrafter(source, source.model.header.path.stem)


def generate(
    target: Session,
    prompt: list[int],
    sampling: SamplingParams,
    cancel: threading.Event,
    options: GenerateOptions,
    source: Session | str,
) -> tuple[Generator[bytes, None, None], DraftCounts]:
    """Like Session.generate (same stops: end-of-generation, full context, `cancel`),
    drafting from `source` ("lookup" or a draft model) and verifying up to `options.draft_max`
    tokens per decode. Drafts never run past `options.max_tokens`, so a limit costs no wasted
    verification and is never overshot. Returns the token stream and its counts, which fill in
    as the stream is consumed."""
    counts = DraftCounts()
    return _generate(target, prompt, sampling, cancel, options, source, counts), counts


def _generate(
    target: Session,
    prompt: list[int],
    sampling: SamplingParams,
    cancel: threading.Event,
    options: GenerateOptions,
    source: Session | str,
    counts: DraftCounts,
) -> Generator[bytes, None, None]:
    if target.model.is_recurrent:
        raise UsageError("speculative decoding needs a transformer: this model is recurrent")
    drafter = make_drafter(source, options)
    kind = LOOKUP if isinstance(drafter, LookupDrafter) else "model"
    k_max = options.draft_max or DEFAULT_DRAFT_MAX[kind]
    counts.drafter = drafter.name
    if len(prompt) > target.n_ctx:
        raise EngineError("prompt longer than the context")  # callers check this first
    with target.sharing_cores():
        target.decode_prompt(prompt, cancel)
        policy = DraftPolicy(k_max, adaptive=options.draft_adapt)
        try:
            limit = options.max_tokens
            yield from run(
                target.model, target.context, sampling, drafter, policy, limit, cancel, counts
            )
        finally:
            if isinstance(drafter, ModelDrafter):
                drafter.close()


def run(
    model: Model,
    context: Context,
    sampling: SamplingParams,
    drafter: Drafter,
    policy: DraftPolicy,
    limit: int | None,
    cancel: threading.Event,
    counts: DraftCounts,
) -> Generator[bytes, None, None]:
    """The speculative loop over sequence 0 of `context`, whose cells hold the prompt and whose
    last decode has its logits. On the engine interface only (tests run it on the fake)."""
    tokens, piece, clock = context.tokens(0), model.piece, time.perf_counter
    is_eog, n_ctx = model.is_eog, context.n_ctx_seq
    verifier = _Verifier(model, context, sampling)
    token = verifier.sample(-1)  # from the prompt's logits
    emitted = 0
    while not is_eog(token):
        yield piece(token)
        emitted += 1
        if cancel.is_set():
            raise Interrupted()
        # `token` is not in the KV cache yet; it and the drafts must fit in the context and in
        # one decode, and drafts past the caller's token limit would be verified for nothing.
        k = min(policy.k_max, n_ctx - len(tokens) - 1, context.n_batch - 1)
        if limit is not None:
            k = min(k, limit - emitted)
        started = clock()
        drafts = (
            drafter.draft([*tokens, token], k, cancel) if k > 0 and policy.worth_drafting() else []
        )
        drafted_at = clock()
        use = policy.choose(len(drafts))
        token, accepted = verifier.verify(token, drafts[:use])
        policy.record_step(use + 1, clock() - drafted_at)
        if drafts:
            policy.record_draft(len(drafts), use, len(accepted), drafted_at - started)
        counts.drafted += use
        counts.accepted += len(accepted)
        for t in accepted:
            yield piece(t)
            emitted += 1
            if cancel.is_set():
                raise Interrupted()
        if len(tokens) >= n_ctx:
            return  # as the plain loop: every emitted token is in the (now full) cache


class _Verifier:
    """The target side: sequence 0's sampler chain is the one plain generation would use (so
    penalties and the seed's random stream advance exactly as they would there: one sample per
    emitted token)."""

    def __init__(self, model: Model, context: Context, sampling: SamplingParams) -> None:
        self.model, self.context = model, context
        context.set_sampler(0, sampling, context.tokens(0))  # sequence 0 holds the prompt

    def sample(self, row: int) -> int:
        return self.context.sample(0, row)

    def verify(self, token: int, drafts: list[int]) -> tuple[int, list[int]]:
        """Decode `token` + `drafts` with logits at every position; returns (the next sampled
        token, the accepted drafts). Afterwards sequence 0 holds `token` and the accepted
        drafts (a failed decode raises EngineError and leaves it as it was)."""
        ctx = self.context
        n = len(ctx.tokens(0))
        row = ctx.add(0, [token, *drafts], len(drafts) + 1)
        ctx.decode()
        ok = 0
        sampled = self.sample(row)
        while ok < len(drafts) and sampled == drafts[ok]:
            if self.model.is_eog(sampled):
                break  # end of generation: the caller stops on it; keep it out of the cache
            ok += 1
            sampled = self.sample(row + ok)
        if ok < len(drafts):
            ctx.remove(0, n + 1 + ok)
        return sampled, drafts[:ok]
