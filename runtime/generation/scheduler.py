"""Continuous batching: many sequences decoded together over one multi-sequence Context.

Used by `infer run --batch` (generation/batch.py) and by the server (runtime/server/), on any
`Context` (llama/interface.py): llama.cpp's, or the scripted one in tests/fakes.py.

Each step is one decode: the next token of every generating sequence first, then prompt chunks
of sequences still reading their prompt, up to the context's batch size — so a long prompt is
evaluated a chunk per step while the other sequences keep generating. Sequences join between
steps (`join`), leave when they finish or are cancelled (`cancel`), and each has its own sampler
chain, stop strings and token limit. A joining prompt takes the free slot whose cells already
hold the longest prefix of it (the rest of the slot is cut), else the lowest free slot: llama.cpp
splits a batch over a split KV cache into micro-batches of consecutive sequence ids, so gaps cost.
Slots keep their cells after a sequence leaves, for the next prompt that shares a prefix; with
a prompt cache, cells another prompt is about to cut are saved first (`_keep`), so a
conversation whose slot was taken restores its last turn instead of reading it again.

LoRA adapters: llama.cpp applies a context's adapters to a whole decode, so a step decodes the
sequences of one set of adapter scales (`BatchRequest.lora`); with several sets running, the
steps take turns among them, and a slot's cells are reused only by a prompt with the scales
they were computed with.

With a `drafter` (generation/batch_draft.py: `infer serve --draft`), a generating sequence
queues its next token and drafts for the tokens after it; the drafts are verified in the same
decode with the sequence's own sampler chain, so the text is the same as without.

`fork_of` decodes `n` choices of one prompt: a fork waits while its parent reads the prompt,
then copies the parent's cells (no decode) and samples from the same logits with its own chain.

Shared beginnings are read once: a joining prompt that starts with another live sequence's
tokens (a system prompt, a document), at least `MIN_SHARE` more of them than its own slot holds,
takes a copy of that sequence's cells for them — at once when they are in its cells, else it
waits as a fork does until its donor has read that far — and reads only the rest. Only text
before the first media chunk is shared, and only between sequences of the same adapter scales
(a slot's cells hold what its adapters computed). A prompt the same as one still being read is
a fork of it as an `n` choice is.

The text of a sequence is exactly what `Generation` produces for the same prompt: the same
TextStream (UTF-8 joining, stop strings) and the same checks in the same order (end of
generation, stop string, max tokens, full context).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from ..errors import ContextOverflowError, EngineError
from ..llama.interface import Context, Model
from ..llama.tokens import common_prefix
from ..llama.vision import media_safe, prompt_spans
from .batch_types import BatchRequest, BatchResult, Probs, Seq, StepCounts, TextSink
from .logprobs import LogprobReader, Trail

__all__ = [
    "BatchRequest", "BatchResult", "Scheduler", "Seq", "StepCounts", "TextSink",
]  # fmt: skip

if TYPE_CHECKING:
    from .batch_draft import BatchDrafter, DraftGate
    from .prompt_cache import PromptCache

# The fewest tokens a copy of cells must save (beyond what the slot holds already). A copy
# moves the donor's whole KV stream (llama.cpp copies split-cache streams whole), so a few
# tokens are cheaper to read.
MIN_SHARE = 16
# The fewest tokens a slot's cells must hold beyond what the prompt cache has of them to be
# saved before another prompt cuts them, and that a restore must add to what a slot holds. A
# conversation's next turn comes back to the server: reading 32 tokens again costs ~0.1 s on a
# CPU (a 135M model), writing or restoring a state from the page cache a few milliseconds.
MIN_KEEP = 32


class Scheduler:
    """`prompt_cache` (generation/prompt_cache.py): a joining prompt whose slot holds little of
    it is restored from disk when a saved state shares a long enough prefix, and a long prompt
    is saved once read (as `infer run` does)."""

    def __init__(
        self,
        model: Model,
        context: Context,
        prompt_cache: PromptCache | None = None,
        drafter: BatchDrafter | None = None,
        gate: DraftGate | None = None,
    ) -> None:
        """`gate`: draft only in the steps where drafting is measured to pay (None: always)."""
        self.model, self.context, self.prompt_cache = model, context, prompt_cache
        self.drafter, self.gate = drafter, gate
        self.drafted = self.accepted = 0  # draft tokens verified, and of those accepted
        self.verified = 0  # verifications: a sequence's drafts checked in one decode
        self._drafting = False  # this step queued drafts
        self.slots: list[Seq | None] = [None] * context.n_seq_max
        # The adapter scales of a request that gives none (the model's), those each slot's
        # cells were computed with, and which set's turn it is.
        self.lora: tuple[float, ...] = tuple(a.scale for a in model.adapters)
        self.slot_lora: list[tuple[float, ...]] = [self.lora] * context.n_seq_max
        self._turn = 0
        # Slots in a copy of cells since the last decode: llama.cpp moves the data at the next
        # decode, so a state restored into one now would be overwritten or copied out.
        self._copied: set[int] = set()
        # Per slot, how many of its cells the prompt cache holds (saved or restored from it).
        self._kept = [0] * context.n_seq_max

    @property
    def n_ctx_seq(self) -> int:
        return self.context.n_ctx_seq

    def free_slots(self) -> int:
        return self.slots.count(None)

    def running(self) -> list[Seq]:
        return [seq for seq in self.slots if seq is not None]

    def check(self, req: BatchRequest) -> BatchResult | None:
        """The result of a request that cannot or need not be decoded, as `Generation` gives."""
        n = len(req.tokens)
        if n == 0:
            return BatchResult(req.index, finish_reason="error", error="empty prompt")
        if n >= self.n_ctx_seq:
            error = ContextOverflowError(n, self.n_ctx_seq, self.model.n_ctx_train)
            return BatchResult(req.index, finish_reason="error", prompt_tokens=n, error=str(error))
        if req.options.max_tokens == 0:
            return BatchResult(req.index, finish_reason="length", prompt_tokens=n)
        return None

    def join(
        self,
        req: BatchRequest,
        on_text: TextSink | None = None,
        fork_of: Seq | None = None,
    ) -> Seq:
        """Start `req` in a free slot (the caller checked `free_slots()` and `check(req)`).
        `on_text` gets each piece of text as it is released."""
        lora = self.lora if req.lora is None else tuple(req.lora)
        slot, reuse = self._pick_slot(req.tokens if fork_of is None else [], lora)
        if self.prompt_cache is not None and slot not in self._copied:
            self._keep(slot, reuse)  # with the adapters the slot's cells were computed with
        share = len(req.tokens) if fork_of is not None else 0
        seq = self.slots[slot] = Seq(req, slot, on_text)
        if req.options.logprobs is not None:
            seq.trail = Trail(LogprobReader(self.model, req.options.logprobs))
        seq.lora = self.slot_lora[slot] = lora
        cache, prompt = self.prompt_cache, req.tokens
        restorable = fork_of is None and slot not in self._copied
        if cache is not None and restorable:
            gain = min(MIN_KEEP, cache.min_tokens)
            if reuse + gain <= len(prompt):
                self.context.set_lora(lora)  # the cache's key names the adapters applied
                # (the slot's cells stay unless an entry gives `gain` more of the prompt)
                if cache.restore(self.context, slot, prompt, least=reuse + gain):
                    self._kept[slot] = len(self.context.tokens(slot))
                    reuse = common_prefix(self.context.tokens(slot), prompt, len(prompt) - 1)
                elif len(self.context.tokens(slot)) < reuse:  # a load that failed emptied it
                    reuse = 0
        reuse = media_safe(reuse, prompt)  # media: whole or not at all
        if fork_of is None:
            donor, held = self._donor(seq, lora)
            if donor is not None and held - reuse >= MIN_SHARE:
                if len(self.context.tokens(donor.slot)) >= held:  # in its cells: copy now
                    self._copy(donor.slot, slot)
                    reuse = held
                else:  # it is reading them: wait for it, as a fork does
                    fork_of, share = donor, held
        self.context.remove(slot, reuse)
        self._kept[slot] = min(self._kept[slot], reuse)
        self.context.set_sampler(slot, req.sampling, prompt)  # penalties see the prompt too
        if self.drafter is not None:
            self.drafter.start(slot)
        seq.n_past = seq.reused = reuse
        if fork_of is not None:
            seq.parent, seq.share = fork_of, share
            fork_of.forks.append(seq)
        return seq

    def _keep(self, slot: int, reuse: int) -> None:
        """Before a prompt that shares only `reuse` of them cuts a slot's cells, save them
        when the prompt cache lacks most of them: a conversation's last turn, its prompt and
        answer, whose next turn then restores them in whatever slot it gets instead of
        reading the conversation again (slots are fewer than the conversations served)."""
        assert self.prompt_cache is not None
        held, gain = list(self.context.tokens(slot)), min(MIN_KEEP, self.prompt_cache.min_tokens)
        if len(held) - max(reuse, self._kept[slot]) < gain or prompt_spans(held):
            return
        self.context.set_lora(self.slot_lora[slot])  # the adapters the cells were computed with
        if self.prompt_cache.save(self.context, slot, held, len(held), least=gain):
            self._kept[slot] = len(held)

    def _donor(self, seq: Seq, lora: tuple[float, ...]) -> tuple[Seq | None, int]:
        """The live sequence (not itself waiting) whose prompt or cells begin with the most of
        `seq`'s prompt, under the same adapter scales, and that count (None, 0: none). The
        text before the prompt's first media chunk only; the last token is read unless the
        prompt is the whole of one still being read."""
        prompt = seq.req.tokens
        limit = min([*prompt_spans(prompt), len(prompt) - 1])
        best, most = None, 0
        for other in self.slots:
            if other is None or other is seq or other.parent is not None or other.lora != lora:
                continue
            # A sequence still reading holds a prefix of its prompt; one generating, its cells.
            source = other.req.tokens if other.token is None else self.context.tokens(other.slot)
            n = common_prefix(source, prompt, limit)
            if n == limit == len(prompt) - 1 and other.token is None and source == prompt:
                # The same prompt, still being read: a fork sampling from its logits, as the
                # `n` choices of one prompt are (its first token comes in the same step).
                n = len(prompt)
            if n > most:
                best, most = other, n
        return best, most

    def _pick_slot(self, prompt: list[int], lora: tuple[float, ...]) -> tuple[int, int]:
        """(slot, tokens of `prompt` its cells hold already): the longest held prefix computed
        with the same adapter scales, else the lowest free slot. The last prompt token is
        always decoded, for its logits."""
        best, reuse = -1, 0
        for slot, seq in enumerate(self.slots):
            if seq is not None:
                continue
            if best < 0:
                best = slot
            if prompt and self.slot_lora[slot] == lora:
                held = common_prefix(self.context.tokens(slot), prompt, len(prompt) - 1)
                if held > reuse:
                    best, reuse = slot, held
        if best < 0:
            raise RuntimeError("no free slot")  # a caller's bug: it checks free_slots()
        return best, reuse

    def cancel(self, seq: Seq, reason: str = "cancelled") -> BatchResult:
        """Take `seq` out now (between steps); its partial result."""
        return self._finish(seq, reason)

    def step(
        self, cancel: threading.Event | None = None, *, ignore_eog: bool = False
    ) -> tuple[list[BatchResult], StepCounts]:
        """Decode one batch and sample every sequence that has logits. The results of the
        sequences that finished, and what the step did. `cancel` makes a long prompt decode
        stoppable (Interrupted); `ignore_eog` runs to max_tokens (benchmarks)."""
        active = self._group(self.running())
        began = time.perf_counter()
        counts = self._fill(active)
        try:
            self.context.decode(cancel if counts.prompt_tokens else None)
        except EngineError:  # refused: its sequences alone, only a failing one ends
            finished, counts = self._isolate(active, cancel, ignore_eog)
        else:
            self._copied.clear()
            finished = self._sample(active, ignore_eog, counts)
        if self.gate is not None and not counts.prompt_tokens:  # a generation-only step
            spent = time.perf_counter() - began
            self.gate.record(self._drafting, counts.generated_tokens, spent)
        return finished, counts

    def _isolate(
        self, active: list[Seq], cancel: threading.Event | None, ignore_eog: bool
    ) -> tuple[list[BatchResult], StepCounts]:
        """A decode failed (llama_decode returned an error: no room in the cells, an input it
        refuses) and the context dropped its batch: each sequence is decoded alone, and only
        one that fails alone ends, with the error; the others go on as if nothing happened."""
        self._copied.clear()
        for seq in active:
            self._rewind(seq)
        finished: list[BatchResult] = []
        total = StepCounts()
        for seq in active:
            if self.slots[seq.slot] is not seq:
                continue  # a fork that started (and was sampled) with its parent
            counts = self._fill([seq])
            try:
                self.context.decode(cancel if counts.prompt_tokens else None)
            except EngineError as e:
                self._rewind(seq)
                result = self._finish(seq, "error")
                result.error = f"llama.cpp could not decode this request's tokens ({e})"
                finished.append(result)
                continue
            self._copied.clear()
            finished += self._sample([seq], ignore_eog, counts)
            total.add(counts)
        return finished, total

    def _rewind(self, seq: Seq) -> None:
        """Back to what its cells hold, after a failed decode dropped what it had queued."""
        seq.n_past, seq.row, seq.drafts = len(self.context.tokens(seq.slot)), -1, []

    def _sample(self, active: list[Seq], ignore_eog: bool, counts: StepCounts) -> list[BatchResult]:
        """After a decode of `active`: sample each sequence that has logits (and the
        forks that start from them); the results of those that finished."""
        finished = []
        for seq in active:
            if self.slots[seq.slot] is not seq:
                continue
            # Forks whose share its cells now hold start (a prefix's while it reads on).
            started = self._start_forks(seq) if seq.forks and seq.token is None else []
            if seq.row < 0:
                continue
            if seq.token is None and self.prompt_cache is not None:  # its prompt is read
                # (the context's adapters are this group's: the key names them)
                prompt = seq.req.tokens
                evaluated = len(prompt) - seq.reused
                if self.prompt_cache.save(self.context, seq.slot, prompt, evaluated):
                    self._kept[seq.slot] = len(prompt)
            for sampling in (seq, *started):
                result = self._advance(sampling, ignore_eog, counts)
                sampling.row = -1  # sampled: a fork in a later slot is not sampled again
                if result is not None:
                    finished.append(result)
        return finished

    def _group(self, running: list[Seq]) -> list[Seq]:
        """The sequences this step decodes: all of them when they share one set of adapter
        scales, else those of one set, taking turns; the context applies that set."""
        if not running:
            return running
        sets = list(dict.fromkeys(seq.lora for seq in running))
        lora = sets[self._turn % len(sets)]
        self._turn += 1
        self.context.set_lora(lora)
        return running if len(sets) == 1 else [seq for seq in running if seq.lora == lora]

    def _start_forks(self, parent: Seq) -> list[Seq]:
        """The forks whose share the parent's cells now hold take copies of them (no decode).
        Those of a whole prompt (`n` choices) are returned: they sample from the parent's
        logits (this step, right after the parent: a lower slot's turn has passed); those of a
        prefix read the rest of their prompt from the next step."""
        held = len(self.context.tokens(parent.slot))
        ready = [fork for fork in parent.forks if fork.share <= held]
        parent.forks = [fork for fork in parent.forks if fork.share > held]
        sampling = []
        for fork in ready:
            self._copy(parent.slot, fork.slot)
            self.context.remove(fork.slot, fork.share)
            fork.n_past = fork.reused = fork.share
            fork.parent = None
            if fork.share == len(fork.req.tokens):
                fork.row = parent.row
                sampling.append(fork)
        return sampling

    def _copy(self, src: int, dst: int) -> None:
        self.context.copy(src, dst)
        self._copied.update((src, dst))
        self._kept[dst] = self._kept[src]

    def _fill(self, active: list[Seq]) -> StepCounts:
        """Queue the next token of each generating sequence, then prompt tokens of the others
        in slot order up to the batch size."""
        ctx, counts = self.context, StepCounts()
        drafts = self._drafts(active) if self.drafter is not None else {}
        self._drafting = bool(drafts)
        for seq in active:
            seq.row, seq.drafts = -1, []
            if seq.token is not None:
                seq.drafts = drafts.get(seq.slot, [])
                seq.row = ctx.add(seq.slot, (seq.token, *seq.drafts), 1 + len(seq.drafts))
                seq.n_past += 1 + len(seq.drafts)
                counts.tokens += 1 + len(seq.drafts)
        for seq in active:
            if seq.token is not None or seq.parent is not None:
                continue
            prompt = seq.req.tokens
            spans = prompt_spans(prompt)
            while seq.n_past in spans:
                # An image or audio clip (or several in a row): evaluated into its slot now, by
                # libmtmd's own decodes (what is queued for the others waits); text follows.
                n = ctx.add_media(seq.slot, prompt, seq.n_past)
                seq.n_past += n
                counts.prompt_tokens += n
            room = ctx.room()
            if room <= 0:
                break
            end = min([s for s in spans if s > seq.n_past], default=len(prompt))
            stop = min(seq.n_past + room, end)
            chunk = prompt[seq.n_past : stop]
            if not chunk:
                continue
            seq.n_past += len(chunk)
            seq.row = ctx.add(seq.slot, chunk, seq.n_past == len(seq.req.tokens))
            counts.prompt_tokens += len(chunk)
            counts.tokens += len(chunk)
        return counts

    def _drafts(self, active: list[Seq]) -> dict[int, list[int]]:
        """Drafts for the generating sequences, each within the batch's spare rows (shared
        out), its window and its token limit (a draft past the limit is verified for
        nothing)."""
        assert self.drafter is not None
        generating = [seq for seq in active if seq.token is not None]
        if not generating or (self.gate is not None and not self.gate.want()):
            return {}
        share = (self.context.room() - len(generating)) // len(generating)
        wanted = {}
        for seq in generating:
            assert seq.token is not None
            k = min(self.drafter.k_max, share, self.n_ctx_seq - seq.n_past - 2)
            limit = seq.req.options.max_tokens
            if limit is not None:
                k = min(k, limit - seq.generated - 1)
            if k > 0:
                history = [*self.context.tokens(seq.slot), seq.token]
                wanted[seq.slot] = (history, k)
        return self.drafter.draft(wanted) if wanted else {}

    def _advance(self, seq: Seq, ignore_eog: bool, counts: StepCounts) -> BatchResult | None:
        """Sample the sequence's next token, and the tokens after each draft it confirms; its
        result when one ends it. The cells of rejected drafts are cut."""
        drafts, base = seq.drafts, seq.n_past - len(seq.drafts)  # base: through `token`
        ok, result, first = 0, None, seq.row
        while True:
            # `row` and `n_past` as for a plain step that sampled this token (what _next reads)
            seq.n_past, seq.row = base + ok, first + ok
            token, probs = self._sample_token(seq)
            result = self._next(seq, token, ignore_eog, counts, probs)
            if result is not None or ok == len(drafts) or seq.token != drafts[ok]:
                break
            ok += 1  # confirmed: it is in the cells, and the row after it has the next logits
        if drafts:
            self.drafted += len(drafts)
            self.accepted += ok
            self.verified += 1
            if ok < len(drafts):
                self.context.remove(seq.slot, base + ok)
            seq.drafts = []
        return result

    def _sample_token(self, seq: Seq) -> tuple[int, Probs | None]:
        """The sequence's next token; with post-sampling probabilities asked for, also the
        chain's probabilities (its and its likeliest candidates')."""
        trail = seq.trail
        if trail is None or not seq.req.options.post_sampling_probs:
            return self.context.sample(seq.slot, seq.row), None
        token, prob, top = self.context.sample_probs(seq.slot, seq.row, trail.reader.n_top)
        return token, (prob, top)

    def _next(
        self,
        seq: Seq,
        token: int,
        ignore_eog: bool,
        counts: StepCounts,
        probs: Probs | None = None,
    ) -> BatchResult | None:
        """`token` sampled for `seq`: emitted, or the end of it (its result)."""
        model = self.model
        if model.is_eog(token) and not (ignore_eog or seq.req.options.ignore_eog):
            return self._finish(seq, "stop")
        seq.generated += 1
        counts.generated_tokens += 1
        raw = model.piece(token)
        out = seq.stream.feed(raw)
        if seq.trail is not None:  # the row the token came from: valid until the next decode
            logits = self.context.logits(seq.row, 1) if probs is None else None
            seq.trail.add(logits, token, raw, seq.stream.decoded, probs)
        if out or seq.trail is not None:
            seq.emit(out)
        if seq.stream.hit:
            return self._finish(seq, "stop")
        limit = seq.req.options.max_tokens
        if limit is not None and seq.generated >= limit:
            return self._finish(seq, "length")
        if seq.n_past + 1 >= self.n_ctx_seq:  # as `infer run`: the window would be full
            return self._finish(seq, "context")
        seq.token = token
        return None

    def _finish(self, seq: Seq, reason: str) -> BatchResult:
        if reason not in ("interrupted", "cancelled"):
            tail = seq.stream.tail()
            if tail or seq.trail is not None:
                seq.emit(tail, end=not seq.stream.hit)
        if self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
        if seq.parent is not None:  # a fork that never started
            seq.parent.forks.remove(seq)
            seq.parent = None
        for fork in seq.forks:  # its forks never got the prompt: they read it themselves
            fork.parent = None
        seq.forks = []
        text = "".join(seq.pieces)
        tokens = len(seq.req.tokens)
        logprobs = seq.trail.tokens if seq.trail is not None else None
        return BatchResult(
            seq.req.index,
            text,
            reason,
            tokens,
            seq.generated,
            stop=seq.stream.matched,
            logprobs=logprobs,
        )
