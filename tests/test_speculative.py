"""Speculative decoding (--draft): the same answer as plain decoding, with drafting stats.

The end-to-end tests use the bundled SmolLM2 (copy-heavy prompts, where lookup drafts are
accepted) and SmolLM2 as its own draft model (the only same-vocabulary pair at hand: it proves
the draft model's KV cache stays in step, with acceptance near 100%). The tiny random model
covers the edges in-process: a full context, an incompatible vocabulary."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, generate, load
from infer.runtime.api import load_draft
from infer.runtime.errors import IncompatibleDraftError
from infer.runtime.generation.draft_policy import DraftPolicy
from infer.runtime.generation.speculative import DraftCounts, LookupDrafter, run
from infer.runtime.generation.speculative import generate as speculate
from infer.runtime.llama.interface import Session

from .conftest import run_infer
from .fakes import FakeContext, FakeModel, FakeSession

COPY = (
    "Repeat this text exactly, word for word: The committee met on Tuesday to discuss the new "
    "library. The new library will open in the spring, and the committee hopes that the new "
    "library will be open every day of the week."
)
GREEDY = SamplingParams(temperature=0)


def _json(*args: str) -> dict[str, Any]:
    result = run_infer("run", "smollm2", "--temp", "0", "--json", *args)
    assert result.returncode == 0, result.stderr.decode()
    record: dict[str, Any] = json.loads(result.stdout)
    return record


# --- prompt lookup, pure Python ----------------------------------------------------------------
SOURCE = [10, 11, 12, 13, 14, 15, 16, 17]


def test_lookup_drafts_what_followed_the_longest_most_recent_match() -> None:
    never = threading.Event()
    history = [*SOURCE, 20, 12, 13, 30, 10, 11, 12, 13]
    # "12 13" last occurred before 30, but "11 12 13" (longer) before 14: the longer wins,
    # and 4 tokens agree there ("10 11 12 13"), so it drafts 2.
    assert LookupDrafter(ngram=3).draft(history, 8, never) == [14, 15]
    assert LookupDrafter(ngram=2).draft(history, 8, never) == [30]


def test_lookup_drafts_more_as_the_copy_goes_on_and_at_most_k() -> None:
    never, drafter = threading.Event(), LookupDrafter(ngram=3)
    history = [*SOURCE, 20, 10, 11, 12]
    assert drafter.draft(history, 8, never) == [13]
    history += [13, 14, 15]  # the index grows incrementally with the history
    assert drafter.draft(history, 8, never) == [16, 17, 20]
    assert drafter.draft(history, 2, never) == [16, 17]


def test_lookup_needs_two_tokens_and_never_matches_the_end_with_itself() -> None:
    never = threading.Event()
    assert LookupDrafter().draft([5, 6, 7], 4, never) == []
    assert LookupDrafter().draft([5, 6, 5], 4, never) == []
    assert LookupDrafter(ngram=1).draft([5, 6, 5], 4, never) == [6]


# --- in-process, the tiny random model -----------------------------------------------------------
@pytest.fixture()
def tiny(tiny_model: Path) -> Iterator[Session]:
    model = load(str(tiny_model), LoadOptions(ctx_size=96))
    yield model.new_session()
    model.close()


def _answer(
    engine: Session, options: GenerateOptions, drafter: Session | str | None = None
) -> tuple[str, Any]:
    engine.reset()
    gen = generate(engine, [Message("user", "abcabcabc")], GREEDY, options, drafter=drafter)
    return "".join(gen), gen.stats


def test_tiny_model_until_the_context_is_full(tiny: Session, tiny_model: Path) -> None:
    plain, plain_stats = _answer(tiny, GenerateOptions())
    assert plain_stats.finish_reason == "context"
    draft = load_draft(str(tiny_model), tiny)
    try:
        for source in ("lookup", draft):
            for adapt in (False, True):  # every draft verified; the drafts timings justify
                options = GenerateOptions(draft_max=5, draft_adapt=adapt)
                text, stats = _answer(tiny, options, drafter=source)
                assert (text, stats.finish_reason) == (plain, "context")
                assert stats.generated_tokens == plain_stats.generated_tokens
                assert tiny.n_past == tiny.n_ctx  # nothing rejected is left in the cache
                assert stats.drafted > 0 or adapt
    finally:
        draft.model.close()


def test_draft_model_with_another_vocabulary_is_refused(tiny: Session, bundled_model: Path) -> None:
    with pytest.raises(IncompatibleDraftError, match="different vocabulary"):
        load_draft(str(bundled_model), tiny)


# --- end to end, SmolLM2 ----------------------------------------------------------------------
def test_greedy_output_is_identical_with_and_without_drafting() -> None:
    plain = _json(COPY, "-n", "48")
    lookup = _json(COPY, "-n", "48", "--draft", "lookup", "--draft-always")
    model = _json(COPY, "-n", "48", "--draft", "smollm2", "--draft-max", "4", "--draft-always")
    adaptive = _json(COPY, "-n", "48", "--draft", "lookup")  # verifies what pays, maybe nothing
    assert plain["text"] and "library" in plain["text"]
    assert lookup["text"] == plain["text"]
    assert model["text"] == plain["text"]
    assert adaptive["text"] == plain["text"]
    assert adaptive["stats"]["accepted"] <= adaptive["stats"]["drafted"]
    assert lookup["stats"]["generated_tokens"] == plain["stats"]["generated_tokens"]
    for record, source in ((lookup, "lookup"), (model, "SmolLM2-135M-Instruct.Q4_1")):
        stats = record["stats"]
        assert stats["draft"] == source
        assert 0 < stats["accepted"] <= stats["drafted"]
        assert stats["draft_acceptance"] == round(stats["accepted"] / stats["drafted"], 4)
    assert model["stats"]["draft_acceptance"] > 0.9  # the model drafting for itself
    assert "drafted" not in plain["stats"]


def test_identical_past_512_cells_with_one_thread() -> None:
    """Past 512 KV cells llama.cpp's CPU flash attention decodes a lone token with the cells
    split between threads, which no multi-token batch reproduces (benchmarks/README.md): with
    one thread both paths compute alike, so the answer must be identical token for token."""
    words = [
        "river",
        "stone",
        "lamp",
        "garden",
        "window",
        "letter",
        "morning",
        "harbour",
        "winter",
        "bridge",
    ]
    rng = random.Random(3)
    text = " ".join(" ".join(rng.choice(words) for _ in range(9)) + "." for _ in range(50))
    args = (f"Repeat this text exactly: {text}", "-n", "120", "-t", "1", "--no-prompt-cache")
    plain = _json(*args)
    drafted = _json(*args, "--draft", "lookup", "--draft-always")
    assert plain["stats"]["prompt_tokens"] + 120 > 512 + 64
    assert drafted["stats"]["generated_tokens"] == plain["stats"]["generated_tokens"] == 120
    assert drafted["text"] == plain["text"]
    assert drafted["stats"]["accepted"] > 20


def test_max_tokens_and_stop_strings_hold_with_drafting() -> None:
    plain = _json(COPY, "-n", "48")["text"]
    short = _json(COPY, "-n", "7", "--draft", "lookup")
    assert short["stats"]["generated_tokens"] == 7
    assert short["finish_reason"] == "length"
    assert plain.startswith(short["text"])
    stop = "hopes"
    assert stop in plain
    stopped = _json(COPY, "-n", "48", "--draft", "lookup", "--stop", stop)
    assert stopped["text"] == plain[: plain.index(stop)]
    assert stopped["finish_reason"] == "stop"


def test_stats_line_shows_the_acceptance_rate() -> None:
    result = run_infer("run", "smollm2", COPY, "--temp", "0", "-n", "16", "--draft", "lookup",
                       "--stats")  # fmt: skip
    assert result.returncode == 0
    line = result.stderr.decode().strip().splitlines()[-1]
    assert "draft lookup:" in line and "accepted (" in line


def test_incompatible_draft_model_is_a_one_line_error(tiny_model: Path) -> None:
    result = run_infer("run", "smollm2", "hi", "-n", "4", "--draft", str(tiny_model))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "different vocabulary" in err and "Traceback" not in err
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("flag", "value"), [("--draft-max", "0"), ("--draft-max", "x"), ("--draft-ngram", "0")]
)
def test_invalid_draft_options_are_usage_errors(flag: str, value: str) -> None:
    result = run_infer("run", "smollm2", "hi", "--draft", "lookup", flag, value)
    assert result.returncode == 2
    assert flag in result.stderr.decode()


# --- acceptance on the engine interface (tests/fakes.py): no model needed -----------------------


class _Scripted:
    """Drafts the next `right` tokens of the fake's rule, then one wrong token ("!")."""

    name = "scripted"

    def __init__(self, right: int) -> None:
        self.right = right

    def draft(self, history: list[int], k: int, cancel: threading.Event) -> list[int]:
        nxt = history[-1] + 1
        return [*range(nxt, nxt + self.right), ord("!")][:k]


