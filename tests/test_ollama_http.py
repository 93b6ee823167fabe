"""Ollama's native API (/api/...) against the scripted backend (tests/fake_backend.py): fields
checked into the core TextRequest, answers and NDJSON streams in Ollama's shapes, errors as
`{"error": ...}`, keep_alive, and the `ollama` client's view. The real model is in
tests/test_ollama_serve.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from infer.runtime.server.ollama_protocol import UNSET, OllamaError, keep_alive, model_ref

from .fake_backend import MODEL, Script
from .test_serve_http import Served, serving

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
CALL = ["Let me look. ", '{"name": "f", ', '"arguments": {"a": 1}}']
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], **extra}


def post(s: Served, path: str, body: dict[str, Any]) -> httpx.Response:
    with s.client() as c:
        return c.post(path, json=body)


def ndjson(s: Served, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with s.client() as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in r.iter_lines() if line]


def last_request(s: Served) -> Any:
    return s.backend.submits[-1][1]


def test_root_and_version(served: Served) -> None:
    with served.client() as c:
        assert c.get("/").text == "Ollama is running"
        assert c.head("/").status_code == 200
        version = c.get("/api/version").json()["version"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 6, 4)  # Copilot's minimum


def test_chat_whole(served: Served) -> None:
    body = post(served, "/api/chat", chat(stream=False)).json()
    assert body["message"] == {"role": "assistant", "content": "Paris is the capital."}
    assert body["done"] is True and body["done_reason"] == "stop" and body["model"] == MODEL
    assert all(isinstance(body[k], int) and body[k] >= 0 for k in METRICS)
    assert body["prompt_eval_count"] == 7 and body["eval_count"] == 4
    assert last_request(served).messages[0].content == "Capital?"


def test_chat_streams_by_default(served: Served) -> None:
    lines = ndjson(served, "/api/chat", chat())
    assert [x["done"] for x in lines] == [False] * 4 + [True]
    assert "".join(x["message"]["content"] for x in lines) == "Paris is the capital."
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 4
    assert all(k in lines[-1] for k in METRICS)


def test_generate_with_system_and_raw(served: Served) -> None:
    body = {"model": MODEL, "prompt": "Hi", "system": "Be brief.", "stream": False}
    answer = post(served, "/api/generate", body).json()
    assert answer["response"] == "Paris is the capital." and answer["done_reason"] == "stop"
    roles = [(m.role, m.content) for m in last_request(served).messages]
    assert roles == [("system", "Be brief."), ("user", "Hi")]
    post(served, "/api/generate", {**body, "raw": True})
    assert last_request(served).prompt == "Hi" and last_request(served).messages is None
    lines = ndjson(served, "/api/generate", {"model": MODEL, "prompt": "Hi"})
    assert "".join(x["response"] for x in lines) == "Paris is the capital."


def test_options_through_the_option_table(served: Served) -> None:
    options = {
        "temperature": 0,
        "top_k": 5,
        "seed": 3,
        "repeat_last_n": 16,
        "num_predict": 2,
        "stop": ["\n"],
        "num_ctx": 8192,  # ignored: the context is set at load
        "mirostat": 1,  # ignored
    }
    answer = post(served, "/api/chat", chat(stream=False, options=options)).json()
    request = last_request(served)
    assert request.sampling == {"temperature": 0.0, "top_k": 5, "seed": 3, "repeat_last_n": 16}
    assert request.max_tokens == 2 and request.stop == ["\n"]
    assert answer["done_reason"] == "length" and answer["eval_count"] == 2
    post(served, "/api/chat", chat(stream=False, options={"num_predict": -1}))
    assert last_request(served).max_tokens is None


def test_format_json_and_schema_hold_the_answer_to_a_grammar(served: Served) -> None:
    post(served, "/api/generate", {"model": MODEL, "prompt": "x", "format": "json"})
    assert "object" in last_request(served).sampling["grammar"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    post(served, "/api/chat", chat(format=schema, stream=False))
    assert '"\\"a\\""' in last_request(served).sampling["grammar"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"messages": []}, "model"),
        ("/api/chat", chat(options={"temperature": -1}), "options.temperature"),
        ("/api/chat", chat(options={"top_k": "5"}), "options.top_k"),
        ("/api/chat", chat(options={"num_predict": 0}), "options.num_predict"),
        ("/api/chat", chat(options={"stop": 3}), "options.stop"),
        ("/api/chat", chat(options=[1]), "options"),
        ("/api/chat", chat(stream="yes"), "stream"),
        ("/api/chat", chat(format="yaml"), "format"),
        ("/api/chat", chat(keep_alive="soon"), "keep_alive"),
        ("/api/chat", chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        ("/api/chat", chat(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
        (
            "/api/chat",
            chat(messages=[{"role": "user", "content": "x", "images": ["aGk="]}]),
            "messages[0].images[0]",  # "hi": not an image
        ),
        ("/api/chat", chat(tools=[{"type": "function"}]), "tools[0]"),
        ("/api/chat", chat(tools=[*TOOLS, *TOOLS]), "tools[1].function.name"),
        ("/api/chat", chat(logprobs="yes"), "logprobs"),
        ("/api/chat", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
        ("/api/chat", chat(logprobs=True, top_logprobs=-1), "top_logprobs"),
        ("/api/chat", chat(top_logprobs=3), "top_logprobs"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "top_logprobs": "3"}, "top_logprobs"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "images": ["aGk="]}, "images[0]"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "suffix": 3}, "suffix"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"model": MODEL, "prompt": 3}, "prompt"),
        ("/api/embed", {"model": MODEL, "input": [1, 2]}, "input"),
        ("/api/embed", {"model": MODEL, "input": "x", "dimensions": 8}, "dimensions"),
        ("/api/embeddings", {"model": MODEL}, "prompt"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(
    served: Served, path: str, body: dict[str, Any], field: str
) -> None:
    before = len(served.backend.submits)
    r = post(served, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{field}: "), r.json()
    assert len(served.backend.submits) == before  # refused before reaching the backend


def test_backend_errors_in_ollama_shape(served: Served) -> None:
    r = post(served, "/api/chat", {**chat(), "model": "nope:7b"})
    assert r.status_code == 404 and "nope:7b" in r.json()["error"]
    with served.client() as c:
        r = c.post("/api/chat", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = c.post("/api/create", json={"model": "x"})
        assert r.status_code == 404 and r.json() == {"error": "no such endpoint: POST /api/create"}
        r = c.get("/api/chat")
        assert r.status_code == 405 and "GET" in r.json()["error"]


def test_a_failure_midway_ends_the_stream_with_an_error_line(served: Served) -> None:
    served.backend.script = Script(fail_after=2)
    lines = ndjson(served, "/api/chat", chat())
    assert [x["message"]["content"] for x in lines[:2]] == ["Paris", " is"]
    assert set(lines[-1]) == {"error"}


def test_tool_calls_in_ollama_shape(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    body = post(served, "/api/chat", chat(tools=TOOLS, stream=False)).json()
    (call,) = body["message"]["tool_calls"]
    assert call["function"] == {"name": "f", "arguments": {"a": 1}}  # an object, not text
    assert body["message"]["content"] == "Let me look." and body["done_reason"] == "stop"
    served.backend.script = Script(pieces=CALL)
    lines = ndjson(served, "/api/chat", chat(tools=TOOLS))
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert [c["function"]["arguments"] for c in calls] == [{"a": 1}]
    # the call goes back as the assistant's turn, its result as a tool turn
    turns = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "42", "tool_name": "f"},
    ]
    assert post(served, "/api/chat", chat(messages=turns, stream=False)).status_code == 200
    assistant, tool = last_request(served).messages[1:]
    assert assistant.tool_calls[0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert (tool.role, tool.content, tool.name) == ("tool", "42", "f")


def test_keep_alive_drives_the_pool(served: Served) -> None:
    kept = served.backend.kept
    post(served, "/api/chat", chat(stream=False, keep_alive="5m"))
    post(served, "/api/chat", chat(stream=False, keep_alive=-1))
    post(served, "/api/chat", chat(stream=False))  # not given: not asked
    assert kept[-2:] == [(MODEL, 300.0), (MODEL, None)]
    r = post(served, "/api/generate", {"model": MODEL, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload" and kept[-1] == (MODEL, 0.0)
    r = post(served, "/api/chat", {"model": MODEL, "messages": []})
    assert r.json()["done_reason"] == "load" and kept[-1] == (MODEL, None)
    assert post(served, "/api/generate", {"model": "nope", "prompt": ""}).status_code == 404


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (0, 0.0),
        ("0", 0.0),
        (120, 120.0),
        (-1, None),
        ("-1", None),
        ("-5m", None),
    ],
)
def test_keep_alive_values(value: Any, seconds: float | None) -> None:
    assert keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "", True, [], "1h-"])
def test_keep_alive_refusals(value: Any) -> None:
    with pytest.raises(OllamaError, match="keep_alive"):
        keep_alive(value)
    assert keep_alive(None) is UNSET


def test_names_as_ollama_clients_send_them() -> None:
    assert model_ref("smollm2:latest") == "smollm2"
    assert model_ref("qwen3:0.6b") == "qwen3:0.6b"
    assert model_ref("hf.co/owner/repo:Q4_K_M") == "owner/repo:Q4_K_M"


def test_store_changes_are_refused_unless_allowed(served: Served) -> None:
    r = post(served, "/api/pull", {"model": "smollm2:360m"})
    assert r.status_code == 403 and "--allow-pull" in r.json()["error"]
    with served.client() as c:
        r = c.request("DELETE", "/api/delete", json={"model": "smollm2"})
    assert r.status_code == 403 and "--allow-delete" in r.json()["error"]


def test_an_ollama_chat_and_an_openai_chat_decode_together(served: Served) -> None:
    """Both doors submit to the one backend: the OpenAI chat is admitted while the Ollama
    chat is still generating, and both are answered."""
    import threading
    import time

    served.backend.script = Script(delay_s=0.1)
    before = len(served.backend.jobs)
    got: dict[str, str] = {}

    def ollama_side() -> None:
        got["ollama"] = post(served, "/api/chat", chat(stream=False)).json()["message"]["content"]

    thread = threading.Thread(target=ollama_side)
    thread.start()
    while len(served.backend.jobs) == before:
        time.sleep(0.005)
    first = served.backend.jobs[before]
    answer = served.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Capital?"}], stream=True
    )
    next(iter(answer))  # the OpenAI answer has begun...
    assert not first.finished  # ...while the Ollama one is still generating
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    thread.join(30)
    assert got["ollama"] == "Paris is the capital." and text == "Paris is the capital."


def test_the_ollama_client(served: Served) -> None:
    client = ollama.Client(host=served.url, timeout=10)
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert answer.message.content == "Paris is the capital." and answer.done
    parts = list(client.generate(model=MODEL, prompt="x", stream=True))
    assert "".join(p.response or "" for p in parts) == "Paris is the capital."
    listed = client.list().models
    assert {m.model for m in listed} >= {MODEL, "smollm2:latest"}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404


def test_api_key_and_host_check_cover_the_ollama_door() -> None:
    with serving(api_key="sekrit") as s:
        with s.client() as c:
            refused = c.get("/api/tags")
            assert refused.status_code == 401 and isinstance(refused.json()["error"], str)
            foreign = c.get("/api/version", headers={"Host": "evil.example"})
            assert foreign.status_code == 403 and isinstance(foreign.json()["error"], str)
        client = ollama.Client(host=s.url, headers={"Authorization": "Bearer sekrit"})
        assert client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}]).done
