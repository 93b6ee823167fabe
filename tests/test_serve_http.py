"""The HTTP side of `infer serve` against a scripted backend (tests/fake_backend.py), served by
a real uvicorn on a free loopback port and driven with httpx and the real `openai` client.
Real-model end-to-end tests are in tests/test_serve.py."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from infer.runtime.errors import InferError, TemplateError
from infer.runtime.server.app import HttpSettings, create_app
from infer.runtime.server.backend import Overloaded, PromptTooLong
from infer.runtime.server.cors import parse_origins
from infer.runtime.server.runner import bind

from .fake_backend import MODEL, FakeBackend, Script

INFER = shutil.which("infer", path=str(Path(sys.executable).parent))


class Served:
    """A running server: its URL, backend and access-log lines."""

    def __init__(self, url: str, backend: FakeBackend, log: list[str], port: int) -> None:
        self.url, self.backend, self.log, self.port = url, backend, log, port

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kw)

    def openai(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=10)


@contextmanager
def serving(backend: FakeBackend | None = None, **settings: Any) -> Iterator[Served]:
    backend = backend or FakeBackend()
    log: list[str] = []
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(backend, HttpSettings(log=log.append, **settings))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    while not backend.started and backend.start_delay_s < 1:
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", backend, log, port)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_script(request: pytest.FixtureRequest) -> None:
    if "served" in request.fixturenames:
        s: Served = request.getfixturevalue("served")
        s.backend.script = Script()
        s.backend.raise_on_submit = None


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Capital of France?"}],
        **extra,
    }


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, each event checked to end with a blank line."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_alive(s: Served) -> None:
    with s.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- the openai client ----------------------------------------------------------------------
def test_chat_with_the_openai_client(served: Served) -> None:
    answer = served.openai().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Which city is the capital of France?"},
        ],
        temperature=0,
        max_tokens=32,
    )
    assert answer.choices[0].message.content == "Paris is the capital."
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("chatcmpl-") and answer.model == MODEL
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 4)
    assert answer.usage.total_tokens == 11
    model, request = served.backend.submits[-1]
    assert model == MODEL
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "Be brief."),
        ("user", "Which city is the capital of France?"),
    ]
    assert request.sampling == {"temperature": 0.0} and request.max_tokens == 32


def test_chat_stream_with_the_openai_client(served: Served) -> None:
    stream = served.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital."
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_completions_with_the_openai_client(served: Served) -> None:
    client = served.openai()
    answer = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    assert answer.choices[0].text == "Paris is the capital."
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.usage is not None and answer.usage.total_tokens == 11
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="x", stream=True)
        if c.choices
    )
    assert text == "Paris is the capital."


def test_completions_default_to_16_tokens_like_openai(served: Served) -> None:
    served.openai().completions.create(model=MODEL, prompt="x")
    assert served.backend.submits[-1][1].max_tokens == 16
    assert served.backend.submits[-1][1].prompt == "x"


def test_completions_list_of_prompts_and_n(served: Served) -> None:
    with served.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"], "n": 2})
    body = r.json()
    assert r.status_code == 200, body
    assert [ch["index"] for ch in body["choices"]] == [0, 1, 2, 3]
    assert all(ch["text"] == "Paris is the capital." for ch in body["choices"])
    # the prompt counted once per distinct prompt, not per choice
    assert body["usage"] == {"prompt_tokens": 14, "completion_tokens": 16, "total_tokens": 30}
    prompts = [req.prompt for _, req in served.backend.submits[-2:]]
    assert prompts == ["a", "b"]


def test_completions_stream_of_a_list_of_prompts(served: Served) -> None:
    with served.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"], "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts = {0: "", 1: ""}
    for ch in chunks:
        texts[ch["choices"][0]["index"]] += ch["choices"][0]["text"]
    assert texts == {0: "Paris is the capital.", 1: "Paris is the capital."}
    finished = [ch["choices"][0]["index"] for ch in chunks if ch["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_n_choices_and_usage_counts_the_prompt_once(served: Served) -> None:
    answer = served.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage is not None and answer.usage.prompt_tokens == 7
    assert answer.usage.completion_tokens == 12


# --- SSE framing, raw -----------------------------------------------------------------------
def test_sse_framing(served: Served) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, n=2)
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({ch["id"] for ch in chunks}) == 1
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    for index in (0, 1):
        mine = [
            ch["choices"][0]
            for ch in chunks
            if ch["choices"] and ch["choices"][0]["index"] == index
        ]
        # content null, as llama-server and OpenAI's clients read it (llama.cpp's own client
        # takes a content delta to be non-empty text)
        assert mine[0]["delta"] == {"role": "assistant", "content": None}
        text = "".join(m["delta"].get("content") or "" for m in mine)
        assert text == "Paris is the capital."
        assert [m["finish_reason"] for m in mine][-1] == "stop"
        assert all(m["finish_reason"] is None for m in mine[:-1])
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}


def test_stream_without_include_usage_has_no_usage_chunk(served: Served) -> None:
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(stream=True))
    chunks = sse_events(r.text)[:-1]
    assert all(ch["choices"] for ch in chunks)


def test_cancelled_answer_finishes_with_length(served: Served) -> None:
    served.backend.script = Script(reason="cancelled")
    answer = served.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    assert answer.choices[0].finish_reason == "length"


# --- validation -----------------------------------------------------------------------------
def _msgs(*items: Any) -> dict[str, Any]:
    return {"messages": list(items)}


def _fn(name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **fields}}


INVALID_CHAT = [
    ({"model": ["x"]}, "model"),
    ({"model": 3}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    (_msgs({"role": "wizard", "content": "x"}), "messages[0].role"),
    (_msgs({"content": "x"}), "messages[0].role"),
    (_msgs({"role": "user", "content": 5}), "messages[0].content"),
    (_msgs({"role": "user", "content": None}), "messages[0].content"),
    (_msgs({"role": "user", "content": [{"type": "text", "text": 1}]}), "messages[0].content[0]"),
    (_msgs({"role": "tool", "content": "x"}), "messages[0].tool_call_id"),
    (_msgs({"role": "function", "content": "x", "name": "f"}), "messages[0].role"),
    (_msgs("hi"), "messages[0]"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 100.5}, "temperature"),  # the table's range: 0..100, as for --temperature
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": -1}, "min_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2**31}, "top_k"),
    ({"repeat_last_n": -2}, "repeat_last_n"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"seed": -1}, "seed"),
    ({"continue_final_message": True}, "continue_final_message"),
    ({"add_generation_prompt": False}, "add_generation_prompt"),
    ({"seed": 2**40}, "seed"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"n": 5}, "n"),  # over the backend's 4 slots: TooManyChoices
    ({"stop": 3}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "include_usage"),
    ({"logprobs": 1}, "logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"logprobs": False, "top_logprobs": 0}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    # the runtime's one validator (tool_calls.definitions), its refusal mapped to the field
    ({"tools": [_fn("f"), _fn("f")]}, "tools[1].function.name"),
    ({"tools": [_fn("f"), _fn("g", parameters={"type": "array"})]}, "tools[1].function.parameters"),
    ({"tools": [_fn("f", description=3)]}, "tools[0].function.description"),
    ({"tools": [_fn("f", parameters={"properties": {"a": 3}})]}, "tools[0].function.parameters"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 1}},
            }
        },
        "response_format",
    ),
    # logit_bias: OpenAI's {"<token id>": -100..100} (the ids' vocabulary check needs a model:
    # test_logit_bias.py)
    ({"logit_bias": {"50256": -101}}, "logit_bias"),
    ({"logit_bias": {"hello": 1}}, "logit_bias"),
    ({"logit_bias": {"5": "high"}}, "logit_bias"),
    ({"logit_bias": {"-3": 1}}, "logit_bias"),
    ({"logit_bias": [[5, 1]]}, "logit_bias"),
]


@pytest.mark.parametrize(("fields", "param"), INVALID_CHAT, ids=[p for _, p in INVALID_CHAT])
def test_invalid_chat_field_is_a_400_naming_it(
    served: Served, fields: dict[str, Any], param: str
) -> None:
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(**fields))
    error = error_of(r, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert_alive(served)


def test_temperature_nan_and_infinity(served: Served) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(chat_body()).replace("}]", '}], "temperature": ' + literal, 1)
        with served.client() as c:
            r = c.post("/v1/chat/completions", content=raw)
        assert error_of(r, 400)["param"] == "temperature"


def test_an_image_part_that_is_no_image_names_the_part(served: Served) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    with served.client() as c:
        r = c.post(
            "/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": content}])
        )
    error = error_of(r, 400)
    assert "not an image" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"


INVALID_COMPLETION = [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1, 2], "a"]}, "prompt"),
    ({"prompt": ["a", 2]}, "prompt"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "end"}, "suffix"),
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": 101}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"max_tokens": -3}, "max_tokens"),
]


@pytest.mark.parametrize(
    ("fields", "param"), INVALID_COMPLETION, ids=[p for _, p in INVALID_COMPLETION]
)
def test_invalid_completion_field(served: Served, fields: dict[str, Any], param: str) -> None:
    with served.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", **fields})
    assert error_of(r, 400)["param"] == param
    assert_alive(served)


def test_accepted_fields_are_mapped(served: Served) -> None:
    # Each field reaches the backend; what it does on a real model, against llama-server, is
    # tests/test_sampling_vs_llamacpp.py's.
    body = chat_body(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
            {"role": "assistant", "content": "ok", "name": "bot"},
            {"role": "user", "content": "again"},
        ],
        max_completion_tokens=9, max_tokens=100, temperature=2, top_p=0.5, seed=42, stop="END",
        presence_penalty=0.5, frequency_penalty=-0.5, top_k=10, min_p=0.1, repeat_penalty=1.1,
        repeat_last_n=32, logprobs=False, tool_choice="none", response_format={"type": "text"},
        logit_bias={}, user="someone", store=False, metadata={"a": "b"}, some_future_field={"x": 1},
    )  # fmt: skip
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    request = served.backend.submits[-1][1]
    assert [m.role for m in request.messages or []] == ["system", "user", "assistant", "user"]
    assert (request.messages or [])[1].content == "ab"
    assert request.max_tokens == 9 and request.stop == ["END"] and request.n == 1
    assert request.sampling == {
        "temperature": 2.0, "top_p": 0.5, "seed": 42, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "top_k": 10, "min_p": 0.1, "repeat_penalty": 1.1,
        "repeat_last_n": 32,
    }  # fmt: skip


def test_malformed_json(served: Served) -> None:
    for raw in (b"{", b"not json", b"\xff\xfe", b"[1, 2]", b"", b"[" * 100_000):
        with served.client() as c:
            r = c.post("/v1/chat/completions", content=raw)
        error_of(r, 400)
    assert_alive(served)


def test_body_too_large(served: Served) -> None:
    with serving(max_body=1000) as s, s.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(pad="x" * 2000))
        assert error_of(r, 413)["message"].endswith("(--max-body)")
        assert_alive(s)


def test_chunked_body_too_large_is_refused_while_reading(served: Served) -> None:
    """A chunked body with no Content-Length: refused once past the limit, not buffered."""
    sent = 0

    with serving(max_body=64 * 1024) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"x" * 16384
            try:
                for _ in range(64 * 1024):  # up to 1 GiB, if the server kept reading
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except OSError:
                pass
            response = b""
            try:
                while data := conn.recv(65536):
                    response += data
            except OSError:
                pass
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert sent < 256 * 1024 * 1024
        assert_alive(s)


# --- security -------------------------------------------------------------------------------
def test_api_key() -> None:
    with serving(api_key="s3cret") as s, s.client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/chat/completions", json=chat_body(), headers=headers)
            error = error_of(r, 401)
            assert error["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200  # open for probes
        ok = c.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            s.openai("wrong").models.list()
        assert next(m.id for m in s.openai("s3cret").models.list()) == MODEL


def test_host_header_on_loopback(served: Served) -> None:
    for host, status in [
        ("evil.example", 403),
        (f"evil.example:{served.port}", 403),
        ("", 403),
        (f":{served.port}", 403),
        ("127.0.0.1.evil.example", 403),
        ("localhost:abc", 403),
        (f"127.0.0.1:{served.port}", 200),
        ("localhost", 200),
        (f"LOCALHOST:{served.port}", 200),
        (f"[::1]:{served.port}", 200),
        ("127.0.0.2", 200),
    ]:
        with served.client() as c:
            r = c.get("/v1/models", headers={"Host": host})
        assert r.status_code == status, (host, r.text)
        if status == 403:
            assert error_of(r, 403)["code"] == "host_not_allowed"
    with served.client() as c:
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 403


def test_no_cors_headers_for_a_foreign_origin_by_default(served: Served) -> None:
    origin = {"Origin": "https://evil.example"}
    with served.client() as c:
        r = c.get("/v1/models", headers=origin)
        assert "access-control-allow-origin" not in r.headers
        pre = c.options(
            "/v1/chat/completions",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers
        assert pre.status_code == 400  # Starlette's "Disallowed CORS origin"


def test_no_cors_headers_at_all_with_cors_none() -> None:
    local = {"Origin": "http://localhost:3000"}
    with serving(cors=parse_origins(["none"])) as s, s.client() as c:
        r = c.get("/v1/models", headers=local)
        assert not any(h.lower().startswith("access-control-") for h in r.headers)
        pre = c.options(
            "/v1/chat/completions", headers={**local, "Access-Control-Request-Method": "POST"}
        )
        assert not any(h.lower().startswith("access-control-") for h in pre.headers)
        assert pre.status_code == 405


def test_cors_for_an_allowed_origin() -> None:
    allowed = "https://chat.example.com"
    with serving(cors=parse_origins([allowed]), api_key="k") as s, s.client() as c:
        pre = c.options(
            "/v1/chat/completions",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == allowed
        r = c.get("/v1/models", headers={"Origin": allowed, "Authorization": "Bearer k"})
        assert r.headers["access-control-allow-origin"] == allowed
        # an explicit list replaces the local default: a page on localhost is not in it
        for other in ("https://evil.example", "http://localhost:3000"):
            got = c.get("/v1/models", headers={"Origin": other, "Authorization": "Bearer k"})
            assert "access-control-allow-origin" not in got.headers, other


# --- errors ---------------------------------------------------------------------------------
def test_unknown_model_is_404_naming_infer_pull(served: Served) -> None:
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(model="nope/missing:Q4_K_M"))
    error = error_of(r, 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "infer pull nope/missing:Q4_K_M" in error["message"]
    with pytest.raises(openai.NotFoundError):
        served.openai().chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )


def test_overloaded_is_503_with_retry_after(served: Served) -> None:
    served.backend.raise_on_submit = Overloaded(64, retry_after_s=2)
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body())
    error_of(r, 503)
    assert r.headers["retry-after"] == "2"


def test_prompt_too_long(served: Served) -> None:
    served.backend.raise_on_submit = PromptTooLong(5000, 4096)
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body())
    error = error_of(r, 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "5000" in error["message"] and "4096" in error["message"]
    served.backend.raise_on_submit = PromptTooLong(5000, 4096)
    with served.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert error_of(r, 400)["param"] == "prompt"


def test_template_error_is_400_other_infer_error_500(served: Served) -> None:
    served.backend.raise_on_submit = TemplateError("the chat template failed: boom")
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body())
        assert "boom" in error_of(r, 400)["message"]
        served.backend.raise_on_submit = InferError("llama.cpp failed to decode")
        r = c.post("/v1/chat/completions", json=chat_body())
        error = error_of(r, 500)
        assert "llama.cpp failed to decode" in error["message"]
        assert r.headers["x-request-id"] in error["message"]


def test_a_bug_is_a_500_with_a_request_id_and_one_log_line(served: Served) -> None:
    served.backend.raise_on_submit = ZeroDivisionError("secret internals")
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body())
    error = error_of(r, 500)
    request_id = r.headers["x-request-id"]
    assert request_id in error["message"]
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert _wait_for(lambda: any(request_id in line for line in served.log))
    time.sleep(0.05)
    mine = [line for line in served.log if request_id in line]
    assert len(mine) == 1 and "ZeroDivisionError: secret internals" in mine[0]
    assert sum("ZeroDivisionError" in line for line in served.log) == 1
    assert_alive(served)


def test_a_bug_mid_stream_ends_the_stream_with_an_error_event(served: Served) -> None:
    served.backend.script = Script(fail_after=2)
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(stream=True))
    events = sse_events(r.text)
    assert events[-1]["error"]["type"] == "server_error"
    assert "[DONE]" not in events
    served.backend.script = Script()
    assert_alive(served)


def test_unknown_path_and_method(served: Served) -> None:
    with served.client() as c:
        assert error_of(c.get("/v1/nothing"), 404)["code"] == "not_found"
        error_of(c.get("/v1/chat/completions"), 405)
        error_of(c.delete("/v1/models"), 405)


def test_models(served: Served) -> None:
    with served.client() as c:
        listing = c.get("/v1/models").json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == [MODEL, "smollm2", "qwen3:0.6b"]
        one = c.get(f"/v1/models/{MODEL}")
        assert one.json() == {
            "id": MODEL,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "local",
        }
        assert c.get("/v1/models/qwen3:0.6b").status_code == 200
        assert error_of(c.get("/v1/models/nope/x"), 404)["code"] == "model_not_found"
    assert served.openai().models.retrieve(MODEL).id == MODEL


def test_health_is_503_while_loading() -> None:
    backend = FakeBackend(start_delay_s=1.0)
    with serving(backend) as s, s.client() as c:
        r = c.get("/health")
        assert (r.status_code, r.json()) == (503, {"status": "loading"})
        deadline = time.monotonic() + 5
        while not backend.started and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})


# --- disconnects ----------------------------------------------------------------------------
def _wait_for(condition: Any, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_disconnect_mid_stream_cancels_the_job(served: Served) -> None:
    served.backend.script = Script(pieces=["x"] * 1000, delay_s=0.05)
    with (
        served.client() as c,
        c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk
        assert next(lines) == ""
        assert next(lines).startswith("data: ")  # a first piece: generation is under way
    job = served.backend.jobs[-1]
    assert job.cancelled.wait(2.0), "job.cancel() was not called after the client left"
    assert job.generated < 100
    assert _wait_for(lambda: any("client-disconnected" in line for line in served.log))


def test_disconnect_while_waiting_for_a_whole_answer_cancels(served: Served) -> None:
    served.backend.script = Script(pieces=["x"] * 1000, delay_s=0.05)
    with pytest.raises(httpx.ReadTimeout), served.client() as c:
        c.post("/v1/chat/completions", json=chat_body(), timeout=0.3)
    job = served.backend.jobs[-1]
    assert job.cancelled.wait(2.0)


# --- metrics and the access log -------------------------------------------------------------
def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_parse_and_count(served: Served) -> None:
    with served.client() as c:
        before = _samples(c.get("/metrics").text)
        c.post("/v1/chat/completions", json=chat_body())
        c.post("/v1/chat/completions", json=chat_body(stream=True))
        c.post("/v1/chat/completions", json=chat_body(temperature=900))
        served.backend.queue_depth, served.backend.busy_slots = 3, 2
        r = c.get("/metrics")
        served.backend.queue_depth = served.backend.busy_slots = 0
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = _samples(r.text)
    for line in r.text.splitlines():  # every line: a comment or `name{labels} number`
        assert line.startswith("# ") or len(line.rsplit(" ", 1)) == 2
    ok = 'infer_requests_total{code="200"}'
    bad = 'infer_requests_total{code="400"}'
    assert after[ok] - before.get(ok, 0) >= 3  # two answers and the first /metrics
    assert after[bad] - before.get(bad, 0) == 1
    assert after["infer_prompt_tokens_total"] - before["infer_prompt_tokens_total"] == 14
    assert after["infer_generated_tokens_total"] - before["infer_generated_tokens_total"] == 8
    assert (after["infer_queue_depth"], after["infer_busy_slots"], after["infer_slots"]) == (
        3,
        2,
        4,
    )
    assert (
        after["infer_time_to_first_token_seconds_count"]
        - before["infer_time_to_first_token_seconds_count"]
        == 2
    )
    assert (
        after['infer_time_to_first_token_seconds_bucket{le="+Inf"}']
        == after["infer_time_to_first_token_seconds_count"]
    )
    assert (
        after["infer_time_per_output_token_seconds_count"]
        - before["infer_time_per_output_token_seconds_count"]
        == 6
    )


def test_access_log_text_and_json() -> None:
    with serving() as s, s.client() as c:
        c.post("/v1/chat/completions", json=chat_body())
        assert _wait_for(lambda: len(s.log) == 1)
        line = s.log[-1]
        assert '"POST /v1/chat/completions" 200' in line and f"model={json.dumps(MODEL)}" in line
        assert "prompt=7 generated=4" in line and "ttft_ms=" in line and "total_ms=" in line
    with serving(log_format="json") as s, s.client() as c:
        c.post("/v1/chat/completions", json=chat_body(stream=True))
        c.get("/nowhere")
        assert _wait_for(lambda: len(s.log) == 2)
        first, second = (json.loads(line) for line in s.log[-2:])
        assert first["method"] == "POST" and first["status"] == 200 and first["model"] == MODEL
        assert first["prompt_tokens"] == 7 and first["generated_tokens"] == 4
        assert first["ttft_ms"] is not None and first["total_ms"] >= 0
        assert second["status"] == 404 and second["path"] == "/nowhere"


def test_lifespan_drains_and_closes() -> None:
    with serving() as s:
        backend = s.backend
    assert backend.drained == [10.0] and backend.closed


# --- the command line -----------------------------------------------------------------------
def _infer(*args: str) -> subprocess.CompletedProcess[str]:
    assert INFER, "the infer console script is not installed in this environment"
    return subprocess.run([INFER, *args], capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_public_address_without_a_key() -> None:
    result = _infer("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    for word in ("--api-key", "--api-key-file", "INFER_API_KEY", "--insecure"):
        assert word in lines[0]


def test_serve_refuses_a_bad_draft_max() -> None:
    result = _infer("serve", "smollm2", "--draft", "lookup", "--draft-max", "0")
    assert result.returncode == 2
    assert "--draft-max must be between 1 and 64" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_help_lists_every_flag() -> None:
    result = _infer("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--host", "--port", "--parallel", "--queue", "--ctx-size", "--threads", "--gpu-layers",
        "--batch-size", "--no-prompt-cache", "--offline", "--max-models", "--allow-pull",
        "--api-key", "--api-key-file", "--insecure", "--cors-origin", "--max-body",
        "--log-format", "--shutdown-timeout", "--stats", "--verbose", "--draft", "--draft-max",
        "--lora",
    ):  # fmt: skip
        assert flag in result.stdout, flag


def test_serve_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _infer("serve", "--port", str(port))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], result.stderr


# --- shutdown, through the command line with the fake backend ---------------------------
SERVE_FAKE = """
import sys
sys.path.insert(0, {root!r})
from tests.fake_backend import FakeBackend, Script
import infer.cli.serve as serve_command
backend = FakeBackend()
backend.script = Script(pieces=["x"] * {pieces}, delay_s=0.02)
if {fail!r}:
    from infer.runtime.errors import ModelFileError
    backend.start_error = ModelFileError("/models/broken.gguf", "not a GGUF file")
