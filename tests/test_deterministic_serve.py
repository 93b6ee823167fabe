"""`infer serve --deterministic`: a temperature-0 (or seeded) answer does not depend on what
else the server decodes (runtime/generation/scheduler.py's deterministic reading, the context's
kernels: docs/determinism.md). One request is answered alone; then the same request many times
while other clients stream answers to prompts of other lengths: each time it reuses the cells
its slot holds (the rest read apart), or forks a copy of the same request still being read —
every answer is the first one token for token, log-probabilities included; and with drafts
(--draft), the answer plain decoding gives.

What differs without the mode is shown by benchmarks/determinism.py, bit for bit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .conftest import run_infer
from .test_serve import Server

SYSTEM = (
    "You are a careful assistant. You answer questions about the history of printing, of "
    "maps and of calendars in short and plain sentences, and you say so when you do not know. "
)
QUESTION = "How did the printing press change the way people kept calendars in Europe?"
# The others' prompts: other lengths, so their reading and generating share the decodes.
OTHERS = [
    "Hi!",
    "Name three rivers.",
    "Summarise this: " + "The press spread quickly through the towns of Europe. " * 12,
    "Write a haiku about maps.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("deterministic-home")
    s = Server(
        "smollm2", "--parallel", "4", "--ctx-size", "1024", "--deterministic", home=home
    ).wait_ready()
    yield s
    assert s.stop() == 0


def ask(server: Server, **extra: Any) -> tuple[str, list[tuple[str, float]]]:
    """The answer to the fixed request, and each token's log-probability."""
    answer = server.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=16,
        logprobs=True,
        top_logprobs=2,
        **({"temperature": 0} | extra),
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    return choice.message.content or "", [(t.token, t.logprob) for t in choice.logprobs.content]


class Load:
    """Clients streaming answers to the other prompts until stopped; how many they got."""

    def __init__(self, server: Server, clients: int = 3) -> None:
        self.server, self.stop, self.done = server, threading.Event(), 0
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        client = self.server.client()
        n = i
        while not self.stop.is_set():
            stream = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": OTHERS[n % len(OTHERS)]}],
                max_tokens=6 + 5 * (n % 3),
                temperature=0.7,
                stream=True,
            )
            for _ in stream:
                pass
            self.done += 1
            n += 1

    def close(self) -> int:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        return self.done


def test_a_temperature_0_answer_is_the_same_alone_and_under_load(server: Server) -> None:
    alone = ask(server)
    assert alone[0] and len(alone[1]) > 4
    load = Load(server)
    try:
        with ThreadPoolExecutor(2) as pool:  # two at once: the second forks the first's reading
            under_load = [f.result() for f in [pool.submit(ask, server) for _ in range(6)]]
    finally:
        assert load.close() > 0
    for answer in under_load:
        assert answer == alone  # the text, each token, each log-probability


def test_n_choices_and_a_seeded_sample_are_the_same_under_load(server: Server) -> None:
    seeded = {"temperature": 0.9, "seed": 1234}
    alone = ask(server, **seeded)
    load = Load(server, clients=2)
    try:
        again = ask(server, **seeded)
        forked = server.client().chat.completions.create(
            model="smollm2",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            max_tokens=16,
            temperature=0,
            n=2,
        )
    finally:
        load.close()
    assert again == alone
    greedy = ask(server)[0]
    assert [c.message.content for c in forked.choices] == [greedy, greedy]


def test_deterministic_run_without_batch_is_refused() -> None:
    r = run_infer("run", "smollm2", "hi", "--deterministic")
    assert r.returncode == 2 and b"--deterministic is for --batch" in r.stderr
    assert r.stdout == b"" and len(r.stderr.splitlines()) == 1


# A long, repetitive answer: lookup drafts are accepted, and it runs past 256 cells, where a
# token decoded alone over F16 cells would take flash attention's split-KV kernel.
COUNT = "Count from 1 to 120, the numbers separated by commas."


def counted(server: Server) -> tuple[str, list[tuple[str, float]]]:
    answer = server.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": COUNT}],
        max_tokens=300,
        temperature=0,
        logprobs=True,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    return choice.message.content or "", [(t.token, t.logprob) for t in choice.logprobs.content]


def accepted_drafts(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    line = next(x for x in metrics.splitlines() if x.startswith(ACCEPTED))
    return float(line.split()[-1])


ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"


@pytest.mark.parametrize("draft", ["lookup", "smollm2"])
def test_drafted_answers_are_the_plain_answers(
    server: Server, draft: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`--deterministic --draft`: the answer, each token and its log-probability, is the one
    plain decoding gives, alone and under load, though the drafts' verification decodes a
    sequence's rows several at a time (a lookup draft, and the model drafting for itself)."""
    plain = counted(server)
    assert len(plain[1]) > 250, plain[0]  # past 256 cells with its prompt
    home = tmp_path_factory.mktemp(f"draft-{draft}-home")
    args = ("--parallel", "4", "--ctx-size", "1024", "--deterministic")
    drafted = Server("smollm2", *args, "--draft", draft, "--draft-always", home=home)
    drafted.wait_ready()
    try:
        assert counted(drafted) == plain
        assert accepted_drafts(drafted) > 50  # the drafts were verified, many of them kept
        load = Load(drafted, clients=2)
        try:
            assert counted(drafted) == plain
        finally:
            assert load.close() > 0
    finally:
        assert drafted.stop() == 0


def test_run_batch_deterministic_answers_do_not_depend_on_parallel() -> None:
    """`infer run --batch --deterministic`: with --parallel 4 each answer (and each token's
    log-probability) is the one --parallel 1 gives, prompts of other lengths beside it."""
    prompts = [QUESTION, *OTHERS, SYSTEM + QUESTION]
    text = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)

    def batch(parallel: str) -> list[bytes]:
        r = run_infer(
            "run", "smollm2", "--batch", "-", "--parallel", parallel, "--deterministic",
            "-n", "10", "--temp", "0", "--logprobs", "2", input=text,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    alone = batch("1")
    assert len(alone) == len(prompts)
    assert batch("4") == alone
