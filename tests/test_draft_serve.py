"""Speculative decoding in `infer serve --draft lookup|MODEL`: answers identical to plain
decoding at temperature 0 (`infer run` without a draft is the reference), several requests
decoding at once. The verification itself on the scripted engine first: exact text, fewer
decodes, rejected drafts' cells cut."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infer.runtime.generation.batch_draft import DraftGate
from infer.runtime.generation.scheduler import BatchRequest, Scheduler
from infer.runtime.params import GenerateOptions, SamplingParams

from .conftest import run_infer
from .fakes import FakeModel
from .test_serve import Server

QUESTIONS = [
    "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps.",
    "Which city is the capital of France?",
    "List three colors.",
    "Write one sentence about the sea.",
]
N = 40


class ScriptedDrafter:
    """Drafts the rule's next tokens (after t comes t + 1), the `wrong`-th of them wrong."""

    name = "scripted"
    k_max = 4

    def __init__(self, wrong: int = 2) -> None:
        self.wrong, self.started = wrong, 0

    def start(self, slot: int) -> None:
        self.started += 1

    def draft(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        out = {}
        for slot, (history, k) in wanted.items():
            drafts = [history[-1] + 1 + i for i in range(k)]
            if self.wrong < k:
                drafts[self.wrong] = ord("!")
            out[slot] = drafts
        return out

    def close(self) -> None:
        pass


def run_scheduler(drafter: ScriptedDrafter | None, max_tokens: int | None = None):
    model = FakeModel()
    ctx = model.new_context(4, 64, 32)
    s = Scheduler(model, ctx, drafter=drafter)
    for i, text in enumerate(["hi", "abc", "pq"]):
        options = GenerateOptions(max_tokens=max_tokens)
        s.join(BatchRequest(i, list(text.encode()), SamplingParams(temperature=0), options))
    results = []
    while s.running():
        results += s.step()[0]
    return {r.index: (r.text, r.finish_reason, r.generated_tokens) for r in results}, ctx, s


@pytest.mark.parametrize("max_tokens", [None, 5])
def test_verified_drafts_give_the_plain_text_in_fewer_decodes(max_tokens: int | None) -> None:
    plain, plain_ctx, _ = run_scheduler(None, max_tokens)
    drafted, ctx, s = run_scheduler(ScriptedDrafter(wrong=2), max_tokens)
    assert drafted == plain
    assert len(ctx.decodes) < len(plain_ctx.decodes)
    assert 0 < s.accepted < s.drafted  # two of every three drafts hold
    for seq in range(3):  # rejected drafts never stay in the cells
        held = bytes(ctx.held[seq])
        assert b"!" not in held


def test_the_gate_measures_both_and_keeps_the_faster() -> None:
    gate = DraftGate()
    assert gate.want() is False  # a plain step is measured first
    gate.record(False, 4, 0.1)  # 40 tok/s
    assert gate.want() is True  # then a drafted one
    gate.record(True, 12, 0.2)  # 60 tok/s
    choices = [gate.want() for _ in range(8 + 16 + 32 + 1)]
    tries = [i for i, c in enumerate(choices) if not c]
    assert tries == [8, 24, 56]  # the loser is tried again after 8, 16, then 32 steps
    for _ in range(10):
        gate.record(True, 2, 0.2)  # drafts stop paying: 10 tok/s
    assert [gate.want() for _ in range(7)] == [False] * 7  # the new winner, at once
    assert [gate.want() for _ in range(8)].count(True) == 1  # and drafts tried 8 steps on


def test_a_gated_scheduler_gives_the_same_text() -> None:
    plain, _, _ = run_scheduler(None)
    model = FakeModel()
    ctx = model.new_context(4, 64, 32)
    s = Scheduler(model, ctx, drafter=ScriptedDrafter(wrong=2), gate=DraftGate())
    for i, text in enumerate(["hi", "abc", "pq"]):
        s.join(BatchRequest(i, list(text.encode()), SamplingParams(temperature=0)))
    results = []
    while s.running():
        results += s.step()[0]
    assert {r.index: (r.text, r.finish_reason, r.generated_tokens) for r in results} == plain
    assert s.drafted > 0  # it drafted in some steps


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("draft-home")


def reference(home: Path) -> dict[str, str]:
    out = {}
    for q in QUESTIONS:
        result = run_infer(
            "run", "smollm2", q, "--temperature", "0", "-n", str(N), "--no-prompt-cache",
            env={"INFER_HOME": str(home)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        out[q] = result.stdout.decode().strip()
    return out


@pytest.fixture(scope="module")
def plain(home: Path) -> dict[str, str]:
    return reference(home)


@pytest.fixture(scope="module", params=["lookup", "smollm2"])
def server(request: pytest.FixtureRequest, home: Path) -> Iterator[Server]:
    s = Server(
        "smollm2", "--draft", request.param, "--draft-always", "--parallel", "4",
        "--ctx-size", "1024", "--no-prompt-cache", home=home,
    ).wait_ready()  # fmt: skip
    yield s
    assert s.stop() == 0


def test_served_answers_equal_plain_decoding(server: Server, plain: dict[str, str]) -> None:
    def ask(question: str) -> str:
        answer = server.client().chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=N,
        )
        return (answer.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(len(QUESTIONS) * 2) as pool:
        answers = list(pool.map(ask, QUESTIONS * 2))
    assert answers == [plain[q] for q in QUESTIONS * 2]


def test_bad_drafts_are_refused_at_start(tmp_path: Path, tiny_model: Path) -> None:
    unknown = Server("smollm2", "--draft", "lookupp", home=tmp_path)
    assert unknown.proc.wait(120) == 1
    unknown.stop()
    assert any("--draft" in line and "did you mean lookup" in line for line in unknown.lines)
    other = Server("smollm2", "--draft", str(tiny_model), home=tmp_path)
    assert other.proc.wait(120) == 1
    other.stop()
    assert any("different vocabulary" in line for line in other.lines), other.lines
