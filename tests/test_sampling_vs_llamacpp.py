"""The sampling fields of a request do on the real model what they do in llama.cpp's own
llama-server: the same raw prompt to `infer serve` and to llama-server (built from the same
vendored llama.cpp), the same settings, the same text back. tests/test_serve_http.py checks
only that each field reaches the backend; this checks what it does there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .llama_server import running_llama_server
from .test_serve import Server

PROMPT = "Once upon a time, there was a little dragon who"
SEEDED = {"temperature": 0.9, "seed": 7}
# The prompt repeats "a" and "little"; a penalty on what was already said moves greedy decoding
# off the plain answer within a few tokens.
GREEDY = {"temperature": 0}
PENALTIES = [{"presence_penalty": 1.5}, {"frequency_penalty": 1.5}, {"repeat_penalty": 1.5}]


@pytest.fixture(scope="module")
def infer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # one thread on both sides: no OpenMP barriers for other processes to stall on this
    # shared machine, and the same arithmetic
    s = Server(
        "smollm2", "--parallel", "1", "--ctx-size", "1024", "--threads", "1",
        "--no-prompt-cache", home=tmp_path_factory.mktemp("sampling-home"),
    ).wait_ready()  # fmt: skip
    yield s.url
    assert s.stop() == 0


@pytest.fixture(scope="module")
def llama_url(bundled_model: Path) -> Iterator[str]:
    yield from running_llama_server(
        bundled_model, "-t", "1", "-c", "1024", "-np", "1", "--no-webui"
    )


def complete(url: str, **fields: Any) -> str:
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 24, **fields}
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["text"]
    assert text.strip()
    return text


@pytest.mark.parametrize(
    "fields",
    [{}, {"top_k": 3}, {"min_p": 0.3}, {"top_p": 0.5}],
    ids=["seed", "top_k", "min_p", "top_p"],
)
def test_sampled_text_is_llama_servers(infer_url: str, llama_url: str, fields: Any) -> None:
    theirs = complete(llama_url, **SEEDED, **fields)
    assert complete(infer_url, **SEEDED, **fields) == theirs
    if fields:  # the setting did something: not the answer without it
        assert theirs != complete(llama_url, **SEEDED)


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda p: next(iter(p)))
def test_a_penalty_moves_the_greedy_answer_on_both(
    infer_url: str, llama_url: str, penalty: dict[str, float]
) -> None:
    for url in (infer_url, llama_url):
        assert complete(url, **GREEDY, **penalty) != complete(url, **GREEDY), url


def test_greedy_text_is_llama_servers(infer_url: str, llama_url: str) -> None:
    assert complete(infer_url, **GREEDY) == complete(llama_url, **GREEDY)


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda p: next(iter(p)))
def test_penalised_text_is_llama_servers(
    infer_url: str, llama_url: str, penalty: dict[str, float]
) -> None:
    """Both penalise the prompt's last repeat_last_n tokens too (llama-server primes its
    penalties with the prompt: tools/server/server-context.cpp, init_sampler)."""
    assert complete(infer_url, **GREEDY, **penalty) == complete(llama_url, **GREEDY, **penalty)
