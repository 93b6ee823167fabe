"""The generation layer with a scripted session: UTF-8 across pieces, stop strings, limits."""

from __future__ import annotations

from typing import Any

import pytest

from infer.runtime.errors import ContextOverflowError, Interrupted
from infer.runtime.generation.loop import Generation, _split_stop
from infer.runtime.params import GenerateOptions, SamplingParams

from .fakes import FakeSession


def run(session: FakeSession, prompt_len: int = 4, **options: Any) -> Generation:
    gen = Generation(session, [1] * prompt_len, SamplingParams(), GenerateOptions(**options))
    list(gen)
    return gen


def test_utf8_split_across_pieces_is_joined() -> None:
    euro = "€".encode()  # three bytes, delivered one per token
    gen = run(FakeSession(pieces=[b"a", euro[:1], euro[1:2], euro[2:], b"b"]))
    assert gen.text == "a€b"
    assert all("\ufffd" not in p for p in gen.pieces)


def test_invalid_utf8_becomes_replacement_character() -> None:
    gen = run(FakeSession(pieces=[b"ok", b"\xff", b"\xc3"]))
    assert gen.text == "ok\ufffd\ufffd"


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    gen = run(FakeSession(pieces=[b"one ", b"two EN", b"D three"]), stop=["END"])
    assert gen.text == "one two "
    assert gen.stats.finish_reason == "stop"


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    gen = run(FakeSession(pieces=[b"E", b"N", b"X"]), stop=["END"])
    assert gen.text == "ENX"


def test_held_prefix_at_end_of_generation_is_flushed() -> None:
    gen = run(FakeSession(pieces=[b"abc", b"EN"]), stop=["END"])
    assert gen.text == "abcEN"


def test_max_tokens_limits_and_reports_length() -> None:
    gen = run(FakeSession(pieces=[b"a", b"b", b"c", b"d"]), max_tokens=2)
    assert gen.text == "ab"
    assert gen.stats.generated_tokens == 2
    assert gen.stats.finish_reason == "length"


def test_full_context_reports_context() -> None:
    gen = run(FakeSession(pieces=[b"x"] * 10, n_ctx=8), prompt_len=4)
    assert gen.text == "xxxx"
    assert gen.stats.finish_reason == "context"


def test_prompt_over_context_is_refused_with_both_counts() -> None:
    with pytest.raises(ContextOverflowError) as err:
        Generation(FakeSession(n_ctx=8), [1] * 20, SamplingParams(), GenerateOptions())
    assert "20 tokens" in str(err.value) and "8 tokens" in str(err.value)
    assert "raise it with ctx_size" in str(err.value)  # the runtime names no flag


def test_interrupt_keeps_the_partial_text() -> None:
    engine = FakeSession(pieces=[b"a", b"b", b"c"], interrupt_after=2)
    gen = Generation(engine, [1], SamplingParams(), GenerateOptions())
    with pytest.raises(Interrupted) as err:
        list(gen)
    assert err.value.partial == "ab"
    assert gen.stats.finish_reason == "interrupted"


def test_stats_count_tokens() -> None:
    gen = run(FakeSession(pieces=[b"a", b"b", b"c"]), prompt_len=5)
    stats = gen.stats.as_dict()
    assert stats["prompt_tokens"] == 5 and stats["generated_tokens"] == 3
    assert stats["finish_reason"] == "stop"


def test_a_follow_up_counts_only_what_the_session_evaluated() -> None:
    session = FakeSession(pieces=[b"a"])
    run(session, prompt_len=5)
    follow_up = Generation(session, [1] * 8, SamplingParams(), GenerateOptions())
    list(follow_up)
    # The session held the 5 prompt tokens and one answer token (0): the prompt shares 5.
    assert follow_up.stats.prompt_tokens == 8 and follow_up.stats.prompt_eval_tokens == 3


def test_ignore_eog_reaches_the_session() -> None:
    seen: list[bool] = []

    class Recording(FakeSession):
        def generate(self, *args: Any, ignore_eog: bool = False, **kw: Any) -> Any:
            seen.append(ignore_eog)
            return super().generate(*args, ignore_eog=ignore_eog, **kw)

    list(Generation(Recording(), [1], SamplingParams(), GenerateOptions(ignore_eog=True)))
    list(Generation(Recording(), [1], SamplingParams(), GenerateOptions()))
    assert seen == [True, False]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", ("hello", "", False)),
        ("hel</s", ("hel", "</s", False)),
        ("a</s>b", ("a", "", True)),
        ("<", ("", "<", False)),
    ],
)
def test_split_stop(text: str, expected: tuple[str, str, bool]) -> None:
    assert _split_stop(text, ["</s>"]) == expected
