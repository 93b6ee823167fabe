"""Tool calls on the HTTP side (issue 14) against the scripted backend: the answer's text is
parsed into tool_calls, streamed as delta.tool_calls, and left as content when malformed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .fake_backend import Script
from .test_serve_http import Served, chat_body, serving, sse_events

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
CALL = ["Let me look. ", '{"name": "f", ', '"arguments": {"a": 1}}']


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


def _post(s: Served, script: list[str], **extra: Any) -> httpx.Response:
    s.backend.script = Script(pieces=script)
    with httpx.Client(base_url=s.url, timeout=30) as c:
        return c.post("/v1/chat/completions", json=chat_body(tools=TOOLS, **extra))


def test_answer_with_a_call(served: Served) -> None:
    choice = _post(served, CALL).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "f", "arguments": '{"a": 1}'}


@pytest.mark.parametrize(
    "script",
    [['{"name": "f", "arguments": {"a": 1}'], ['{"name": "g", "arguments": {}}'], ["plain {x}"]],
)
def test_malformed_or_unknown_call_stays_content(served: Served, script: list[str]) -> None:
    choice = _post(served, script).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "".join(script)}


def test_without_tools_nothing_is_parsed(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    with httpx.Client(base_url=served.url, timeout=30) as c:
        choice = c.post("/v1/chat/completions", json=chat_body()).json()["choices"][0]
    assert choice["message"]["content"] == "".join(CALL) and choice["finish_reason"] == "stop"
    choice = _post(served, CALL, tool_choice="none").json()["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_parallel_tool_calls_false_keeps_the_first(served: Served) -> None:
    two = ['[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {"b": 2}}]']
    message = _post(served, two).json()["choices"][0]["message"]
    assert len(message["tool_calls"]) == 2
    message = _post(served, two, parallel_tool_calls=False).json()["choices"][0]["message"]
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ["{}"]


def test_streamed_call_fragments(served: Served) -> None:
    events = sse_events(_post(served, CALL, stream=True).text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "Let me look. "  # the text before the call, nothing of the call
    parts = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert parts[0]["id"].startswith("call_") and parts[0]["function"]["name"] == "f"
    arguments = "".join(p["function"]["arguments"] for p in parts)
    assert json.loads(arguments) == {"a": 1} and {p["index"] for p in parts} == {0}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_malformed_call_is_content(served: Served) -> None:
    script = ["So ", '{"name": "f"', " oops"]
    events = sse_events(_post(served, script, stream=True).text)
    chunks = [e for e in events if isinstance(e, dict)]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "".join(script)
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completions_refuse_tools(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"model": "m", "prompt": "x", "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_the_jobs_plan_decides_the_syntax(served: Served) -> None:
    """The answer is read in the syntax the backend planned for its model's template (the job
    carries the plan): a bare JSON call is content to a Hermes model."""
    hermes = ["Sure. ", "<tool_", 'call>{"name": "f", "arguments": {}}</tool_call>']
    served.backend.template = "{% if tools %}<tool_call>{% endif %}"
    try:
        message = _post(served, CALL).json()["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "".join(CALL)}
        events = sse_events(_post(served, hermes, stream=True).text)
    finally:
        served.backend.template = None
    chunks = [e for e in events if isinstance(e, dict)]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "Sure. "  # held from where the marker may begin ("<tool_")
    parts = [p for c in chunks for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [p["function"].get("name") for p in parts] == ["f", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    request = served.backend.submits[-1][1]
    assert not hasattr(request, "tool_format")  # nothing is written back into the request
