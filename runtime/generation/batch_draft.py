"""Speculative decoding under continuous batching (`infer serve --draft`): drafts for every
generating sequence of a step, which the scheduler (generation/scheduler.py) verifies in the
step's one decode.

Verification is speculative.py's, per sequence: a sequence queues [its next token, d1..dk] with
logits at every position, then samples each row in order with its own sampler chain, keeping a
draft only while it equals the token sampled there; the cells of the rejected drafts are cut. So
every emitted token is drawn exactly as plain decoding draws it (at temperature 0: the same
tokens), and one step emits 1 to k+1 tokens per sequence.

Drafts come from prompt lookup (LookupDrafter per slot: free) or from a draft model with the
target's vocabulary, which runs a multi-sequence context of its own, one sequence per slot, kept
in step with each slot's accepted history: its k greedy tokens for all sequences take k decodes
of the draft model per step, batched over the sequences.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from ..llama.tokens import common_prefix
from ..params import SamplingParams
from .speculative import DEFAULT_DRAFT_MAX, DEFAULT_NGRAM, LOOKUP, LookupDrafter

if TYPE_CHECKING:
    from ..llama.interface import Context, Model

GREEDY = SamplingParams(temperature=0)


class BatchDrafter(Protocol):
    name: str
    k_max: int  # most tokens drafted per sequence and step

    def start(self, slot: int) -> None:
        """A new sequence takes `slot`: forget what was drafted for the previous one."""
        ...

    def draft(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """For each slot, {slot: (its history, at most k)} → up to k tokens likely to follow
        the history (which, for a slot, only grows between `start`s)."""
        ...

    def close(self) -> None: ...


class BatchLookup:
    """Prompt lookup, one index per slot (speculative.LookupDrafter)."""

    name = LOOKUP

    def __init__(self, n_slots: int, k_max: int | None = None, ngram: int | None = None):
        self.k_max = k_max or DEFAULT_DRAFT_MAX[LOOKUP]
        self._ngram = ngram or DEFAULT_NGRAM
        self._slots = [LookupDrafter(self._ngram) for _ in range(n_slots)]
        self._never = threading.Event()

    def start(self, slot: int) -> None:
        self._slots[slot] = LookupDrafter(self._ngram)

    def draft(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        out = {}
        for slot, (history, k) in wanted.items():
            drafts = self._slots[slot].draft(history, k, self._never)
            if drafts:
                out[slot] = drafts
        return out

    def close(self) -> None:
        pass


class BatchModelDrafter:
    """A draft model's context with a sequence per slot. Each step brings every asked slot's
    sequence to its history (only what differs is decoded, batched over the slots), then
    drafts greedily, one batched decode per drafted token."""

    def __init__(self, model: Model, context: Context, name: str, k_max: int | None = None):
        self.model, self.context, self.name = model, context, name
        self.k_max = k_max or DEFAULT_DRAFT_MAX["model"]

    def start(self, slot: int) -> None:
        pass  # the slot's cells are trimmed to the next history's common prefix

    def draft(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        # No core-share entry of its own: it decodes on the target's thread, between the
        # target's decodes, with the target's share (server/drafting.py makes the target's
        # SharedCores lead its context's). An entry of its own counted the process twice and
        # halved the draft's threads: 0.30 s a draft of 6 tokens for 4 slots against 0.17 s
        # (SmolLM2 drafting for itself on 2 cores).
        return self._draft(wanted)

    def _draft(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        ctx = self.context
        rows = self._catch_up({s: h for s, (h, k) in wanted.items() if k > 0})
        out: dict[int, list[int]] = {slot: [] for slot in rows}
        while rows:
            nxt: dict[int, int] = {}
            for slot, row in rows.items():
                token = ctx.sample(slot, row)
                if self.model.is_eog(token):
                    continue
                out[slot].append(token)
                k = wanted[slot][1]
                full = len(ctx.tokens(slot)) + 1 >= ctx.n_ctx_seq
                if len(out[slot]) < k and not full and ctx.room() > 0:
                    nxt[slot] = ctx.add(slot, [token], True)
            if not nxt:
                break
            ctx.decode()
            rows = nxt
        return {slot: drafts for slot, drafts in out.items() if drafts}

    def _catch_up(self, histories: dict[int, list[int]]) -> dict[int, int]:
        """Each slot's sequence made to hold its history, the last tokens of all of them
        decoded in one final batch: {slot: the row of its logits}. Slots whose history does
        not fit are left out."""
        ctx = self.context
        pending: dict[int, list[int]] = {}
        for slot, history in histories.items():
            if len(history) >= ctx.n_ctx_seq:
                continue
            held = common_prefix(ctx.tokens(slot), history, len(history) - 1)
            ctx.remove(slot, held)
            ctx.set_sampler(slot, GREEDY)  # (removing from 0 freed the chain)
            pending[slot] = history[held:-1]
        while any(pending.values()):
            for slot, rest in pending.items():
                room = ctx.room()
                if room <= 0:
                    break
                if rest:
                    ctx.add(slot, rest[:room], False)
                    pending[slot] = rest[room:]
            ctx.decode()
        rows = {}
        for slot in pending:  # rows are valid until the next decode: the last tokens together
            if ctx.room() > 0:
                rows[slot] = ctx.add(slot, [histories[slot][-1]], True)
        ctx.decode()
        return rows

    def close(self) -> None:
        self.context.close()
        self.model.close()


class DraftGate:
    """Whether drafting pays on this machine, measured as `infer run`'s DraftPolicy does but
    for whole steps: the emitted tokens per second of generation-only steps with drafts and
    without, each an exponential average, and the better one chosen. The other is tried again
    after EXPLORE steps, then after twice as many each time it loses again (up to
    EXPLORE_MAX), and after EXPLORE once the winner changes: a change (more answers at once, a
    draft that stops matching) is still seen, while a losing draft model, whose step also
    catches its cells up on every token since its last one, is not paid for every few steps
    (SmolLM2 drafting for itself: tried every 8th step, its 19 tries took 8.7 of 14.1 s).
    On a GPU verifying several tokens costs about one decode and drafting wins; on a small CPU
    verification can cost more than the accepted drafts save. The text is the same either way."""

    EXPLORE = 8
    EXPLORE_MAX = 256
    ALPHA = 0.3

    def __init__(self) -> None:
        self.rate: dict[bool, float | None] = {True: None, False: None}
        self._steps = 0
        self._best: bool | None = None
        self._interval = self.EXPLORE
        self._next_try = self.EXPLORE

    def want(self) -> bool:
        self._steps += 1
        drafted, plain = self.rate[True], self.rate[False]
        if plain is None or drafted is None:
            return plain is not None  # measure a plain step first, then a drafted one
        best = drafted >= plain
        if best != self._best:  # a new winner: look at the other again soon
            self._best, self._interval = best, self.EXPLORE
            self._next_try = self._steps + self._interval
        if self._steps < self._next_try:
            return best
        self._interval = min(2 * self._interval, self.EXPLORE_MAX)
        self._next_try = self._steps + self._interval
        return not best

    def record(self, drafted: bool, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        old, new = self.rate[drafted], tokens / seconds
        self.rate[drafted] = new if old is None else old + self.ALPHA * (new - old)