serve_command._backend = lambda config: backend
from infer.cli.app import main
main(["serve", "--port", "0", *sys.argv[1:]])
"""


@contextmanager
def serve_command(pieces: int, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    root = str(Path(__file__).resolve().parent.parent)
    code = SERVE_FAKE.format(root=root, pieces=pieces, fail=False)
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        ready = process.stderr.readline()
        assert "(OpenAI API at http://127.0.0.1:" in ready, ready
        url = ready.split(" on ", 1)[1].split(" ", 1)[0]
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_cuts_a_long_answer_after_the_shutdown_timeout(signum: int) -> None:
    with serve_command(10_000, "--shutdown-timeout", "0.5") as (process, url):
        with (
            httpx.Client(base_url=url, timeout=10) as c,
            c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            started = time.monotonic()
            process.send_signal(signum)
            data = [x[6:] for x in lines if x.startswith("data: ")]
        assert time.monotonic() - started < 8
        assert data[-1] == "[DONE]"
        events = [json.loads(x) for x in data[:-1]]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert process.stderr.read().strip().endswith("infer: stopped")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_lets_a_short_answer_finish(signum: int) -> None:
    with serve_command(25, "--shutdown-timeout", "10") as (process, url):
        with (
            httpx.Client(base_url=url, timeout=10) as c,
            c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signum)
            body = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in body) == "x" * 25
        assert body[-1]["choices"][0]["finish_reason"] == "stop"
        assert process.wait(10) == 0


def test_a_model_that_fails_to_load_at_start_is_one_line_and_exit_1() -> None:
    root = str(Path(__file__).resolve().parent.parent)
    code = SERVE_FAKE.format(root=root, pieces=1, fail=True)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == "infer: error: /models/broken.gguf: not a GGUF file\n"
