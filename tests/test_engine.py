"""The llama.cpp model and its session on a tiny generated GGUF: fast, real native calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, generate, load
from infer.runtime.errors import Interrupted
from infer.runtime.llama.bindings import bindings
from infer.runtime.llama.engine import default_ctx
from infer.runtime.llama.interface import Session
from infer.runtime.models.gguf import read_header
from infer.runtime.models.resolve import resolve

GREEDY = SamplingParams(temperature=0)


@pytest.fixture()
def engine(tiny_model: Path) -> Iterator[Session]:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    yield model.new_session()
    model.close()  # and its session


def answer(engine: Session, prompt: str, sampling: SamplingParams, n: int = 24) -> str:
    gen = generate(engine, [Message("user", prompt)], sampling, GenerateOptions(max_tokens=n))
    return "".join(gen)


def test_greedy_is_deterministic_and_survives_random_bytes(engine: Session) -> None:
    first = answer(engine, "hello", GREEDY)
    engine.reset()
    assert answer(engine, "hello", GREEDY) == first
    assert isinstance(first, str)  # random byte tokens decoded without an exception


def test_seed_reproduces_sampling(engine: Session) -> None:
    a = answer(engine, "hi", SamplingParams(temperature=1.5, seed=42, top_k=0, min_p=0))
    b = answer(engine, "hi", SamplingParams(temperature=1.5, seed=42, top_k=0, min_p=0))
    c = answer(engine, "hi", SamplingParams(temperature=1.5, seed=7, top_k=0, min_p=0))
    assert a == b
    assert a != c


def test_follow_up_reuses_the_kv_cache(engine: Session) -> None:
    base = [Message("user", "x" * 50)]
    first = generate(engine, base, GREEDY, GenerateOptions(max_tokens=4))
    text = "".join(first)
    follow = [*base, Message("assistant", text), Message("user", "more")]
    second = generate(engine, follow, GREEDY, GenerateOptions(max_tokens=4))
    list(second)
    assert first.stats.prompt_eval_tokens == first.stats.prompt_tokens
    # Only the new turn is evaluated: the shared prefix came from the cache.
    assert second.stats.prompt_eval_tokens < second.stats.prompt_tokens - 40


def test_cancel_before_prompt_raises_interrupted_and_keeps_engine_usable(
    engine: Session,
) -> None:
    cancel = threading.Event()
    cancel.set()
    gen = generate(engine, [Message("user", "y" * 100)], GREEDY, GenerateOptions(max_tokens=4),
                   cancel=cancel)  # fmt: skip
    with pytest.raises(Interrupted):
        list(gen)
    assert engine.n_past == 0
    assert answer(engine, "again", GREEDY, n=3) is not None


def test_default_ctx_is_trained_context_capped_by_kv_budget(tiny_model: Path) -> None:
    header = read_header(tiny_model)
    assert default_ctx(header) == 256  # the tiny model's trained context
    # 2 layers x 4 kv heads x (16 + 16) x 2 bytes = 512 bytes per token.
    big = header.metadata.copy()
    big["llama.context_length"] = 1_000_000
    header.metadata = big
    assert default_ctx(header, budget=512 * 4096) == 4096
    assert default_ctx(header, budget=1) == 2048  # never below 2048 tokens


def test_ctx_size_option_is_honoured(tiny_model: Path) -> None:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=512))
    try:
        assert model.n_ctx == 512 and model.new_session().n_ctx == 512
        assert model.new_session(300).n_ctx == 300  # a session may ask for its own window
        assert model.n_ctx_train == 256
    finally:
        model.close()


def test_a_loaded_model_owns_no_context(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ll = bindings()
    made: list[int] = []
    real = ll.llama_init_from_model

    def counting(*args: object) -> object:
        made.append(1)
        return real(*args)

    monkeypatch.setattr(ll, "llama_init_from_model", counting)
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    try:
        assert made == []  # weights only: `--batch` and the server make the contexts they use
        assert model.load_s > 0
        context = model.new_context(2, 256, 64)
        assert len(made) == 1
        context.close()
        session = model.new_session()
        assert len(made) == 2 and session.model is model
    finally:
        model.close()


def test_sessions_over_one_model_keep_their_own_kv_cache(tiny_model: Path) -> None:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    try:
        one, two = model.new_session(), model.new_session()
        first = answer(one, "hello", GREEDY)
        assert two.n_past == 0 < one.n_past
        assert answer(two, "hello", GREEDY) == first
        two.close()
        assert answer(one, "hello", GREEDY) == first  # closing one leaves the other
    finally:
        model.close()


def test_tokenize_when_tokens_outnumber_bytes(engine: Session) -> None:
    # Byte-fallback vocabulary: every space becomes the three bytes of "▁", each a token.
    text = " a" * 40
    assert len(engine.model.tokenize(text, False)) > len(text.encode()) + 8
