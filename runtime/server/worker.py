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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, InferError, Interrupted
from ..generation.batch_draft import DraftGate
from ..generation.batch_types import BatchRequest, BatchResult, Seq, StepCounts, TextSink
from ..generation.logprobs import TokenLogprob
from ..generation.scheduler import Scheduler
from ..llama.aborts import serving
from ..llama.interface import Context, Model
from ..params import GenerateOptions, SamplingParams
from .backend import DecodeCounts, Finished, FinishReason, Piece, Progress, SlotInfo

if TYPE_CHECKING:
    from ..generation.batch_draft import BatchDrafter
    from ..generation.prompt_cache import PromptCache
    from ..generation.tool_plan import ToolPlan

Event = Piece | Finished | Progress


class Failed:
    """A choice that llama.cpp could not decode (generation/scheduler.py ends it alone): the
    job's events() raises it, so the client gets its door's error, not a cut answer."""

    def __init__(self, index: int, message: str) -> None:
        self.index, self.message = index, message


# Text generated faster than this is handed to the event loop in pieces of a few tokens: every
# hand-over wakes the loop, whose Python work competes with the decode for the GIL and the
# cores (benchmarks/README.md: infer serve). 20 ms is below what a reader sees as a stutter.
COALESCE_S = 0.02


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
        tools: ToolPlan | None = None,
        lora: tuple[float, ...] | None = None,
        progress: bool = False,
        request_id: str = "",
    ) -> None:
        self.model, self.tokens, self.sampling, self.options = model, tokens, sampling, options
        self.progress = progress  # report the prompt's reading (Progress events)
        self.request_id = request_id  # the HTTP request's, for the line of an abort
        self.lora = lora  # each adapter's scale; None: the worker's scales when it starts
        self.tools = tools  # for the HTTP side, which parses the answer's calls with it
        self.prompt_tokens = len(tokens)
        self._loop = loop
        self._queue: asyncio.Queue[list[Event | Failed]] = asyncio.Queue()
        self._submitted = time.perf_counter()
        self._first: float | None = None
        self._sent_at = 0.0  # when events last went to the event loop
        self.on_cancel: Callable[[], None] = lambda: None  # set by the worker that takes it
        self._open = len(sampling)  # choices whose Finished the consumer has not seen
        self.cancelled = False
        # The decode thread's: running choices, tokens of finished ones, this step's events.
        self.seqs: dict[int, Seq] = {}
        self.done_tokens = 0
        self.pending: list[Event | Failed] = []
        self.admitted = 0.0  # when its first choice took a slot
        self.read_ms = 0.0  # ... to the end of the last decode that read its prompt
        self.reported = -1  # the prompt tokens the last Progress said were processed

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
                if isinstance(event, Failed):
                    self._open = 0
                    raise EngineError(event.message)
                if isinstance(event, Finished):
                    self._open -= 1
                yield event

    # -- the decode thread's side ----------------------------------------------------------------

    def flush(self) -> asyncio.AbstractEventLoop | None:
        """Hand the events so far to the event loop (the loop, if it got any): the first text
        and every ending at once, further text at most every COALESCE_S."""
        now = time.perf_counter()
        if self._first is None and self.completion_tokens:
            self._first = now
        if not self.pending:
            return None
        ending = any(isinstance(e, Finished | Failed) for e in self.pending)
        if now - self._sent_at < COALESCE_S and not ending:
            return None
        self._sent_at = now
        events, self.pending = self.pending, []
        events.sort(key=lambda e: isinstance(e, Finished | Failed))  # a choice's text first
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, events)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            return None
        return self._loop


class EmbedRequest:
    """Inputs to embed on the decode thread; `future` (on the event loop) gets the vectors."""

    def __init__(self, inputs: list[list[int]], loop: asyncio.AbstractEventLoop) -> None:
        self.inputs, self._loop = inputs, loop
        self.future: asyncio.Future[list[Any]] = loop.create_future()

    def settle(self, vectors: list[Any] | None, error: BaseException | None) -> None:
        def settle() -> None:
            if self.future.done():  # the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(vectors or [])

        with suppress(RuntimeError):  # the event loop is closed
            self._loop.call_soon_threadsafe(settle)


