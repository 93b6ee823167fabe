"""Continuous batching (runtime/generation/scheduler.py) against the scripted engine interface
in tests/fakes.py: joining and leaving between steps, prompt chunks interleaved with
generation, prefix reuse, forks for n choices, cancellation, limits and failures."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from infer.runtime.errors import Interrupted
from infer.runtime.generation.scheduler import BatchRequest, BatchResult, Scheduler
from infer.runtime.params import GenerateOptions, SamplingParams

from .fakes import FakeContext, FakeModel

GREEDY = SamplingParams(temperature=0)


def request(index: int, text: str, max_tokens: int | None = None, **kw: Any) -> BatchRequest:
    options = GenerateOptions(max_tokens=max_tokens, **kw)
    return BatchRequest(index, list(text.encode()), GREEDY, options)


def make(n_seq: int = 4, n_ctx_seq: int = 64, n_batch: int = 16) -> tuple[Scheduler, FakeContext]:
    model = FakeModel()
    ctx = model.new_context(n_seq, n_ctx_seq, n_batch)
    return Scheduler(model, ctx), ctx


def run_all(s: Scheduler, cancel: threading.Event | None = None) -> list[BatchResult]:
    done = []
    while s.running():
        finished, _ = s.step(cancel)
        done.extend(finished)
    return done


def test_one_sequence_follows_the_rule_to_end_of_generation() -> None:
    s, _ = make()
    s.join(request(0, "hi"))
    [result] = run_all(s)
    assert (result.text, result.finish_reason, result.generated_tokens) == (
        "jklmnopqrstuvwxyz",
        "stop",
        17,
    )


def test_sequences_join_between_steps_without_waiting_for_others() -> None:
    s, ctx = make()
    first = s.join(request(0, "a"))
    for _ in range(3):
        s.step()
    assert first.generated == 3
    s.join(request(1, "p", max_tokens=2))
    finished, _ = s.step()  # the newcomer's prompt and the first's next token: one decode
    assert ctx.decodes[-1] == [(0, 1), (1, 1)]
    assert first.generated == 4 and not finished
    results = {r.index: r for r in run_all(s)}
    assert results[1].text == "qr" and results[1].finish_reason == "length"
    assert results[0].text == "bcdefghijklmnopqrstuvwxyz"


def test_a_long_prompt_is_read_in_chunks_while_others_generate() -> None:
    s, ctx = make(n_batch=8, n_ctx_seq=128)
    s.join(request(0, "a"))
    s.step()
    s.join(request(1, "b" * 40 + "a", max_tokens=1))
    steps = 0
    while s.slots[1] is not None:
        s.step()
        steps += 1
    # Every step: sequence 0's next token first, then 7 prompt tokens of sequence 1.
    assert all(d[0] == (0, 1) for d in ctx.decodes[1:])
    assert [n for d in ctx.decodes[1:] for seq, n in d if seq == 1] == [7, 7, 7, 7, 7, 6]
    assert steps == 6


def test_a_prompt_takes_the_slot_that_holds_its_prefix() -> None:
    s, ctx = make(n_seq=3)
    s.join(request(0, "abcdef", max_tokens=1))
    s.join(request(1, "xyz", max_tokens=1))
    run_all(s)
    seq = s.join(request(2, "xyzw", max_tokens=1))
    assert seq.slot == 1 and seq.n_past == 3  # "xyz" is held: only "w" is decoded
    s.step()
    assert ctx.decodes[-1] == [(1, 1)]
    unrelated = s.join(request(3, "q", max_tokens=1))
    assert unrelated.slot == 0  # no shared prefix: the lowest free slot
    assert ctx.tokens(0) == []  # its old cells were cut


def test_the_last_prompt_token_is_always_decoded() -> None:
    s, _ = make()
    s.join(request(0, "ab", max_tokens=1))
    run_all(s)
    seq = s.join(request(1, "ab", max_tokens=1))
    assert seq.n_past == 1  # "a" reused, "b" decoded again for its logits
    [result] = run_all(s)
    assert result.text == "c"


def test_forks_copy_the_prompt_and_sample_on_their_own() -> None:
    s, ctx = make(n_seq=4, n_batch=4)
    sampling = SamplingParams(temperature=0.8, seed=1)
    parent = s.join(BatchRequest(0, list(b"abcdefghij"), sampling, GenerateOptions(max_tokens=4)))
    forks = [
        s.join(
            BatchRequest(i, list(b"abcdefghij"), SamplingParams(temperature=0.8, seed=1 + i)),
            fork_of=parent,
        )
        for i in (1, 2)
    ]
    for fork in forks:
        fork.req.options = GenerateOptions(max_tokens=4)
    results = {r.index: r for r in run_all(s)}
    prompt_reads = [n for d in ctx.decodes for seq, n in d if seq == 0]
    assert sum(prompt_reads) == 10 + 3  # the prompt once (three steps), then 3 tokens
    assert all(seq == 0 for d in ctx.decodes[:3] for seq, _ in d)  # forks waited
    assert sorted(ctx.copies) == [(0, 1), (0, 2)]
    assert all(len(r.text) == 4 and r.generated_tokens == 4 for r in results.values())
    assert len({r.text for r in results.values()}) > 1  # different seeds, different answers


def test_cancel_frees_the_slot_at_once() -> None:
    s, _ = make(n_seq=1)
    seq = s.join(request(0, "a"))
    s.step()
    s.step()
    result = s.cancel(seq)
    assert result.finish_reason == "cancelled" and result.text == "bc"
    assert s.free_slots() == 1 and not s.running()
    s.join(request(1, "x", max_tokens=2))
    assert [r.text for r in run_all(s)] == ["yz"]


def test_a_cancelled_fork_parent_lets_its_forks_read_the_prompt() -> None:
    s, ctx = make(n_seq=2, n_batch=4)
    parent = s.join(request(0, "abcdefgh", max_tokens=2))
    fork = s.join(request(1, "abcdefgh", max_tokens=2), fork_of=parent)
    s.step()
    s.cancel(parent)
    [result] = run_all(s)
    assert result.index == 1 and result.text == "ij"
    assert fork.parent is None and ctx.copies == []


def test_stop_strings_and_limits_as_generation_has_them() -> None:
    s, _ = make(n_ctx_seq=10)
    s.join(request(0, "a", stop=["de"]))
    s.join(request(1, "a", max_tokens=3))
    s.join(request(2, "a"))  # a 10-cell window: 1 prompt token, 9 answer tokens
    results = {r.index: r for r in run_all(s)}
    assert (results[0].text, results[0].finish_reason) == ("bc", "stop")
    assert (results[1].text, results[1].finish_reason) == ("bcd", "length")
    assert (results[2].text, results[2].finish_reason) == ("bcdefghij", "context")


def test_requests_that_need_no_decode_are_answered_by_check() -> None:
    s, _ = make(n_ctx_seq=8)
    empty = s.check(request(0, ""))
    assert empty is not None and empty.error == "empty prompt"
    too_long = s.check(request(1, "abcdefgh"))
    assert too_long is not None and "8" in (too_long.error or "")
    nothing = s.check(request(2, "a", max_tokens=0))
    assert nothing is not None and nothing.finish_reason == "length"
    assert s.check(request(3, "a")) is None


def test_a_decode_that_fails_once_is_decoded_again_and_nothing_is_lost() -> None:
    s, ctx = make()
    s.join(request(0, "abc"))
    s.step()
    held = list(ctx.tokens(0))
    ctx.fail_next_decode = True
    finished, _ = s.step()
    assert finished == [] and ctx.tokens(0) == [*held, ord("d")]
    assert [r.text for r in run_all(s)] == ["defghijklmnopqrstuvwxyz"]


def test_a_decode_refused_for_one_sequence_ends_only_that_one() -> None:
    """A batch llama_decode refuses is decoded again one sequence at a time: the sequence it
    refuses alone ends with the error, the others go on as if alone."""
    solo, _ = make()
    solo.join(request(0, "abc", max_tokens=5))
    alone = run_all(solo)[0].text
    s, ctx = make()
    s.join(request(0, "abc", max_tokens=5))
    s.join(request(1, "xQz"))
    ctx.refuse = {ord("Q")}
    results = {r.index: r for r in run_all(s)}
    assert results[0].text == alone == "defgh" and results[0].finish_reason == "length"
    assert results[1].finish_reason == "error" and "code -1" in (results[1].error or "")
    assert ctx.tokens(1) == []  # nothing of the refused prompt stays in its cells
    assert ctx.decodes[0] == [(0, 3)]  # the shared batch failed; then each alone


def test_cancelling_a_prompt_read_raises_interrupted() -> None:
    s, _ = make()
    s.join(request(0, "abc"))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Interrupted):
        s.step(cancel)


def test_a_conversation_whose_slot_was_taken_restores_its_last_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More conversations than slots: before another prompt cuts a slot's cells, they (the
    last turn's prompt and answer) are saved, and the conversation's next turn restores
    them in whatever slot it gets, reading only what was added."""
    from infer.runtime.generation.prompt_cache import PromptCache
    from infer.runtime.models.resolve import ResolvedModel

    monkeypatch.setenv("INFER_PROMPT_CACHE_MIN_TOKENS", "4")
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"weights")
    model = FakeModel()
    ctx = model.new_context(1, 64, 16)
    s = Scheduler(model, ctx, PromptCache(ResolvedModel(weights, "m")))
    s.join(request(0, "ab", max_tokens=6))  # answered "cdefgh": 7 cells (the last unread)
    [first] = run_all(s)
    s.join(request(1, "ZZZZZZZZ", max_tokens=1))  # another user takes the only slot
    run_all(s)
    assert ctx.held[0][:8] == list(b"ZZZZZZZZ")
    turn = "ab" + first.text + "!?"  # the conversation goes on
    seq = s.join(request(2, turn, max_tokens=1))
    assert seq.reused == len("abcdefg")  # restored: its prompt and answer were not read again
    ctx.decodes.clear()
    run_all(s)
    assert ctx.decodes[0] == [(seq.slot, len(turn) - len("abcdefg"))]


def test_a_long_prompt_is_saved_once_read_and_restored_in_another_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infer.runtime.generation.prompt_cache import PromptCache
    from infer.runtime.models.resolve import ResolvedModel

    monkeypatch.setenv("INFER_PROMPT_CACHE_MIN_TOKENS", "8")
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"weights")
    cache = PromptCache(ResolvedModel(weights, "m"))
    model = FakeModel()
    first = Scheduler(model, model.new_context(2, 64, 16), cache)
    first.join(request(0, "abcdefghijklmnopqrst", max_tokens=1))
    [a] = run_all(first)
    ctx = model.new_context(2, 64, 16)
    later = Scheduler(model, ctx, cache)  # another server, say
    seq = later.join(request(1, "abcdefghijklmnopqrsXYZ", max_tokens=1))
    assert seq.n_past == seq.reused == 19  # the shared 19 tokens came from disk
    [b] = run_all(later)
    assert ctx.decodes == [[(seq.slot, 3)]]  # only "XYZ" was decoded
    assert (a.text, b.text) == ("u", "[")
    short = Scheduler(model, model.new_context(1, 64, 16), cache)
    assert short.join(request(2, "abcdefg", max_tokens=1)).reused == 0  # under the minimum
