"""Batched generation: several prompts decoded together, in one llama.cpp batch per step.

Why: generating one token of one sequence reads every weight of the model for a single row of
activations; a batch of N sequences reads them once for N rows, so total generation throughput
rises with N until arithmetic, not memory traffic, is the limit (on 2 CPU cores with
SmolLM2-135M about 1.4x at N=8; larger, memory-bound models gain more).

How: one context of its own (the engine's stays untouched) with n_seq_max = N and the KV cache
split per sequence (kv_unified off, as llama-batched-bench runs: a sequence attends only to its
own cells). Each slot (= sequence id) runs one request with its own C sampler chain. Every step
is one batch: the next token of every generating sequence, then prompt chunks of new ones up to
n_batch (continuous batching: a finished sequence's cells are removed with llama_memory_seq_rm
and its slot takes the next prompt at once). Tokens are added in slot order and new prompts take
the lowest free slot, because llama.cpp splits a batch over a split cache into micro-batches of
consecutive sequence ids: a gap means another pass over the weights.

The text is exactly what `Generation` produces for the same prompt: the same TextStream (UTF-8
joining, stop strings) and the same checks in the same order (end of generation, stop string,
max tokens, full context).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ContextOverflowError, EngineError, Interrupted
from ..llama.engine import KV_BUDGET_BYTES, default_ctx
from ..params import DEFAULT_BATCH, GenerateOptions, SamplingParams
from .loop import TextStream

if TYPE_CHECKING:
    from ..llama.engine import LlamaCppEngine

MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ
CTX_ALIGN = 256  # llama.cpp pads each sequence's share of the context to this


@dataclass
class BatchRequest:
    """One prompt of a batch; `index` names it in the results (they come in finishing order)."""

    index: int
    tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: GenerateOptions = field(default_factory=GenerateOptions)


@dataclass
class BatchResult:
    index: int
    text: str = ""
    finish_reason: str = ""  # stop | length | context | interrupted | error
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error: str | None = None


@dataclass
class BatchStats:
    prompt_tokens: int = 0  # evaluated
    generated_tokens: int = 0
    finished: int = 0  # results delivered
    elapsed_s: float = 0.0  # first step to the last
    decode_s: float = 0.0  # in steps that only generated (no prompt tokens in the batch)
    decode_tokens: int = 0  # tokens decoded in those steps
    steps: int = 0

    @property
    def generate_tps(self) -> float:
        """Generated tokens per second of the whole run, prompt evaluation included."""
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens per second of the generation steps: what llama-batched-bench calls S_TG."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def ctx_per_sequence(
    engine: LlamaCppEngine, requests: Sequence[BatchRequest], parallel: int, ctx_size: int | None
) -> int:
    """KV cells per sequence. `ctx_size` (--ctx-size) when given, as for one `infer run`;
    otherwise the default of one run with its memory budget shared by the N sequences, and no
    more than the longest request can use when every request has a token limit."""
    if ctx_size:
        return _align(ctx_size)
    if not requests:
        return CTX_ALIGN
    default = default_ctx(engine.header, KV_BUDGET_BYTES // parallel)
    limits = [r.options.max_tokens for r in requests]
    if requests and all(n is not None for n in limits):
        need = max(len(r.tokens) + (r.options.max_tokens or 0) + 1 for r in requests)
        return max(CTX_ALIGN, min(default, _align(need)))
    return default


def _align(n: int) -> int:
    return -(-n // CTX_ALIGN) * CTX_ALIGN


class _Seq:
    """A request running in a slot. `n_past` counts its tokens in the KV cache; `token` is the
    sampled token to decode next (None while the prompt is still being evaluated)."""

    __slots__ = (
        "chain", "generated", "i_logits", "n_past", "pieces", "req", "slot", "stream", "token",
    )  # fmt: skip

    def __init__(self, req: BatchRequest, slot: int, chain: Any) -> None:
        self.req, self.slot, self.chain = req, slot, chain
        self.n_past = 0
        self.token: int | None = None
        self.i_logits = -1  # index in this step's batch whose logits to sample from
        self.generated = 0
        self.pieces: list[str] = []
        self.stream = TextStream(req.options.stop)


class BatchDecoder:
    """A context with `parallel` sequences over a loaded engine's model. Use as a context
    manager (it frees the context); `run()` yields results as requests finish; `stats` counts."""

    def __init__(
        self, engine: LlamaCppEngine, parallel: int, ctx_per_seq: int, batch: int = DEFAULT_BATCH
    ) -> None:
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel must be in 1..{MAX_PARALLEL}")
        self.engine, self.parallel = engine, parallel
        self.n_batch = batch
        self._context = engine.new_context(parallel, parallel * _align(ctx_per_seq), batch)
        if not self._context.handle:
            raise EngineError(
                f"llama.cpp could not create a context for {parallel} sequences of "
                f"{ctx_per_seq} tokens (out of memory? try a smaller --parallel or --ctx-size)"
            )
        self.n_ctx_seq = self._context.n_ctx_seq
        self._batch = engine.new_batch(batch)
        self._cancel = threading.Event()
        self.stats = BatchStats()
        self.cores = engine.core_share(self._context.handle)

    @classmethod
    def for_requests(
        cls,
        engine: LlamaCppEngine,
        requests: Sequence[BatchRequest],
        parallel: int,
        ctx_size: int | None = None,
    ) -> BatchDecoder:
        """A decoder sized for `requests`: no more slots than requests, cells as they need."""
        slots = max(1, min(parallel, len(requests)))
        return cls(engine, slots, ctx_per_sequence(engine, requests, slots, ctx_size))

    def run(
        self,
        requests: Iterable[BatchRequest],
        cancel: threading.Event | None = None,
        *,
        on_step: Callable[[BatchStats], None] | None = None,
        ignore_eog: bool = False,
    ) -> Iterator[BatchResult]:
        """Generate for every request, `parallel` at a time; yield each result as it finishes.
        When `cancel` is set: yields the running requests' partial answers ("interrupted"),
        then raises Interrupted. `ignore_eog` runs to max_tokens (benchmarks)."""
        self._cancel = cancel or threading.Event()
        pending = iter(requests)
        slots: list[_Seq | None] = [None] * self.parallel
        started = time.perf_counter()
        with self.cores:
            try:
                while True:
                    yield from self._admit(pending, slots)
                    active = [seq for seq in slots if seq is not None]
                    if not active:
                        return
                    if self._cancel.is_set():
                        raise Interrupted()
                    yield from self._step(active, slots, ignore_eog)
                    self.stats.elapsed_s = time.perf_counter() - started
                    if on_step is not None:
                        on_step(self.stats)
            except Interrupted:
                for running in slots:
                    if running is not None:
                        slots[running.slot] = None
                        yield self._finish(running, "interrupted")
                raise
            finally:
                for left in slots:  # the consumer stopped early, or an error
                    if left is not None:
                        self._release(left)

    def _admit(
        self, pending: Iterator[BatchRequest], slots: list[_Seq | None]
    ) -> Iterator[BatchResult]:
        """Fill free slots, lowest first; requests that need no decoding are answered here."""
        for slot, seq in enumerate(slots):
            while seq is None:
                req = next(pending, None)
                if req is None:
                    return
                early = self._check(req)
                if early is not None:
                    self.stats.finished += 1
                    yield early
                    continue
                seq = slots[slot] = _Seq(req, slot, self.engine.sampler(req.sampling))

    def _check(self, req: BatchRequest) -> BatchResult | None:
        """The result of a request that cannot or need not be decoded, as `Generation` gives."""
        n = len(req.tokens)
        if n == 0:
            return BatchResult(req.index, finish_reason="error", error="empty prompt")
        if n >= self.n_ctx_seq:
            error = ContextOverflowError(n, self.n_ctx_seq, self.engine.n_ctx_train)
            return BatchResult(req.index, finish_reason="error", prompt_tokens=n, error=str(error))
        if req.options.max_tokens == 0:
            return BatchResult(req.index, finish_reason="length", prompt_tokens=n)
        return None

    def _step(
        self, active: list[_Seq], slots: list[_Seq | None], ignore_eog: bool
    ) -> list[BatchResult]:
        """Decode one batch, sample every sequence that has logits; the finished ones' results.
        A step with no prompt tokens counts as generation time (sampling included)."""
        started = time.perf_counter()
        n, prompt = self._fill(active)
        self._decode(prompt > 0)
        finished = []
        for seq in active:
            result = self._advance(seq, ignore_eog) if seq.i_logits >= 0 else None
            if result is not None:
                slots[seq.slot] = None
                finished.append(result)
        stats = self.stats
        stats.steps += 1
        stats.prompt_tokens += prompt
        if not prompt:
            stats.decode_s += time.perf_counter() - started
            stats.decode_tokens += n
        return finished

    def _fill(self, active: list[_Seq]) -> tuple[int, int]:
        """Fill the batch: the next token of each generating sequence, then prompt tokens of
        the others in slot order up to n_batch. Returns (tokens, of which prompt tokens)."""
        b = self._batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        budget = self.n_batch - sum(seq.token is not None for seq in active)
        n = prompt = 0
        for seq in active:
            seq.i_logits = -1
            if seq.token is not None:
                chunk = [seq.token]
            elif budget > 0:
                chunk = seq.req.tokens[seq.n_past : seq.n_past + budget]
                budget -= len(chunk)
                prompt += len(chunk)
            else:
                continue
            for offset, tok in enumerate(chunk):
                token[n], pos[n], n_seq_id[n], logits[n] = tok, seq.n_past + offset, 1, 0
                seq_id[n][0] = seq.slot
                n += 1
            seq.n_past += len(chunk)
            if seq.token is not None or seq.n_past == len(seq.req.tokens):
                logits[n - 1] = 1
                seq.i_logits = n - 1
        b.n_tokens = n
        return n, prompt

    def _decode(self, with_prompt: bool) -> None:
        self.cores.step()
        if with_prompt:  # Ctrl-C can stop a long prompt; the callback costs a call per node
            with self.engine.abort_on(self._cancel, self._context.handle):
                rc = self._context.decode(self._batch)
        else:
            rc = self._context.decode(self._batch)
        if rc == 2:  # aborted by Ctrl-C
            raise Interrupted()
        if rc != 0:
            raise EngineError(f"llama_decode failed on a batch (code {rc})")

    def _advance(self, seq: _Seq, ignore_eog: bool) -> BatchResult | None:
        """Sample the sequence's next token; its result when that ends it."""
        engine = self.engine
        token = self._context.sample(seq.chain, seq.i_logits)
        if engine.is_eog(token) and not ignore_eog:
            return self._finish(seq, "stop")
        seq.generated += 1
        self.stats.generated_tokens += 1
        out = seq.stream.feed(engine.piece(token))
        if out:
            seq.pieces.append(out)
        if seq.stream.hit:
            return self._finish(seq, "stop")
        limit = seq.req.options.max_tokens
        if limit is not None and seq.generated >= limit:
            return self._finish(seq, "length")
        if seq.n_past + 1 >= self.n_ctx_seq:  # as `infer run`: the window would be full
            return self._finish(seq, "context")
        seq.token = token
        return None

    def _finish(self, seq: _Seq, reason: str) -> BatchResult:
        text = "".join(seq.pieces)
        if reason != "interrupted":
            text += seq.stream.tail()
        self._release(seq)
        self.stats.finished += 1
        return BatchResult(
            seq.req.index, text, reason, len(seq.req.tokens), seq.generated, error=None
        )

    def _release(self, seq: _Seq) -> None:
        if seq.chain is not None:
            self._context.remove_sequence(seq.slot)
            self.engine.free_sampler(seq.chain)
            seq.chain = None

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self.engine.free_batch(self._batch)
            self._batch = None
        if getattr(self, "_context", None) is not None:
            self._context.close()  # idempotent

    def __enter__(self) -> BatchDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
