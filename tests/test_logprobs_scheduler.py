"""Log-probabilities in the batch scheduler (generation/logprobs.py, generation/scheduler.py)
against the scripted engine of tests/fakes.py: the values are the log-softmax of the row the
token was sampled from; each token goes out with the text it released (held stop-string
prefixes, a UTF-8 character split over tokens), tokens inside a stop string never; nothing is
computed for a request that does not ask. The values against llama-server on a real model are
in tests/test_logprobs.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

from infer.runtime.generation.logprobs import LogprobReader, TokenLogprob, Trail
from infer.runtime.generation.loop import TextStream
from infer.runtime.generation.scheduler import BatchRequest, BatchResult, Scheduler
from infer.runtime.params import GenerateOptions, SamplingParams

from .fakes import EOG, FakeModel

GREEDY = SamplingParams(temperature=0)
# The fake's logits row: 1.0 at the token its rule predicts, 0.0 at the other 255.
PREDICTED = 1.0 - math.log(math.e + 255)
OTHER = -math.log(math.e + 255)


def run(
    text: str, stop: Sequence[str] = (), n: int = 1, **options: object
) -> tuple[list[BatchResult], list[list[tuple[str, tuple[TokenLogprob, ...]]]]]:
    model = FakeModel()
    s = Scheduler(model, model.new_context(4, 64, 16))
    pieces: list[list[tuple[str, tuple[TokenLogprob, ...]]]] = [[] for _ in range(n)]
    parent = None
    for i in range(n):
        opts = GenerateOptions(stop=list(stop), **options)  # type: ignore[arg-type]
        req = BatchRequest(i, list(text.encode()), GREEDY, opts)

        def sink(t: str, lp: Sequence[TokenLogprob], i: int = i) -> None:
            pieces[i].append((t, tuple(lp)))

        seq = s.join(req, sink, fork_of=parent)
        parent = parent or seq
    done: list[BatchResult] = []
    while s.running():
        done.extend(s.step()[0])
    return sorted(done, key=lambda r: r.index), pieces


def test_each_token_has_the_log_softmax_of_its_row_and_the_top_alternatives() -> None:
    [result], [pieces] = run("hi", max_tokens=4, logprobs=2)
    assert result.text == "jklm"
    assert result.logprobs is not None
    assert [t.text for t in result.logprobs] == ["j", "k", "l", "m"]
    assert [t.raw for t in result.logprobs] == [b"j", b"k", b"l", b"m"]
    for t in result.logprobs:
        assert math.isclose(t.logprob, PREDICTED, abs_tol=1e-6)
        # most likely first; the 255 equal ones by token id (0, the fake's end of generation)
        assert [a.token for a in t.top] == [t.token, EOG]
        assert math.isclose(t.top[0].logprob, PREDICTED, abs_tol=1e-6)
        assert math.isclose(t.top[1].logprob, OTHER, abs_tol=1e-6)
    # streamed: every piece of text with exactly its own tokens
    assert [(text, [t.text for t in lp]) for text, lp in pieces] == [
        ("j", ["j"]),
        ("k", ["k"]),
        ("l", ["l"]),
        ("m", ["m"]),
    ]


def test_zero_alternatives_still_give_the_tokens_own_values() -> None:
    [result], _ = run("hi", max_tokens=2, logprobs=0)
    assert result.logprobs is not None and len(result.logprobs) == 2
    assert all(t.top == () for t in result.logprobs)


def test_nothing_is_computed_unless_asked() -> None:
    [result], [pieces] = run("hi", max_tokens=3)
    assert result.logprobs is None
    assert pieces == [("j", ()), ("k", ()), ("l", ())]


def test_text_held_for_a_stop_string_goes_out_with_its_tokens() -> None:
    # "lmX" might begin at "l": l and m are held until n shows it does not.
    [result], [pieces] = run("hi", stop=["lmX"], max_tokens=6, logprobs=1)
    assert result.text == "jklmno"
    assert [(text, [t.text for t in lp]) for text, lp in pieces] == [
        ("j", ["j"]),
        ("k", ["k"]),
        ("lmn", ["l", "m", "n"]),
        ("o", ["o"]),
    ]


def test_tokens_of_the_stop_string_are_dropped() -> None:
    [result], [pieces] = run("hi", stop=["mno"], logprobs=1)
    assert (result.text, result.finish_reason, result.stop) == ("jkl", "stop", "mno")
    assert result.logprobs is not None
    assert [t.text for t in result.logprobs] == ["j", "k", "l"]
    assert "".join(t for t, _ in pieces) == "jkl"
    assert [t.text for _, lp in pieces for t in lp] == ["j", "k", "l"]


def test_forks_of_one_prompt_each_have_their_values() -> None:
    results, _ = run("hi", n=2, max_tokens=3, logprobs=1)
    for r in results:
        assert r.logprobs is not None
        assert [t.text for t in r.logprobs] == ["j", "k", "l"]


def test_a_character_split_over_tokens_belongs_to_the_token_that_completes_it() -> None:
    """The trail on its own, fed as the scheduler feeds it: "é" is two tokens here."""
    import array

    model = FakeModel()
    trail, stream = Trail(LogprobReader(model, 1)), TextStream([])
    row = array.array("f", [0.0] * 256)
    released = []
    for raw in (b"a", "é".encode()[:1], "é".encode()[1:], b"b"):
        out = stream.feed(raw)
        trail.add(row, raw[0], raw, stream.decoded)
        released.append((out, [(t.text, t.raw) for t in trail.release(out)]))
    assert released == [
        ("a", [("a", b"a")]),
        ("", []),
        ("é", [("", b"\xc3"), ("é", b"\xa9")]),
        ("b", [("b", b"b")]),
    ]
    # the texts join to the answer, the bytes to its bytes
    assert "".join(t.text for t in trail.tokens) == "aéb"
    assert b"".join(t.raw for t in trail.tokens) == "aéb".encode()
    # an alternative's text leaves an unfinished character out, as llama-server does
    row[0xC3] = 5.0
    logprob, [top] = LogprobReader(model, 1).read(row, 0xC3)
    assert (top.token, top.text, top.raw, top.logprob) == (0xC3, "", b"\xc3", logprob)
