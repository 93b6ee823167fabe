"""`infer run --batch`: several prompts decoded together, in one llama.cpp batch per step.

Why: generating one token of one sequence reads every weight of the model for a single row of
activations; a batch of N sequences reads them once for N rows, so total generation throughput
rises with N until arithmetic, not memory traffic, is the limit (on 2 CPU cores with
SmolLM2-135M about 1.4x at N=8; larger, memory-bound models gain more).

How: a context of its own (the engine's stays untouched) with N sequences, driven by the
continuous-batching Scheduler (generation/scheduler.py): a finished sequence's slot takes the
next prompt at once. The text is exactly what `Generation` produces for the same prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import Interrupted
from ..llama.engine import KV_BUDGET_BYTES, default_ctx
from ..llama.interface import Model
from ..params import DEFAULT_BATCH
from .batch_types import BatchRequest, BatchResult, StepCounts
from .scheduler import Scheduler

__all__ = ["BatchDecoder", "BatchRequest", "BatchResult", "BatchStats", "ctx_per_sequence"]

MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ
CTX_ALIGN = 256  # llama.cpp pads each sequence's share of the context to this


@dataclass
class BatchStats:
    prompt_tokens: int = 0  # evaluated
    generated_tokens: int = 0
    finished: int = 0  # results delivered
    elapsed_s: float = 0.0  # first step to the last
    decode_s: float = 0.0  # in steps that only generated (no prompt tokens in the batch)
    decode_tokens: int = 0  # tokens decoded in those steps
    steps: int = 0

    def add(self, counts: StepCounts, seconds: float) -> None:
        """A step's counts. A step with no prompt tokens counts as generation time (sampling
        included)."""
        self.steps += 1
        self.prompt_tokens += counts.prompt_tokens
        self.generated_tokens += counts.generated_tokens
        if not counts.prompt_tokens:
            self.decode_s += seconds
            self.decode_tokens += counts.tokens

    @property
    def generate_tps(self) -> float:
        """Generated tokens per second of the whole run, prompt evaluation included."""
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens per second of the generation steps: what llama-batched-bench calls S_TG."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def ctx_per_sequence(
    engine: Model, requests: Sequence[BatchRequest], parallel: int, ctx_size: int | None
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


class BatchDecoder:
    """A context with `parallel` sequences over a loaded engine's model. Use as a context
    manager (it frees the context); `run()` yields results as requests finish; `stats` counts."""

    def __init__(
        self, engine: Model, parallel: int, ctx_per_seq: int, batch: int = DEFAULT_BATCH
    ) -> None:
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel must be in 1..{MAX_PARALLEL}")
        self.engine, self.parallel = engine, parallel
        self._context = engine.new_context(parallel, _align(ctx_per_seq), batch)
        self.scheduler = Scheduler(engine, self._context)
        self.n_ctx_seq = self._context.n_ctx_seq
        self.stats = BatchStats()

    @classmethod
    def for_requests(
        cls,
        engine: Model,
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
        cancel = cancel or threading.Event()
        pending = iter(requests)
        scheduler, stats = self.scheduler, self.stats
        started = time.perf_counter()
        with self._context.sharing_cores():
            try:
                while True:
                    yield from self._admit(pending)
                    if not scheduler.running():
                        return
                    if cancel.is_set():
                        raise Interrupted()
                    step_started = time.perf_counter()
                    finished, counts = scheduler.step(cancel, ignore_eog=ignore_eog)
                    stats.add(counts, time.perf_counter() - step_started)
                    stats.finished += len(finished)
                    yield from finished
                    stats.elapsed_s = time.perf_counter() - started
                    if on_step is not None:
                        on_step(stats)
            except Interrupted:
                for running in scheduler.running():
                    stats.finished += 1
                    yield scheduler.cancel(running, "interrupted")
                raise
            finally:
                for left in scheduler.running():  # the consumer stopped early, or an error
                    scheduler.cancel(left)

    def _admit(self, pending: Iterator[BatchRequest]) -> Iterator[BatchResult]:
        """Fill the free slots; requests that need no decoding are answered here."""
        scheduler = self.scheduler
        while scheduler.free_slots():
            req = next(pending, None)
            if req is None:
                return
            early = scheduler.check(req)
            if early is not None:
                self.stats.finished += 1
                yield early
            else:
                scheduler.join(req)

    def close(self) -> None:
        self._context.close()  # idempotent

    def __enter__(self) -> BatchDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
