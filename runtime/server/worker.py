"""One served model: its decode thread, running the continuous-batching Scheduler.

The event loop never waits on llama.cpp. `submit` (on the event loop) appends a job to this
model's queue and wakes the thread; the thread admits queued jobs into free slots between decode
steps (a job with n choices waits until n slots are free, so its choices start together), decodes
one step, and hands each job its new text with one `call_soon_threadsafe` per job and step.
`Job.cancel` (a client that went away) is honoured before the next step: its sequences leave and
their slots take the next job.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import InferError, Interrupted
from ..generation.scheduler import BatchRequest, BatchResult, Scheduler, Seq
from ..llama.interface import Context, Model
from ..params import GenerateOptions, SamplingParams
from .backend import Finished, Piece

if TYPE_CHECKING:
    from ..generation.prompt_cache import PromptCache

Event = Piece | Finished


class ServedJob:
    """A request admitted for one model (backend.Job). Its events cross from the decode thread
    to the event loop through an asyncio.Queue (a list of events per step)."""

    def __init__(
        self,
        model: str,
        tokens: list[int],
        sampling: list[SamplingParams],
        options: GenerateOptions,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.model, self.tokens, self.sampling, self.options = model, tokens, sampling, options
        self.prompt_tokens = len(tokens)
        self._loop = loop
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._submitted = time.perf_counter()
        self._first: float | None = None
        self.on_cancel: Callable[[], None] = lambda: None  # set by the worker that takes it
        self._open = len(sampling)  # choices whose Finished the consumer has not seen
        self.cancelled = False
        # The decode thread's: running choices, tokens of finished ones, this step's events.
        self.seqs: dict[int, Seq] = {}
        self.done_tokens = 0
        self.pending: list[Event] = []

    @property
    def n(self) -> int:
        return len(self.sampling)

    @property
    def completion_tokens(self) -> int:
        return self.done_tokens + sum(seq.generated for seq in list(self.seqs.values()))

    @property
    def ttft_s(self) -> float | None:
        return None if self._first is None else self._first - self._submitted

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.on_cancel()

    async def events(self) -> AsyncIterator[Event]:
        while self._open:
            for event in await self._queue.get():
                if isinstance(event, Finished):
                    self._open -= 1
                yield event

    # -- the decode thread's side ----------------------------------------------------------------

    def flush(self) -> None:
        """Hand this step's events to the event loop."""
        if self._first is None and self.completion_tokens:
            self._first = time.perf_counter()
        if not self.pending:
            return
        events, self.pending = self.pending, []
        events.sort(key=lambda e: isinstance(e, Finished))  # a choice's last text first
        with suppress(RuntimeError):  # the event loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, events)


class ModelWorker:
    """A loaded model, its multi-sequence context and the thread that decodes it."""

    def __init__(
        self,
        name: str,
        engine: Model,
        context: Context,
        note: Callable[[str], None],
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.name, self.engine, self.context, self._note = name, engine, context, note
        self.scheduler = Scheduler(engine, context, prompt_cache)
        self.slots = context.n_seq_max
        self.n_ctx_seq = context.n_ctx_seq
        self.waiting: deque[ServedJob] = deque()
        self.last_used = time.monotonic()
        self._cond = threading.Condition()
        self._stopping = False
        self._running: list[ServedJob] = []
        self._owners: dict[int, tuple[ServedJob, int]] = {}  # request index -> (job, choice)
        self._next_index = 0
        self._thread = threading.Thread(target=self._loop, name=f"decode {name}", daemon=True)
        self._thread.start()

    # -- the event loop's side -------------------------------------------------------------------

    def submit(self, job: ServedJob) -> None:
        job.on_cancel = self.wake
        with self._cond:
            self.waiting.append(job)
            self.last_used = time.monotonic()
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    @property
    def busy_slots(self) -> int:
        return len(self.scheduler.running())

    @property
    def idle(self) -> bool:
        return not self.waiting and not self._running

    def cancel_all(self) -> None:
        with self._cond:
            for job in [*self.waiting, *self._running]:
                job.cancelled = True
            self._cond.notify()

    def stop(self) -> None:
        """Cancel everything, end the thread, free the context (the engine is the pool's)."""
        self.cancel_all()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self.context.close()

    # -- the decode thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._between_steps()
                while not self.scheduler.running() and not self._stopping:
                    self._cond.wait()
                    self._between_steps()
                if self._stopping and not self.scheduler.running():
                    return
            try:
                with self.context.sharing_cores():
                    while self.scheduler.running():
                        self._step()
                        with self._cond:
                            self._between_steps()
            except Exception as e:  # a failed step ends every answer; the server goes on
                if isinstance(e, (InferError, Interrupted)):
                    self._note(f"{self.name}: {e}; the running answers were ended")
                else:
                    self._note(f"{self.name}: a bug ended the running answers: {e!r}")
                    if os.environ.get("INFER_DEBUG") == "1":
                        traceback.print_exc()
                for seq in self.scheduler.running():
                    self._end(self.scheduler.cancel(seq, "error"))
                self._flush()

    def _step(self) -> None:
        finished, _ = self.scheduler.step()
        for result in finished:
            self._end(result)
        self._flush()

    def _between_steps(self) -> None:
        """Under the lock: cancelled jobs leave, queued jobs take the free slots."""
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.pending = [Finished(i, "cancelled") for i in range(job.n)]
            job.flush()
        for job in [j for j in self._running if j.cancelled]:
            for seq in list(job.seqs.values()):
                self._end(self.scheduler.cancel(seq))
        self._admit()
        self._flush()

    def _admit(self) -> None:
        """Queued jobs into free slots, first come first served."""
        scheduler = self.scheduler
        while self.waiting and scheduler.free_slots() >= self.waiting[0].n:
            job = self.waiting.popleft()
            parent = None
            for choice, sampling in enumerate(job.sampling):
                index, self._next_index = self._next_index, self._next_index + 1
                self._owners[index] = (job, choice)
                req = BatchRequest(index, job.tokens, sampling, replace(job.options))
                on_text = _text_sink(job, choice)
                seq = scheduler.join(req, on_text, fork_of=parent)
                parent = parent or seq
                job.seqs[choice] = seq
            self._running.append(job)

    def _end(self, result: BatchResult) -> None:
        job, choice = self._owners.pop(result.index)
        job.seqs.pop(choice, None)
        job.done_tokens += result.generated_tokens
        # "context" is a cut answer, like max_tokens; a failed step ends it like a cancel.
        reason = {"context": "length", "interrupted": "cancelled", "error": "cancelled"}.get(
            result.finish_reason, result.finish_reason
        )
        job.pending.append(Finished(choice, reason))

    def _flush(self) -> None:
        for job in self._running:
            job.flush()
        self._running = [job for job in self._running if job.seqs]


def _text_sink(job: ServedJob, choice: int) -> Callable[[str], None]:
    def on_text(text: str) -> None:
        job.pending.append(Piece(choice, text))

    return on_text
