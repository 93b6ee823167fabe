"""The server's decode thread (runtime/server/worker.py) on the scripted engine interface:
jobs stream their text, join a running batch, leave when cancelled, and n choices share one
prompt read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infer.runtime.errors import EngineError
from infer.runtime.params import GenerateOptions, SamplingParams
from infer.runtime.server.backend import Finished, FinishReason, Piece
from infer.runtime.server.worker import ModelWorker, ServedJob

from .fakes import FakeContext, FakeModel

GREEDY = SamplingParams(temperature=0)


def job(text: str, n: int = 1, max_tokens: int | None = None, **kw: Any) -> ServedJob:
    sampling = [SamplingParams(temperature=0.8, seed=i) for i in range(n)] if n > 1 else [GREEDY]
    options = GenerateOptions(max_tokens=max_tokens, **kw)
    return ServedJob("fake", list(text.encode()), sampling, options, asyncio.get_running_loop())


async def collect(j: ServedJob) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async for event in j.events():
        if isinstance(event, Piece):
            texts[event.index] = texts.get(event.index, "") + event.text
        else:
            assert isinstance(event, Finished)
            reasons[event.index] = event.reason
    return texts, reasons


def worker(slots: int = 2) -> ModelWorker:
    model = FakeModel()
    return ModelWorker("fake", model, model.new_context(slots, 64, 16), print)


def fake(w: ModelWorker) -> FakeContext:
    """The worker's context as the fake it is, for the knobs and records only the fake has."""
    assert isinstance(w.context, FakeContext)
    return w.context


def test_jobs_stream_and_finish() -> None:
    async def main() -> None:
        w = worker()
        try:
            a, b = job("hi"), job("a", max_tokens=3, stop=["d"])
            w.submit(a)
            w.submit(b)
            assert await collect(a) == ({0: "jklmnopqrstuvwxyz"}, {0: "stop"})
            assert await collect(b) == ({0: "bc"}, {0: "stop"})
            assert a.completion_tokens == 17 and a.ttft_s is not None
        finally:
            w.stop()

    asyncio.run(main())


def test_a_cancelled_job_frees_its_slot_for_the_next() -> None:
    async def main() -> None:
        w = worker(slots=1)
        fake(w).step_delay = 0.01
        try:
            long = job("a")
            w.submit(long)
            queued = job("x", max_tokens=2)
            w.submit(queued)  # waits: the only slot is busy
            events = long.events()
            first = await events.__anext__()
            assert isinstance(first, Piece)
            long.cancel()
            rest = [e async for e in events]
            assert rest[-1] == Finished(0, FinishReason.CANCELLED)
            assert await collect(queued) == ({0: "yz"}, {0: "length"})
            for _ in range(100):  # the thread updates its books right after delivering
                if w.idle:
                    break
                await asyncio.sleep(0.01)
            assert w.idle and w.busy_slots == 0
        finally:
            w.stop()

    asyncio.run(main())


def test_n_choices_read_the_prompt_once() -> None:
    async def main() -> None:
        w = worker(slots=3)
        try:
            j = job("abcdefghij", n=3, max_tokens=4)
            w.submit(j)
            texts, reasons = await collect(j)
            assert sorted(texts) == [0, 1, 2] and reasons == {0: "length", 1: "length", 2: "length"}
            assert j.completion_tokens == 12
            ctx = fake(w)
            assert sorted(ctx.copies) == [(0, 1), (0, 2)]
        finally:
            w.stop()

    asyncio.run(main())


def test_a_refused_decode_fails_that_job_alone_and_the_worker_goes_on() -> None:
    async def main() -> None:
        w = worker()
        try:
            fake(w).refuse = {ord("Q")}
            broken, fine = job("aQ"), job("x", max_tokens=2)
            w.submit(broken)
            w.submit(fine)
            with pytest.raises(EngineError) as e:
                await collect(broken)
            assert "fake could not answer" in str(e.value) and "code -1" in str(e.value)
            assert await collect(fine) == ({0: "yz"}, {0: "length"})
            after = job("x", max_tokens=2)
            w.submit(after)
            assert await collect(after) == ({0: "yz"}, {0: "length"})
        finally:
            w.stop()

    asyncio.run(main())
