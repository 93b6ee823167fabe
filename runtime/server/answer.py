"""Answer assembly, for any protocol: the events of a request's jobs turned into each choice's
text, tool calls and finish reason, whole (`Answer.collect`) or as they come
(`Answer.deltas`), with the request's usage figures kept in its access-log record; and the
streamed response that cancels the jobs the moment the client disconnects (`EventStream`).

A protocol module (openai_answers) shapes what comes out of here into its own objects and
stream frames; nothing here knows a wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from starlette.responses import Response

from ..generation.logprobs import TokenLogprob
from ..generation.tool_calls import ToolCall, emittable
from .access_log import LogRecord
from .backend import Choice, Finished, FinishReason, Job, Piece, Progress


@dataclass(frozen=True)
class TextDelta:
    index: int  # the choice
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # its tokens', when the request asked


@dataclass(frozen=True)
class CallDelta:
    index: int  # the choice
    k: int  # the call's place among the choice's calls
    call: ToolCall


@dataclass(frozen=True)
class ChoiceEnd:
    index: int
    reason: FinishReason  # as Choice.reason


Delta = TextDelta | CallDelta | ChoiceEnd | Progress


class StreamShaper(Protocol):
    """A protocol's stream frames (OpenAI's SSE chunks; an Ollama NDJSON line…)."""

    media_type: str

    def opening(self, choices: int) -> list[bytes]:
        """Frames before any text (OpenAI's chat: each choice's role)."""
        ...

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """A piece of a choice's text, with its tokens' log-probabilities when asked for (only
        the doors that parse a logprobs field get any)."""
        ...

    def call(self, index: int, k: int, call: ToolCall) -> bytes: ...

    def end(self, index: int, reason: FinishReason) -> bytes:
        """A choice's last frame; `reason` as Choice.reason."""
        ...

    def error(self, error: Exception) -> bytes:
        """The frame that ends a stream a failure cut short (the status line is sent)."""
        ...

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        """Frames after every choice ended (usage, `[DONE]`)."""
        ...


@runtime_checkable
class ProgressShaper(Protocol):
    """A shaper that reports the prompt's reading (llama-server's `prompt_progress`); the
    doors that take `return_progress` have one, the others are never asked for Progress."""

    def progress(self, progress: Progress) -> bytes: ...