def _prompted(text: bytes) -> tuple[FakeModel, FakeContext]:
    model = FakeModel()
    ctx = model.new_context(1, 64, 16)
    ctx.add(0, list(text), True)
    ctx.decode()
    return model, ctx


def test_accepted_drafts_are_emitted_and_rejected_ones_leave_the_cache() -> None:
    model, ctx = _prompted(b"a")
    counts = DraftCounts()
    policy = DraftPolicy(3, adaptive=False)
    out = b"".join(run(model, ctx, GREEDY, _Scripted(2), policy, None, threading.Event(), counts))
    assert out == b"bcdefghijklmnopqrstuvwxyz"  # what plain decoding gives
    assert bytes(ctx.tokens(0)) == b"abcdefghijklmnopqrstuvwxyz"  # no rejected draft left
    assert counts.accepted >= 2 * (counts.drafted // 3) - 2 and counts.drafted > 0
    assert all(n <= 4 for d in ctx.decodes[1:] for _, n in d)  # token + at most 3 drafts


def test_sampling_with_drafts_draws_as_plain_sampling_does() -> None:
    """At temperature > 0 every emitted token is sampled once, in order, with the plain
    chain: the same seed gives the same answer, whatever the drafts were."""
    sampling = SamplingParams(temperature=0.8, seed=5)
    model, plain_ctx = _prompted(b"a")
    plain_ctx.set_sampler(0, sampling)
    plain = []
    while True:
        token = plain_ctx.sample(0, -1)
        if model.is_eog(token):
            break
        plain.append(token)
        plain_ctx.add(0, [token], True)
        plain_ctx.decode()
    for right in (0, 1, 3):
        model, ctx = _prompted(b"a")
        policy = DraftPolicy(4, adaptive=False)
        out = run(model, ctx, sampling, _Scripted(right), policy, None, threading.Event(),
                  DraftCounts())  # fmt: skip
        assert b"".join(out) == bytes(plain)


def test_drafts_never_exceed_one_decode_or_the_limit() -> None:
    model = FakeModel()
    ctx = model.new_context(1, 64, 3)  # a 3-token batch: a token and 2 drafts at most
    ctx.add(0, [ord("a")], True)
    ctx.decode()
    policy = DraftPolicy(8, adaptive=False)
    counts = DraftCounts()
    out = run(model, ctx, GREEDY, _Scripted(8), policy, 5, threading.Event(), counts)
    assert b"".join(out)[:5] == b"bcdef"
    assert all(n <= 3 for d in ctx.decodes for _, n in d)


def test_the_session_path_on_the_fakes() -> None:
    """speculative.generate on the Session interface: the target's session and a draft
    model's (same rule, so every draft is right) give what plain decoding gives."""
    options = GenerateOptions(draft_max=4, draft_adapt=False)  # every draft verified
    for source in ("lookup", FakeModel().new_session()):
        target = FakeModel().new_session()
        tokens, counts = speculate(
            target, list(b"abcab"), GREEDY, threading.Event(), options, source
        )
        assert b"".join(tokens) == b"cdefghijklmnopqrstuvwxyz"
        assert bytes(target.tokens) == b"abcabcdefghijklmnopqrstuvwxyz"
        if isinstance(source, FakeSession):
            assert counts.drafter == "fake" and counts.accepted == counts.drafted > 0
