"""The scheduler's deterministic reading (runtime/generation/scheduler.py, docs/determinism.md),
on the scripted context: in a deterministic context no prompt row shares a decode with another
sequence's rows, no prompt of two tokens or more is read a single token at a time (a held
prefix of all but the last token is cut by one), and the texts are those of the usual
scheduling. The real kernels are checked end to end in test_deterministic_serve.py."""

from __future__ import annotations

import threading

import pytest

from infer.runtime import GenerateOptions, SamplingParams
from infer.runtime.errors import Interrupted
from infer.runtime.generation.scheduler import BatchRequest, Scheduler

from .fakes import FakeContext, FakeModel

GREEDY = SamplingParams(temperature=0)


def request(index: int, text: str, max_tokens: int = 5) -> BatchRequest:
    return BatchRequest(index, list(text.encode()), GREEDY, GenerateOptions(max_tokens=max_tokens))


def make(deterministic: bool, n_batch: int = 16) -> tuple[Scheduler, FakeContext]:
    model = FakeModel()
    ctx = model.new_context(4, 128, n_batch)
    ctx.deterministic = deterministic
    return Scheduler(model, ctx), ctx


def run(s: Scheduler, joins: dict[int, list[BatchRequest]]) -> dict[int, str]:
    """Step until every request is done, joining `joins[step]` before that step."""
    texts: dict[int, str] = {}
    step = 0
    while s.running() or any(k >= step for k in joins):
        for req in joins.get(step, []):
            s.join(req)
        finished, _ = s.step()
        texts.update({r.index: r.text for r in finished})
        step += 1
    return texts


JOINS = {
    0: [request(0, "abcdefghijklmnopqrstuvw", 8), request(1, "ab")],
    2: [request(2, "klmnopqrstuvwxyzabcdefghijklmnopqrs", 6)],
    3: [request(3, "cdefghijklmnopqr")],
}


def test_prompt_rows_are_decoded_apart_from_other_sequences_rows() -> None:
    s, ctx = make(True)
    texts = run(s, JOINS)
    usual, _ = make(False)
    assert texts == run(usual, JOINS)  # the same texts as the usual scheduling
    for decode in ctx.decodes:
        seqs = [seq for seq, _ in decode]
        if any(n > 1 for _, n in decode):  # a prompt chunk: alone in its decode
            assert len(seqs) == 1, ctx.decodes
    # (the usual scheduling does mix them: the check above can fail)
    mixed = make(False)
    run(mixed[0], JOINS)
    assert any(len(d) > 1 and any(n > 1 for _, n in d) for d in mixed[1].decodes)


def test_no_prompt_is_read_one_token_at_a_time() -> None:
    s, ctx = make(True, n_batch=8)
    text = "abcdefghi"  # 9 tokens in batches of 8: 7 + 2, not 8 + 1
    run(s, {0: [request(0, text, 2)]})
    assert ctx.decodes[:2] == [[(0, 7)], [(0, 2)]]
    # The same prompt again: its slot holds all but the last token; two are read.
    ctx.decodes.clear()
    run(s, {0: [request(1, text, 2)]})
    assert ctx.decodes[0] == [(0, 2)]
    usual, uctx = make(False, n_batch=8)
    run(usual, {0: [request(0, text, 2)]})
    uctx.decodes.clear()
    run(usual, {0: [request(1, text, 2)]})
    assert uctx.decodes[0] == [(0, 1)]  # what the deterministic reading avoids


def test_a_failed_later_decode_keeps_the_results_of_the_earlier_one() -> None:
    """A step is several decodes: one that is stopped (Ctrl-C on a prompt) after another
    finished a sequence still hands that result out (its slot is free already); the error
    comes with the next step. (A decode llama.cpp refuses is isolated instead: test below.)"""
    s, ctx = make(True)
    s.join(request(0, "abc", max_tokens=2))
    s.step()  # its prompt read, its first token sampled
    s.join(request(1, "klmnop"))
    stop = threading.Event()
    decode, calls = ctx.decode, []

    def stopped_second(cancel: threading.Event | None = None) -> None:
        calls.append(cancel)
        if len(calls) == 2:
            stop.set()
        decode(cancel)

    ctx.decode = stopped_second  # type: ignore[method-assign]
    finished, _ = s.step(stop)  # request 0's last token, then request 1's prompt: stopped
    assert [(r.index, r.finish_reason) for r in finished] == [(0, "length")]
    with pytest.raises(Interrupted):
        s.step()
    assert [seq.req.index for seq in s.running()] == [1]


def test_a_refused_later_decode_is_isolated() -> None:
    """A part of a deterministic step that llama.cpp refuses is decoded again a sequence at a
    time, as a whole step is: nothing fails when its sequences go through alone."""
    s, ctx = make(True)
    s.join(request(0, "abc", max_tokens=2))
    s.step()
    s.join(request(1, "klmnop", max_tokens=1))
    decode, calls = ctx.decode, []

    def failing_second(cancel: threading.Event | None = None) -> None:
        calls.append(cancel)
        ctx.fail_next_decode = len(calls) == 2
        decode(cancel)

    ctx.decode = failing_second  # type: ignore[method-assign]
    finished, _ = s.step()
    assert sorted((r.index, r.finish_reason, r.error) for r in finished) == [
        (0, "length", None),
        (1, "length", None),
    ]
