"""Shared beginnings read once (runtime/generation/scheduler.py): sequences that start with the
same tokens copy the cells of the one that read them (llama.cpp's llama_memory_seq_cp) instead
of reading them again — in `infer run --batch --parallel N` and in `infer serve`. The answers at
temperature 0 stay those of one prompt at a time."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, load
from infer.runtime.api import prompt_tokens
from infer.runtime.generation import scheduler as scheduler_module
from infer.runtime.generation.batch import BatchDecoder
from infer.runtime.generation.scheduler import BatchRequest, BatchResult, Scheduler
from infer.runtime.llama.model import LlamaModel
from infer.runtime.llama.vision import Span
from infer.runtime.models.resolve import resolve

from .conftest import run_infer
from .fakes import FakeContext, FakeModel
from .test_serve import Server

GREEDY = SamplingParams(temperature=0)
PREFIX = "You are a careful assistant. "  # 29 tokens in the fake's byte vocabulary


def request(index: int, text: str, max_tokens: int = 6, **kw: Any) -> BatchRequest:
    return BatchRequest(
        index, list(text.encode()), GREEDY, GenerateOptions(max_tokens=max_tokens), **kw
    )


def make(n_seq: int = 4) -> tuple[Scheduler, FakeContext]:
    model = FakeModel()
    ctx = model.new_context(n_seq, 128, 64)
    return Scheduler(model, ctx), ctx


def run_all(s: Scheduler) -> tuple[dict[int, str], int]:
    """Every running sequence to its end: the texts by index, and the prompt tokens read."""
    texts, read = {}, 0
    while s.running():
        finished, counts = s.step()
        read += counts.prompt_tokens
        texts.update({r.index: r.text for r in finished})
    return texts, read


def test_prompts_admitted_together_read_the_shared_beginning_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tails = ["a", "bb", "ccc"]
    s, ctx = make()
    for i, tail in enumerate(tails):
        s.join(request(i, PREFIX + tail))
    shared, read = run_all(s)
    assert read == len(PREFIX) + sum(len(t) for t in tails)  # the prefix once
    assert {dst for _, dst in ctx.copies} == {1, 2}

    monkeypatch.setattr(scheduler_module, "MIN_SHARE", 10**9)  # sharing off: the reference
    s, ctx = make()
    for i, tail in enumerate(tails):
        s.join(request(i, PREFIX + tail))
    alone, read_alone = run_all(s)
    assert read_alone == 3 * len(PREFIX) + sum(len(t) for t in tails) and not ctx.copies
    assert shared == alone


def test_a_newcomer_copies_a_generating_sequences_cells_at_once() -> None:
    s, ctx = make()
    s.join(request(0, PREFIX + "a", max_tokens=20))
    s.step()
    s.step()
    newcomer = s.join(request(1, PREFIX + "b"))
    assert ctx.copies == [(0, 1)] and newcomer.n_past == len(PREFIX) and newcomer.parent is None
    s.step()
    assert (1, 1) in ctx.decodes[-1]  # only its own last token read


def test_no_sharing_across_adapter_scales_or_below_the_minimum() -> None:
    s, ctx = make()
    s.join(request(0, PREFIX + "a"))
    other = s.join(request(1, PREFIX + "b", lora=(0.5,)))
    short = s.join(request(2, PREFIX[:5] + "c"))
    assert other.parent is None and short.parent is None
    run_all(s)
    assert not ctx.copies


def test_only_text_before_the_first_media_chunk_is_shared() -> None:
    class MediaPrompt(list[int]):
        spans: dict[int, Span]

    s, _ = make()
    s.join(request(0, PREFIX + "a"))
    tokens = MediaPrompt((PREFIX + "b").encode())
    tokens.spans = {20: Span(chunk=None, n=5, owner=None, kind="image")}
    seq = s.join(BatchRequest(1, tokens, GREEDY, GenerateOptions(max_tokens=4)))
    assert seq.parent is not None and seq.share == 20


def test_a_cancelled_donor_lets_its_waiters_read_for_themselves() -> None:
    s, ctx = make()
    donor = s.join(request(0, PREFIX + "a"))
    waiter = s.join(request(1, PREFIX + "b"))
    assert waiter.parent is donor
    s.cancel(donor)
    texts, read = run_all(s)
    assert read == len(PREFIX) + 1 and not ctx.copies
    s2, _ = make()
    s2.join(request(1, PREFIX + "b"))
    assert texts == run_all(s2)[0]


# llama.cpp: a copy between the split cache's streams, then the copy's tail cut


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Iterator[LlamaModel]:
    model = load(resolve(str(tiny_model)), LoadOptions(ctx_size=256))
    assert isinstance(model, LlamaModel)
    yield model
    model.close()


def test_shared_cells_in_llama_cpp_give_the_answers_of_one_at_a_time(tiny: LlamaModel) -> None:
    texts = ["x" * 40 + tail for tail in ("a", "fox", "hello", "what?")]
    requests = [
        BatchRequest(
            i, prompt_tokens(tiny, [Message("user", t)]), GREEDY, GenerateOptions(max_tokens=10)
        )
        for i, t in enumerate(texts)
    ]
    answers: dict[int, dict[int, BatchResult]] = {}
    read: dict[int, int] = {}
    for parallel in (1, 4):
        with BatchDecoder(tiny, parallel, 256) as decoder:
            answers[parallel] = {r.index: r for r in decoder.run(requests)}
            read[parallel] = decoder.stats.prompt_tokens
    assert {i: r.text for i, r in answers[4].items()} == {i: r.text for i, r in answers[1].items()}
    assert read[4] <= read[1] < sum(len(r.tokens) for r in requests)


def test_a_restore_into_a_sequence_with_a_copy_pending_is_a_bug(
    tiny: LlamaModel, tmp_path: Path
) -> None:
    """llama.cpp moves a cross-stream copy's data at the next decode: a state written into
    either sequence before then would be overwritten or copied out."""
    prompt = prompt_tokens(tiny, [Message("user", "x" * 40)])
    with tiny.new_context(3, 256, 128) as ctx:
        ctx.add(0, prompt, 1)
        ctx.decode()
        assert ctx.save(0, tmp_path / "state") > 0
        ctx.copy(0, 1)
        for seq in (0, 1):
            with pytest.raises(ValueError, match="copy"):
                ctx.restore(seq, tmp_path / "state", prompt)
        assert ctx.restore(2, tmp_path / "state", prompt)


# The user's view: the bundled model, the real command and server

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Name a planet in our solar system.",
    "What language is spoken in Brazil?",
]


def batch(path: Path, parallel: int) -> tuple[list[str], int]:
    run = run_infer(
        "run", "smollm2", "--batch", str(path), "--parallel", str(parallel),
        "--temperature", "0", "-n", "12", "--stats",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    import json

    texts = [json.loads(line)["text"] for line in run.stdout.decode().splitlines()]
    match = re.search(r"prompt (\d+) tok", run.stderr.decode())
    assert match, run.stderr
    return texts, int(match.group(1))


def test_batch_parallel_8_reads_what_parallel_1_reads_and_answers_the_same(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("\n".join(QUESTIONS) + "\n")
    one, read_one = batch(path, 1)
    eight, read_eight = batch(path, 8)
    assert eight == one
    # Each prompt is the template's ~30-token system prompt and a question of ~8: read alone,
    # eight would be ~300 tokens.
    assert read_eight <= read_one + len(QUESTIONS) and read_eight < 200


def test_server_concurrent_requests_sharing_a_system_prompt_answer_as_one_at_a_time(
    tmp_path: Path,
) -> None:
    system = "You answer in one short sentence. " * 6
    server = Server("smollm2", "--parallel", "4", "--ctx-size", "1024", home=tmp_path).wait_ready()
    try:
        client = server.client()

        def ask(question: str) -> str:
            answer = client.chat.completions.create(
                model="smollm2",
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                temperature=0,
                max_tokens=12,
            )
            return answer.choices[0].message.content or ""

        # Not the boiling point: with this system prompt its answer is a near-tie that the
        # rounding of any batch layout flips (`infer run --batch --parallel 1` differs from
        # `infer run` on it without any sharing).
        # Near-ties left out: their greedy answers flip with the batch's arithmetic, shared
        # prefix or not ("1.80"/"1.83" degrees, "8"/"eight" legs), which is issue #25's
        # deterministic mode, not sharing.
        asked = [q for q in QUESTIONS if "boiling" not in q and "spider" not in q][:4]
        together: dict[str, str] = {}
        threads = [
            threading.Thread(target=lambda q=q: together.__setitem__(q, ask(q))) for q in asked
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        alone = {q: ask(q) for q in asked}
        assert together == alone and all(alone.values())
    finally:
        assert server.stop() == 0


def test_n_choices_of_a_prompt_that_shares_a_beginning() -> None:
    """The first choice waits for the donor's cells, reads its own tail, and its forks copy it."""
    s, ctx = make()
    s.join(request(0, PREFIX + "a"))
    first = s.join(request(1, PREFIX + "bb"))
    second = s.join(request(2, PREFIX + "bb"), fork_of=first)
    assert first.parent is not None and second.parent is first
    texts, read = run_all(s)
    assert read == len(PREFIX) + 1 + 2
    assert texts[1] == texts[2] and len(ctx.copies) == 2


