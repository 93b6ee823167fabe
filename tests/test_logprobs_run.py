"""Log-probabilities in `infer run`'s loop (llama/session.py's on_sample, generation/loop.py):
the same tokens and values as the batch scheduler's (which the server uses, and which
tests/test_logprobs.py compares with llama-server), on the tiny random-weight model, whose
answers are random bytes: characters split over tokens, invalid UTF-8."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, generate, load
from infer.runtime.api import prompt_tokens
from infer.runtime.errors import UsageError
from infer.runtime.generation.batch import BatchDecoder, BatchRequest, BatchResult
from infer.runtime.generation.loop import Generation
from infer.runtime.llama.model import LlamaModel
from infer.runtime.models.resolve import resolve

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["hello", "what?", "x" * 40, "fox"]


@pytest.fixture()
def tiny(tiny_model: Path) -> Iterator[LlamaModel]:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    assert isinstance(model, LlamaModel)
    yield model
    model.close()


def run_loop(model: LlamaModel, options: GenerateOptions) -> list[Generation]:
    session, gens = model.new_session(), []
    for text in PROMPTS:
        session.reset()  # as a fresh `infer run`
        gen = generate(session, [Message("user", text)], GREEDY, options)
        list(gen)
        gens.append(gen)
    session.close()
    return gens


def scheduled(model: LlamaModel, options: GenerateOptions, ctx: int) -> list[BatchResult]:
    requests = [
        BatchRequest(i, prompt_tokens(model, [Message("user", t)]), GREEDY, options)
        for i, t in enumerate(PROMPTS)
    ]
    # one sequence, as the session: llama.cpp's arithmetic depends on how a batch is split
    with BatchDecoder.for_requests(model, requests, 1, ctx_size=ctx) as decoder:
        return sorted(decoder.run(requests), key=lambda r: r.index)


def test_the_run_loop_gives_the_schedulers_values(bundled_model: Path) -> None:
    model = load(resolve(str(bundled_model)), LoadOptions(ctx_size=512))
    assert isinstance(model, LlamaModel)
    options = GenerateOptions(max_tokens=12, logprobs=4)
    try:
        gens, results = run_loop(model, options), scheduled(model, options, 512)
    finally:
        model.close()
    for gen, result in zip(gens, results, strict=True):
        mine, theirs = gen.logprobs, result.logprobs
        assert mine is not None and theirs is not None
        assert [t.token for t in mine] == [t.token for t in theirs]
        assert "".join(t.text for t in mine) == gen.text == result.text
        assert [t.logprob for t in mine] == pytest.approx([t.logprob for t in theirs], abs=1e-4)
        assert [[a.token for a in t.top] for t in mine] == [
            [a.token for a in t.top] for t in theirs
        ]
        assert all(len(t.top) == 4 and t.top[0].token == t.token for t in mine)


def test_random_bytes_join_back_to_the_answer(tiny: LlamaModel) -> None:
    """The tiny model's answers split characters and hold invalid UTF-8: every token is listed,
    the texts join to the answer, the bytes to its bytes; both loops agree on the tokens (the
    random weights make their values differ in the third decimal between contexts)."""
    options = GenerateOptions(max_tokens=24, logprobs=2)
    gens, results = run_loop(tiny, options), scheduled(tiny, options, 256)
    for gen, result in zip(gens, results, strict=True):
        assert gen.logprobs is not None and result.logprobs is not None
        assert len(gen.logprobs) == gen.stats.generated_tokens
        assert b"".join(t.raw for t in gen.logprobs).decode(errors="replace") == gen.text
        # (an unfinished character at the very end is one U+FFFD, no token's text)
        joined = "".join(t.text for t in gen.logprobs)
        assert gen.text in (joined, joined + "\ufffd")
        assert [t.token for t in gen.logprobs] == [t.token for t in result.logprobs]


def test_nothing_is_computed_unless_asked(tiny: LlamaModel) -> None:
    session = tiny.new_session()
    gen = generate(session, [Message("user", "hello")], GREEDY, GenerateOptions(max_tokens=4))
    list(gen)
    assert gen.logprobs is None
    session.close()


def test_speculative_decoding_has_no_logprobs(tiny: LlamaModel) -> None:
    session = tiny.new_session()
    with pytest.raises(UsageError, match="speculative"):
        generate(
            session, [Message("user", "hi")], GREEDY, GenerateOptions(logprobs=1), drafter="lookup"
        )
    session.close()
