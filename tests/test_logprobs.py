"""Log-probabilities end to end: `infer serve` and llama.cpp's own llama-server on the bundled
SmolLM2 (both 2 slots x 1024 cells), asked the same requests at temperature 0 through real
sockets: the same tokens, values within 1e-3, the same top alternatives; the `openai` client
reading them whole and streamed, on chat and completions; the `ollama` client on its door; the
400s for bad values. (The scheduler's bookkeeping is in test_logprobs_scheduler.py, the
HTTP field checks against the scripted backend in test_serve_http.py / test_ollama_http.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai.types.responses import Response, ResponseOutputText

from .llama_server import post_json as post
from .llama_server import running_infer_server, running_llama_server
from .test_serve import Server

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three fruits.",
]
TOL = 1e-3


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logprobs-home")


@pytest.fixture(scope="module")
def infer(home: Path) -> Iterator[Server]:
    yield from running_infer_server(home)


@pytest.fixture(scope="module")
def llama(bundled_model: Path) -> Iterator[str]:
    """llama-server from the vendored source (benchmarks/vs_llamacpp.py builds it once), on the
    same model with the same slots and cells per slot."""
    yield from running_llama_server(bundled_model, "-c", "2048", "-np", "2")


def chat_body(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 24,
        **extra,
    }


def without_end(entries: list[dict[str, Any]], finish: str) -> list[dict[str, Any]]:
    """llama-server lists the end-of-generation token too (empty text); infer does not: it is
    no part of the answer's text."""
    if finish == "stop" and entries and entries[-1]["token"] == "" and not entries[-1]["bytes"]:
        return entries[:-1]
    return entries


def assert_same_entries(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [e["token"] for e in ours] == [e["token"] for e in theirs]
    assert [e["id"] for e in ours] == [e["id"] for e in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["bytes"] == b["bytes"]
        assert abs(a["logprob"] - b["logprob"]) < TOL, (a, b)
        assert [t["id"] for t in a["top_logprobs"]] == [t["id"] for t in b["top_logprobs"]]
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]
        for x, y in zip(a["top_logprobs"], b["top_logprobs"], strict=True):
            assert abs(x["logprob"] - y["logprob"]) < TOL, (x, y)


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_logprobs_equal_llama_servers(infer: Server, llama: str, question: str) -> None:
    body = chat_body(question, logprobs=True, top_logprobs=5)
    ours = post(infer.url, "/v1/chat/completions", body)["choices"][0]
    theirs = post(llama, "/v1/chat/completions", body)["choices"][0]
    assert ours["message"]["content"] == theirs["message"]["content"]
    entries = ours["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == ours["message"]["content"]
    assert all(len(e["top_logprobs"]) == 5 for e in entries)
    assert_same_entries(
        entries, without_end(theirs["logprobs"]["content"], theirs["finish_reason"])
    )
    # the sampled token is the most likely one at temperature 0
    assert all(e["top_logprobs"][0]["id"] == e["id"] for e in entries)


def test_completion_logprobs_equal_llama_servers(infer: Server, llama: str) -> None:
    body = {"model": "smollm2", "prompt": "The three primary colours are", "temperature": 0,
            "max_tokens": 12, "logprobs": 3}  # fmt: skip
    ours = post(infer.url, "/v1/completions", body)["choices"][0]
    theirs = post(llama, "/v1/completions", body)["choices"][0]
    assert ours["text"] == theirs["text"]
    assert_same_entries(ours["logprobs"]["content"], theirs["logprobs"]["content"])


def test_the_openai_client_reads_chat_logprobs_whole_and_streamed(infer: Server) -> None:
    client = infer.client()
    messages: Any = [{"role": "user", "content": QUESTIONS[1]}]
    whole = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20, logprobs=True,
        top_logprobs=3,
    )  # fmt: skip
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert whole.usage and len(tokens) == whole.usage.completion_tokens
    assert all(t.logprob <= 0 and t.bytes and len(t.top_logprobs) == 3 for t in tokens)
    assert b"".join(bytes(t.bytes or []) for t in tokens).decode() == choice.message.content

    stream = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20, logprobs=True,
        top_logprobs=3, stream=True,
    )  # fmt: skip
    text, streamed = "", []
    for chunk in stream:
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        if c.delta.content:  # every piece of text comes with exactly its own tokens
            assert c.logprobs is not None and c.logprobs.content
            assert "".join(t.token for t in c.logprobs.content) == c.delta.content
            text += c.delta.content
            streamed.extend(c.logprobs.content)
    assert text == choice.message.content
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens], abs=1e-6)

    plain = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=5
    )
    assert plain.choices[0].logprobs is None