class Answer:
    """The jobs of one request (several for a completions list of prompts), their events
    merged with each job's choices numbered after the previous job's. The jobs' tool plan
    (the first job's: every job of a request has the same tools) reads calls out of the text."""

    def __init__(self, jobs: list[Job], record: LogRecord, n: int, *, logprobs: bool = False):
        """`logprobs`: the request asked for log-probabilities (then every whole choice has
        its tokens' list, empty or not)."""
        self.jobs, self.record, self.n, self.logprobs = jobs, record, n, logprobs
        self.model = jobs[0].model
        record.model = record.model or self.model  # a request that named none: the default
        self.tools = jobs[0].tools
        self.choices = n * len(jobs)
        self.done = False
        self.stops: dict[int, str] = {}  # choice → the stop string that ended it
        record.prompt_tokens = sum(j.prompt_tokens for j in jobs)

    def cancel(self) -> None:
        if not self.done:
            for job in self.jobs:
                job.cancel()

    async def collect(self) -> list[Choice]:
        """Every choice, once all have finished."""
        texts: list[list[str]] = [[] for _ in range(self.choices)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(self.choices)]
        reasons = [FinishReason.STOP] * self.choices
        async for event in self.events():
            if isinstance(event, Piece):
                texts[event.index].append(event.text)
                logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, Finished):
                reasons[event.index] = event.reason
        out = [self._choice("".join(t), r) for t, r in zip(texts, reasons, strict=True)]
        if self.logprobs:
            out = [replace(c, logprobs=tuple(lp)) for c, lp in zip(out, logprobs, strict=True)]
        return out

    def _choice(self, text: str, reason: FinishReason) -> Choice:
        if self.tools is None:
            return Choice(text, text, [], reason)
        parsed = self.tools.parse(text)
        if not parsed.calls:
            return Choice(text, text, [], reason)
        return Choice(text, parsed.content, parsed.calls, FinishReason.TOOL_CALLS)

    async def deltas(self) -> AsyncIterator[Delta]:
        """The answer as it comes. With tools offered, each choice's text is held from where a
        call may begin (the plan's markers) until the choice ends: then its calls, or the rest
        as text."""
        markers = self.tools.markers if self.tools is not None else ()
        held = [""] * self.choices  # with tools: each choice's text so far
        sent = [0] * self.choices  # ... and how much of it went out as text
        # ... and the log-probabilities of tokens not sent yet (they go with the next text)
        waiting: list[tuple[TokenLogprob, ...]] = [()] * self.choices
        async for event in self.events():
            if isinstance(event, Progress):
                yield event
                continue
            i = event.index
            if isinstance(event, Piece):
                if not markers:
                    if event.text or event.logprobs:
                        yield TextDelta(i, event.text, event.logprobs)
                    continue
                held[i] += event.text
                waiting[i] += event.logprobs
                cut = emittable(held[i], markers)
                if cut > sent[i]:
                    yield TextDelta(i, held[i][sent[i] : cut], waiting[i])
                    sent[i], waiting[i] = cut, ()
                continue
            choice = self._choice(held[i], event.reason)
            for k, call in enumerate(choice.calls):
                yield CallDelta(i, k, call)
            if not choice.calls and (len(held[i]) > sent[i] or waiting[i]):
                yield TextDelta(i, held[i][sent[i] :], waiting[i])
            yield ChoiceEnd(i, choice.reason)

    async def frames(self, shaper: StreamShaper) -> AsyncGenerator[bytes, None]:
        """The answer streamed in `shaper`'s frames; a failure mid-stream cancels the jobs and
        ends the stream with the shaper's error frame."""
        for frame in shaper.opening(self.choices):
            yield frame
        try:
            async for delta in self.deltas():
                if isinstance(delta, TextDelta):
                    yield shaper.text(delta.index, delta.text, delta.logprobs)
                elif isinstance(delta, CallDelta):
                    yield shaper.call(delta.index, delta.k, delta.call)
                elif isinstance(delta, Progress):
                    if isinstance(shaper, ProgressShaper):
                        yield shaper.progress(delta)
                else:
                    yield shaper.end(delta.index, delta.reason)
        except Exception as e:
            self.cancel()
            yield shaper.error(e)
            return
        for frame in shaper.closing(self.record.prompt_tokens, self.record.completion_tokens):
            yield frame

    async def events(self) -> AsyncIterator[Piece | Finished | Progress]:
        try:
            if len(self.jobs) == 1:
                async for event in self.jobs[0].events():
                    self._seen(event)
                    yield event
            else:
                async for event in self._merged():
                    self._seen(event)
                    yield event
            self.done = True
        finally:
            self._account()

    def _seen(self, event: Piece | Finished | Progress) -> None:
        if isinstance(event, Finished) and event.stop is not None:
            self.stops[event.index] = event.stop
        if self.record.ttft_s is None and isinstance(event, Piece):
            self.record.ttft_s = time.monotonic() - self.record.started

    def _account(self) -> None:
        self.record.completion_tokens = sum(j.completion_tokens for j in self.jobs)
        ttfts = [j.ttft_s for j in self.jobs if j.ttft_s is not None]
        if ttfts:
            self.record.ttft_s = min(ttfts)
        if self.record.ttft_s is not None:
            total = time.monotonic() - self.record.started
            self.record.generation_s = max(0.0, total - self.record.ttft_s)

    async def _merged(self) -> AsyncIterator[Piece | Finished | Progress]:
        queue: asyncio.Queue[Piece | Finished | Progress | BaseException | None] = asyncio.Queue()
        n = self.n

        async def pump(k: int, job: Job) -> None:
            try:
                async for e in job.events():
                    moved: Piece | Finished | Progress = e  # Progress: the prompt's, unnumbered
                    if isinstance(e, Piece):
                        moved = Piece(e.index + k * n, e.text, e.logprobs)
                    elif isinstance(e, Finished):
                        moved = Finished(e.index + k * n, e.reason, e.stop)
                    queue.put_nowait(moved)
            except Exception as e:
                queue.put_nowait(e)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(k, job)) for k, job in enumerate(self.jobs)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()


async def whole(
    answer: Answer, receive: Any, failed: Callable[[Exception], Response]
) -> list[Choice] | Response:
    """Every door's unstreamed answer: the choices; or `failed(e)`, the door's own error
    response, when the backend failed; or a bare 400 when the client went away first (nobody
    is left to answer, and its jobs are cancelled)."""
    try:
        choices = await race_disconnect(answer.collect(), receive)
    except Exception as e:
        answer.cancel()
        return failed(e)
    if choices is None:
        answer.cancel()
        answer.record.disconnected = True
        return Response(status_code=400)
    return list(choices)


async def race_disconnect(work: Any, receive: Any) -> Any:
    """`work`'s result, or None as soon as the client disconnects (work is then cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """An answer streamed in a protocol's frames that cancels its jobs the moment the client
    disconnects: a watcher waits on `receive()` for http.disconnect while the frames are
    sent."""

    def __init__(self, answer: Answer, shaper: StreamShaper) -> None:
        self.status_code, self.background = 200, None
        self.raw_headers = [  # no Content-Length: the length is unknown
            (b"content-type", shaper.media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.answer, self.shaper = answer, shaper

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        stream = self.answer.frames(self.shaper)

        async def pump() -> bool:
            async for data in stream:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True

        try:
            finished = await race_disconnect(pump(), receive)
        except OSError:  # a write to a closed connection
            finished = None
        if finished is None:
            self.answer.record.disconnected = True
            self.answer.cancel()
        await stream.aclose()