def test_the_servers_worker_shares_a_beginning_between_jobs() -> None:
    """The server's decode thread on the scripted engine: jobs submitted together copy the
    cells of the first for their shared system prompt, and answer as alone."""
    import asyncio

    from infer.runtime.server.backend import Piece
    from infer.runtime.server.worker import ModelWorker, ServedJob

    async def answers(prompts: list[str]) -> tuple[list[str], FakeContext]:
        model = FakeModel()
        ctx = model.new_context(3, 64, 16)
        w = ModelWorker("fake", model, ctx, print)
        loop = asyncio.get_running_loop()
        try:
            jobs = [
                ServedJob("fake", list(p.encode()), [GREEDY], GenerateOptions(max_tokens=4), loop)
                for p in prompts
            ]
            for j in jobs:
                w.submit(j)
            texts = []
            for j in jobs:
                texts.append("".join([e.text async for e in j.events() if isinstance(e, Piece)]))
            return texts, ctx
        finally:
            w.stop()

    prompts = [PREFIX + tail for tail in ("a", "bb", "ccc")]
    together, ctx = asyncio.run(answers(prompts))
    assert {dst for _, dst in ctx.copies} == {1, 2}
    alone = [asyncio.run(answers([p]))[0][0] for p in prompts]
    assert together == alone