def test_the_openai_client_reads_completion_logprobs(infer: Server) -> None:
    client = infer.client()
    prompt = "Once upon a time"
    whole = client.completions.create(
        model="smollm2", prompt=prompt, temperature=0, max_tokens=10, logprobs=2
    )
    lp = whole.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.text_offset is not None
    text = whole.choices[0].text
    assert "".join(lp.tokens) == text
    assert [
        text[o : o + len(t)] for o, t in zip(lp.text_offset, lp.tokens, strict=True)
    ] == lp.tokens
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert all(lp.top_logprobs[i][t] == lp.token_logprobs[i] for i, t in enumerate(lp.tokens))

    streamed: list[str] = []
    offsets: list[int] = []
    for chunk in client.completions.create(
        model="smollm2", prompt=prompt, temperature=0, max_tokens=10, logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed.extend(chunk.choices[0].logprobs.tokens or [])
            offsets.extend(chunk.choices[0].logprobs.text_offset or [])
    assert streamed == lp.tokens and offsets == lp.text_offset


def test_bad_values_are_400s_naming_the_field(infer: Server) -> None:
    client = infer.client()
    messages: Any = [{"role": "user", "content": "hi"}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="smollm2", messages=messages, **extra)
        assert param_of(e.value) == param
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2", prompt="x", logprobs=1000)
    assert param_of(e.value) == "logprobs"
    r = httpx.post(infer.url + "/api/chat", json={**chat_body("hi"), "logprobs": True,
                                                 "top_logprobs": 30})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"].startswith("top_logprobs: ")


def test_the_ollama_client_reads_logprobs(infer: Server) -> None:
    client = ollama.Client(host=infer.url)
    options = {"temperature": 0, "num_predict": 12}
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    answer = client.chat(
        model="smollm2", messages=messages, options=options, logprobs=True, top_logprobs=2
    )
    assert answer.logprobs
    assert "".join(t.token for t in answer.logprobs) == answer.message.content
    assert all(t.top_logprobs and len(t.top_logprobs) == 2 for t in answer.logprobs)
    # the same values as the OpenAI door gives for the same request
    oai = post(infer.url, "/v1/chat/completions", chat_body(
        QUESTIONS[0], max_tokens=12, logprobs=True, top_logprobs=2))  # fmt: skip
    assert [t.logprob for t in answer.logprobs] == pytest.approx(
        [e["logprob"] for e in oai["choices"][0]["logprobs"]["content"]], abs=1e-6
    )
    parts = list(client.generate(model="smollm2", prompt=QUESTIONS[0], options=options,
                                 logprobs=True, stream=True))  # fmt: skip
    text = "".join(str(p.response) for p in parts)
    tokens = [t for p in parts for t in (p.logprobs or [])]
    assert "".join(t.token for t in tokens) == text == answer.message.content
    assert all(not t.top_logprobs for t in tokens)  # top_logprobs 0: the tokens' own only
    plain = client.chat(model="smollm2", messages=messages, options=options)
    assert plain.logprobs is None


def param_of(error: openai.BadRequestError) -> object:
    """The `param` of an OpenAI error body (the client types the body as object)."""
    return error.body.get("param") if isinstance(error.body, dict) else None


def output_text(response: Response) -> ResponseOutputText:
    """A Responses answer's first output part, which must be its message's text."""
    message = response.output[0]
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text"
    return part


def test_the_openai_client_reads_responses_logprobs(infer: Server) -> None:
    client = infer.client()
    asked: Any = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}
    whole = client.responses.create(
        model="smollm2", input=QUESTIONS[2], temperature=0, max_output_tokens=12, **asked
    )
    part = output_text(whole)
    assert part.type == "output_text" and part.logprobs
    assert "".join(t.token for t in part.logprobs) == part.text
    assert all(len(t.top_logprobs) == 2 for t in part.logprobs)
    # the chat door's values for the same conversation
    chat = post(infer.url, "/v1/chat/completions", chat_body(
        QUESTIONS[2], max_tokens=12, logprobs=True, top_logprobs=2))  # fmt: skip
    assert [t.logprob for t in part.logprobs] == pytest.approx(
        [e["logprob"] for e in chat["choices"][0]["logprobs"]["content"]], abs=1e-6
    )
    streamed = []
    for event in client.responses.create(
        model="smollm2", input=QUESTIONS[2], temperature=0, max_output_tokens=12, stream=True,
        **asked,
    ):  # fmt: skip
        if event.type == "response.output_text.delta":
            assert "".join(t.token for t in event.logprobs) == event.delta
            streamed.extend(event.logprobs)
        if event.type == "response.output_text.done":
            assert [t.token for t in event.logprobs] == [t.token for t in part.logprobs]
    assert [t.token for t in streamed] == [t.token for t in part.logprobs]
    plain = client.responses.create(model="smollm2", input="hi", max_output_tokens=3)
    assert output_text(plain).logprobs == []
