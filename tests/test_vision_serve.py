"""Images on the continuous-batching path (generation/scheduler.py, the server's): each
request's media chunks are evaluated once into its slot's sequence while the other slots keep
decoding, and every answer is the one `infer run` gives for the same prompt and image."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from infer.runtime import LoadOptions, load
from infer.runtime.api import generate, prompt_tokens
from infer.runtime.generation.scheduler import BatchRequest, Scheduler
from infer.runtime.generation.templates import Message
from infer.runtime.media import Media, part
from infer.runtime.params import GenerateOptions, SamplingParams

from .tiny_media import png
from .tiny_vision import write_tiny_projector, write_tiny_text_model

GREEDY = SamplingParams(temperature=0)
N = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vision-serve")
    return {
        "model": write_tiny_text_model(d / "tiny.gguf"),
        "mmproj": write_tiny_projector(d / "mmproj.gguf"),
    }


IMAGES = {"a": png(40, 30, seed=0), "b": png(40, 30, seed=1)}


def message(text: str, *images: str) -> Message:
    content = [part(Media("image", IMAGES[i])) for i in images] + [{"type": "text", "text": text}]
    return Message("user", content if images else text)


PROMPTS = [
    message("What is this?", "a"),
    message("A question without a picture, long enough to take several chunks of eight."),
    message("And this one?", "b"),
    message("Both: which is brighter?", "a", "b"),
]


def alone(files: dict[str, Path]) -> list[str]:
    """Each prompt answered as `infer run` answers it: a session of its own."""
    model = load(str(files["model"]), LoadOptions(ctx_size=256, mmproj=files["mmproj"]))
    try:
        out = []
        for m in PROMPTS:
            session = model.new_session()
            gen = generate(session, [m], GREEDY, GenerateOptions(max_tokens=N))
            out.append("".join(gen))
            session.close()
        return out
    finally:
        model.close()


@pytest.mark.parametrize("slots", [2, 3])
def test_batched_answers_with_images_equal_single_runs(files: dict[str, Path], slots: int) -> None:
    """With 2 slots the two-image prompt joins a slot that holds the first image already."""
    expected = alone(files)
    assert len(set(expected)) == len(expected)  # the pictures make a difference
    model = load(str(files["model"]), LoadOptions(ctx_size=256, mmproj=files["mmproj"]))
    try:
        # n_batch 8: the text prompt is read a chunk per step while the image prompts join,
        # have their images evaluated into their own slots and generate.
        context = model.new_context(slots, 256, 8)
        scheduler = Scheduler(model, context)
        waiting = [
            BatchRequest(i, prompt_tokens(model, [m]), GREEDY, GenerateOptions(max_tokens=N))
            for i, m in enumerate(PROMPTS)
        ]
        results = {}
        while waiting or scheduler.running():
            while waiting and scheduler.free_slots():
                scheduler.join(waiting.pop(0))
            finished, _ = scheduler.step(threading.Event())
            for r in finished:
                results[r.index] = r
        assert [results[i].text for i in range(len(PROMPTS))] == expected
        assert {r.finish_reason for r in results.values()} <= {"length", "stop"}
        # The slot that answered about picture a holds it: the same question again reuses it.
        again = BatchRequest(9, prompt_tokens(model, [PROMPTS[0]]), GREEDY)
        encoded = model_projector_count(scheduler)
        seq = scheduler.join(again)
        assert seq.reused > 0
        scheduler.cancel(seq)
        assert model_projector_count(scheduler) == encoded
        context.close()
    finally:
        model.close()


def model_projector_count(scheduler: Scheduler) -> int:
    return scheduler.model.projector.encoded  # type: ignore[attr-defined]


def test_the_server_pool_answers_media_parts_as_infer_run(files: dict[str, Path]) -> None:
    """The backend contract (what the API doors call): a TextRequest whose user message holds
    media parts, answered by the pool's worker with the model's projector."""
    from infer.runtime.server.backend import Finished, Piece, ServerConfig, TextRequest
    from infer.runtime.server.pool import ModelPool

    expected = alone(files)

    async def main() -> list[str]:
        load_options = LoadOptions(ctx_size=256, mmproj=files["mmproj"])
        config = ServerConfig([str(files["model"])], load=load_options, parallel=2)
        pool = ModelPool(config)
        try:
            await pool.start()
            jobs = [
                await pool.submit(
                    str(files["model"]),
                    TextRequest(messages=[m], sampling={"temperature": 0}, max_tokens=N),
                )
                for m in PROMPTS
            ]
            texts = []
            for job in jobs:
                text = ""
                async for event in job.events():
                    if isinstance(event, Piece):
                        text += event.text
                    else:
                        assert isinstance(event, Finished)
                texts.append(text)
            return texts
        finally:
            pool.close()

    assert asyncio.run(main()) == expected
