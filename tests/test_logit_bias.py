"""logit_bias below the HTTP doors: each door's forms read into (token, bias) pairs
(server/logit_bias.py), SamplingParams' check of the pairs, and the sampler chain on a real
(tiny, random-weight) model through the library: a ban is honoured, a forced token is picked,
and an id past the vocabulary is an OptionError before llama.cpp sees it. The doors end to end,
against llama-server, are in tests/test_llamacpp_sampling.py."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import load
from infer.runtime.api import generate
from infer.runtime.errors import OptionError
from infer.runtime.generation.templates import Message
from infer.runtime.params import GenerateOptions, SamplingParams
from infer.runtime.server import logit_bias


def test_openai_form() -> None:
    assert logit_bias.parse_openai({"5": -100, " 7": 2.5, "+9": 100}) == (
        (5, -100.0),
        (7, 2.5),
        (9, 100.0),
    )
    assert logit_bias.parse_openai(None) == () and logit_bias.parse_openai({}) == ()


@pytest.mark.parametrize(
    "value",
    [[[5, 1]], {"x": 1}, {"5": 100.5}, {"5": "1"}, {"5": False}, {"-1": 1}, {"5": math.nan}],
)
def test_openai_form_refused(value: Any) -> None:
    with pytest.raises(OptionError) as e:
        logit_bias.parse_openai(value)
    assert e.value.option == "logit_bias"


def test_native_forms() -> None:
    assert logit_bias.parse_native([[5, -1], ["hi", False], [7, 1e5]]) == (
        (5, -1.0),
        ("hi", -math.inf),
        (7, 1e5),
    )
    assert logit_bias.parse_native({"5": 2, " the": False}) == ((5, 2.0), (" the", -math.inf))
    assert logit_bias.parse_native([]) == () and logit_bias.parse_native(None) == ()


@pytest.mark.parametrize(
    "value",
    [
        [[5]],
        [5, 1],
        [[5, True]],
        [[5, None]],
        [[5.0, 1]],
        [[-2, 1]],
        [[5, 1e7]],
        "x",
        3,
        {"5": True},
        [[5, 1]] * (logit_bias.MAX_ENTRIES + 1),
    ],
)
def test_native_form_refused(value: Any) -> None:
    with pytest.raises(OptionError) as e:
        logit_bias.parse_native(value)
    assert e.value.option == "logit_bias"


def test_texts_are_tokenized_each_token_with_the_texts_bias() -> None:
    async def tokenize(text: str) -> list[int]:
        return [ord(c) for c in text]

    pairs = asyncio.run(logit_bias.resolve(((1, 2.0), ("ab", -math.inf)), tokenize))
    assert pairs == ((1, 2.0), (97, -math.inf), (98, -math.inf))
    assert logit_bias.shown(pairs) == [
        {"bias": 2.0, "token": 1},
        {"bias": None, "token": 97},
        {"bias": None, "token": 98},
    ]


@pytest.mark.parametrize(
    "pairs", [((-1, 1.0),), ((1, math.nan),), ((1, math.inf),), ((True, 1.0),), ((1,),)]
)
def test_sampling_params_check_the_pairs(pairs: Any) -> None:
    with pytest.raises(OptionError) as e:
        SamplingParams(logit_bias=pairs).validate()
    assert e.value.option == "logit_bias"


def answer(model: Any, bias: tuple[tuple[int, float], ...]) -> list[int]:
    """The ids of the first 6 tokens answered at temperature 0 (read with their logprobs)."""
    session = model.new_session()
    try:
        sampling = SamplingParams(temperature=0, logit_bias=bias)
        options = GenerateOptions(max_tokens=6, logprobs=0, ignore_eog=True)
        gen = generate(session, [Message("user", "hi")], sampling, options)
        "".join(gen)
        assert gen.logprobs is not None
        return [t.token for t in gen.logprobs]
    finally:
        session.close()


def test_the_sampler_chain_bans_forces_and_refuses(tiny_model: Path) -> None:
    model = load(str(tiny_model))
    try:
        plain = answer(model, ())
        banned = answer(model, ((plain[0], -math.inf),))
        assert plain[0] not in banned and banned != plain
        forced = answer(model, ((42, 100.0),))
        assert forced == [42] * 6
        with pytest.raises(OptionError) as e:
            answer(model, ((model.n_vocab, 1.0),))
        assert e.value.option == "logit_bias" and "vocabulary" in str(e.value)
    finally:
        model.close()