def test_the_same_prompt_twice_is_read_once_and_both_sample_at_once() -> None:
    s, ctx = make()
    first = s.join(request(0, PREFIX + "a"))
    second = s.join(request(1, PREFIX + "a"))
    assert second.parent is first and second.share == len(PREFIX) + 1
    _, counts = s.step()
    assert counts.prompt_tokens == len(PREFIX) + 1 and counts.generated_tokens == 2
    texts, _ = run_all(s)
    assert texts[0] == texts[1] and ctx.copies == [(0, 1)]


def test_a_newcomer_copies_a_generating_sequence_in_llama_cpp(tiny: LlamaModel) -> None:
    """The copy made at once from a sequence that is generating (its cells hold the prompt and
    what it wrote): the newcomer's answer is the one it gets alone."""
    options = GenerateOptions(max_tokens=8)
    first = prompt_tokens(tiny, [Message("user", "x" * 40 + "a")])
    second = prompt_tokens(tiny, [Message("user", "x" * 40 + "fox")])

    def answer(donor: list[int] | None) -> tuple[str, int]:
        """The second prompt's answer (joining after the donor generated 3 tokens), and the
        prompt tokens it did not read."""
        with tiny.new_context(2, 256, 128) as ctx:
            s = Scheduler(tiny, ctx)
            if donor is not None:
                s.join(BatchRequest(0, donor, GREEDY, options))
                for _ in range(3):
                    s.step()
            newcomer = s.join(BatchRequest(1, second, GREEDY, options))
            copied = newcomer.reused
            results = []
            while s.running():
                results += s.step()[0]
        return next(r.text for r in results if r.index == 1), copied

    shared, copied = answer(first)
    assert 16 <= copied < len(second)  # the beginning copied, the rest read
    alone, nothing = answer(None)
    assert shared == alone and nothing == 0