class ModelWorker:
    """A loaded model, its multi-sequence context and the thread that decodes it."""

    def __init__(
        self,
        name: str,
        engine: Model,
        context: Context,
        note: Callable[[str], None],
        prompt_cache: PromptCache | None = None,
        *,
        warm_up: int | None = None,
        embedder: Callable[[], Any] | None = None,
        drafter: BatchDrafter | None = None,
        draft_adapt: bool = True,
    ) -> None:
        """`warm_up`: a token to decode once before serving (see _warm_up); the constructor
        returns when it is done. `embedder` makes the model's Embedder (llama/embedder.py) on
        this thread, when the first embedding request comes: embeddings are computed here too,
        between decode steps, so one thread runs llama.cpp for the model."""
        self.name, self.engine, self.context, self._note = name, engine, context, note
        gate = DraftGate() if drafter is not None and draft_adapt else None
        self.scheduler = Scheduler(engine, context, prompt_cache, drafter, gate)
        # The LoRA scales of requests without their own (POST /lora-adapters replaces them).
        self.lora: tuple[float, ...] = tuple(a.scale for a in engine.adapters)
        self.slots = context.n_seq_max
        self.n_ctx_seq = context.n_ctx_seq
        self.counts = DecodeCounts()  # the decode thread's (drafts: the scheduler's counters)
        self.waiting: deque[ServedJob] = deque()
        self.embed_waiting: deque[EmbedRequest] = deque()
        self._make_embedder = embedder
        self._embedder: Any = None
        self.last_used = time.monotonic()
        self._cond = threading.Condition()
        self._stopping = False
        self._running: list[ServedJob] = []
        self._owners: dict[int, tuple[ServedJob, int]] = {}  # request index -> (job, choice)
        self._next_index = 0
        self._named: list[str] = []  # the request ids the abort line names now
        self._thread = threading.Thread(
            target=self._loop, args=(warm_up,), name=f"decode {name}", daemon=True
        )
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

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

    def slot_infos(self) -> list[SlotInfo]:
        """Each slot now (read from the event loop while the thread decodes: a monitor's
        view, each figure as it was when read)."""
        speculative = self.scheduler.drafter is not None
        out = []
        for slot, seq in enumerate(list(self.scheduler.slots)):
            info = SlotInfo(slot, self.n_ctx_seq, speculative)
            if seq is not None:
                prompt = len(seq.req.tokens)
                info = replace(
                    info,
                    request=seq.req.index,
                    prompt_tokens=prompt,
                    cached_tokens=seq.reused,
                    read_tokens=max(0, min(seq.n_past, prompt) - seq.reused),
                    generated=seq.generated,
                    max_tokens=seq.req.options.max_tokens,
                    new_line=any("\n" in piece for piece in list(seq.pieces)),
                    sampling=seq.req.sampling,
                    stop=tuple(seq.req.options.stop),
                    ignore_eos=seq.req.options.ignore_eog,
                )
            out.append(info)
        return out

    def decode_counts(self) -> DecodeCounts:
        """What this model's decode thread did so far (for /metrics)."""
        s = self.scheduler
        return replace(self.counts, drafted=s.drafted, accepted=s.accepted, verified=s.verified)

    def submit_embed(self, request: EmbedRequest) -> None:
        with self._cond:
            self.embed_waiting.append(request)
            self.last_used = time.monotonic()
            self._cond.notify()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self._running and not self.embed_waiting

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
        if self._embedder is not None:
            self._embedder.close()
        if self.scheduler.drafter is not None:
            self.scheduler.drafter.close()  # a draft model's context and weights
        self.context.close()

    # -- the decode thread -----------------------------------------------------------------------

    def _warm_up(self, token: int | None) -> None:
        """One token through the graph, as llama-server warms up: llama.cpp allocates its
        compute buffers on the first decode, which the first request would wait for. On this
        thread, the only one that ever decodes: libgomp spins its workers less ("throttled")
        once more threads run OpenMP teams than there are CPUs, and a second thread that had
        decoded once (a loader's) costs every later token here about 15% on 2 cores."""
        try:
            serving(f"warming up {self.name}")
            if token is not None:
                self.context.add(0, [token], True)
                self.context.decode()
                self.context.remove(0)
        except Exception as e:  # the first request will say what is wrong
            self._note(f"{self.name}: warming up failed: {e}")
        finally:
            serving("")
            self._started.set()

    def _loop(self, warm_up: int | None) -> None:
        self._warm_up(warm_up)
        while True:
            with self._cond:
                self._between_steps()
                while not (self.scheduler.running() or self.embed_waiting or self._stopping):
                    self._cond.wait()
                    self._between_steps()
                if self._stopping and not self.scheduler.running():
                    self._embed_pending(stopping=True)
                    serving("")
                    return
            self._embed_pending()
            try:
                with self.context.sharing_cores():
                    while self.scheduler.running():
                        self._step()
                        with self._cond:
                            self._between_steps()
                        self._embed_pending()
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

    def _embed_pending(self, *, stopping: bool = False) -> None:
        """Every waiting embedding request, in one go (the embedder packs their inputs into
        batches together); outside the lock, so submitters never wait on a computation."""
        with self._cond:
            requests, self.embed_waiting = list(self.embed_waiting), deque()
        if not requests:
            return
        if stopping:
            for request in requests:
                request.settle(None, InferError("the server is shutting down"))
            return
        try:
            if self._embedder is None:
                if self._make_embedder is None:
                    raise InferError(f"{self.name} cannot compute embeddings here")
                self._embedder = self._make_embedder()
            embedder = self._embedder
            inputs = [tokens for request in requests for tokens in request.inputs]
            vectors = embedder.embed(inputs)
        except Exception as e:
            for request in requests:
                request.settle(None, e)
            return
        start = 0
        for request in requests:
            request.settle(vectors[start : start + len(request.inputs)], None)
            start += len(request.inputs)

    def _step(self) -> None:
        busy = len(self.scheduler.running())
        began = time.perf_counter()
        finished, step = self.scheduler.step()
        self._count(busy, step, time.perf_counter() - began, finished)
        if step.prompt_tokens:
            for job in self._running:
                self._report(job, read=True)
        for result in finished:
            self._end(result)
        self._flush()

    def _count(
        self, busy: int, step: StepCounts, spent: float, finished: list[BatchResult]
    ) -> None:
        """A step in llama-server's metrics: a decode of `busy` sequences, its prompt tokens
        and time (a step that reads prompt tokens is prompt time, as llama-server times it)."""
        counts = self.counts
        if step.tokens:
            counts.decodes += 1
            counts.busy_slots += busy
        if step.prompt_tokens:
            counts.prompt_tokens += step.prompt_tokens
            counts.prompt_s += spent
        lengths = [seq.n_past for seq in self.scheduler.running()]
        lengths += [r.prompt_tokens + r.generated_tokens for r in finished]
        counts.max_tokens = max([counts.max_tokens, *lengths])

    def _between_steps(self) -> None:
        """Under the lock: cancelled jobs leave, queued jobs take the free slots."""
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.pending = [Finished(i, FinishReason.CANCELLED) for i in range(job.n)]
            job.flush()
        for job in [j for j in self._running if j.cancelled]:
            for seq in list(job.seqs.values()):
                self._end(self.scheduler.cancel(seq))
        self._admit()
        self._flush()
        self._say_serving()

    def _say_serving(self) -> None:
        """Name the requests in the batch for the line an unforeseen abort prints."""
        ids = [job.request_id or "?" for job in self._running]
        if ids != self._named:
            self._named = ids
            serving(f"decoding requests {', '.join(ids)} of {self.name}" if ids else "")

    def _admit(self) -> None:
        """Queued jobs into free slots, first come first served."""
        scheduler = self.scheduler
        while self.waiting and scheduler.free_slots() >= self.waiting[0].n:
            job = self.waiting.popleft()
            parent = None
            for choice, sampling in enumerate(job.sampling):
                index, self._next_index = self._next_index, self._next_index + 1
                self._owners[index] = (job, choice)
                lora = self.lora if job.lora is None else job.lora
                req = BatchRequest(index, job.tokens, sampling, replace(job.options), lora)
                on_text = _text_sink(job, choice)
                seq = scheduler.join(req, on_text, fork_of=parent)
                parent = parent or seq
                job.seqs[choice] = seq
            job.admitted = time.perf_counter()
            self._running.append(job)
            self._report(job)

    def _report(self, job: ServedJob, *, read: bool = False) -> None:
        """A Progress event for a job that asked, when its first choice's prompt moved on
        (`read`: this step's decode read some of it)."""
        seq = job.seqs.get(0)
        if not job.progress or seq is None:
            return
        total = len(job.tokens)
        processed = min(seq.n_past, total) if seq.parent is None else seq.reused
        if processed == job.reported:
            return
        now = time.perf_counter()
        if read:
            job.read_ms = 1000 * (now - job.admitted)
        elapsed = int(1000 * (now - job.admitted))
        job.pending.append(Progress(total, seq.reused, processed, elapsed, job.read_ms))
        job.reported = processed

    def _end(self, result: BatchResult) -> None:
        job, choice = self._owners.pop(result.index)
        seq = job.seqs.pop(choice, None)
        if seq is not None:  # the prompt tokens its slot held, or a fork copied
            self.counts.cached_tokens += seq.reused
        job.done_tokens += result.generated_tokens
        if result.finish_reason == "error":  # llama.cpp failed on it: the client hears why
            why = result.error or "llama.cpp failed while decoding it"
            job.pending.append(Failed(choice, f"{self.name} could not answer: {why}"))
            return
        # "context" is a cut answer, like max_tokens.
        reason = {"context": "length", "interrupted": "cancelled"}.get(
            result.finish_reason, result.finish_reason
        )
        job.pending.append(Finished(choice, FinishReason(reason), result.stop))

    def _flush(self) -> None:
        loops = {job.flush() for job in self._running}
        self._running = [job for job in self._running if job.seqs]
        for loop in loops:
            if loop is not None:
                _wait_until_sent(loop)


# How long the decode thread waits for the event loop to send a step's text (see below).
HANDOFF_S = 0.005


def _wait_until_sent(loop: asyncio.AbstractEventLoop) -> None:
    """Let the event loop send this step's text before the next decode starts. Its Python work
    (a JSON chunk and a socket write per stream) otherwise runs during llama_decode, on a core
    that llama.cpp's threads are using: one of them is descheduled and the others spin at the
    next barrier until it is back — on 2 cores that cost 3 ms a token (84 against 122 tok/s for
    one stream; benchmarks/README.md). Waiting costs the loop's ~0.1 ms per stream instead.
    Two hops: the consumers woken by this step's events run in the loop's next iteration, and
    the second hop is queued behind them. Bounded: a busy loop never stalls the decoding."""
    sent = threading.Event()
    try:
        loop.call_soon_threadsafe(loop.call_soon, sent.set)
    except RuntimeError:  # closed
        return
    sent.wait(HANDOFF_S)


def _text_sink(job: ServedJob, choice: int) -> TextSink:
    def on_text(text: str, logprobs: Sequence[TokenLogprob]) -> None:
        job.pending.append(Piece(choice, text, tuple(logprobs)))

    return on_text
