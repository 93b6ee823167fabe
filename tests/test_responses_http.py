"""The Responses door (`POST /v1/responses`, issue 21) against the scripted backend
(tests/fake_backend.py) through the real `openai` client and raw HTTP: the body's fields into the
core TextRequest, refusals naming the field, the response object and its typed stream events.
End to end on the bundled model: tests/test_responses_serve.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from infer.runtime.generation.templates import Message
from infer.runtime.llama.grammar import constraint

from .fake_backend import MODEL, Script
from .test_serve_http import Served, error_of, serving

CALL = ["Let me look. ", '{"name": "f", ', '"arguments": {"a": 1}}']
TOOLS: Any = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_script(served: Served) -> None:
    served.backend.script = Script()


def _post(s: Served, **body: Any) -> httpx.Response:
    with s.client() as c:
        return c.post("/v1/responses", json={"model": MODEL, "input": "Capital?", **body})


def _events(s: Served, **body: Any) -> list[dict[str, Any]]:
    """The stream's events, each checked to carry its SSE `event:` name as its `type`."""
    r = _post(s, stream=True, **body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in r.text.split("\n\n")[:-1]:
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_the_openai_client_reads_a_whole_response(served: Served) -> None:
    r = served.openai().responses.create(model=MODEL, input="Capital?", instructions="Be short.")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Paris is the capital."
    (message,) = r.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.status == "completed"
    assert r.usage and (r.usage.input_tokens, r.usage.output_tokens) == (7, 4)
    assert r.usage.total_tokens == 11 and r.instructions == "Be short."
    _, request = served.backend.submits[-1]
    assert request.messages == [Message("system", "Be short."), Message("user", "Capital?")]
    assert request.n == 1 and request.tools is None


TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_stream_events_in_order(served: Served) -> None:
    events = _events(served)
    assert [e["type"] for e in events] == TEXT_EVENTS
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events[3:-2])
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas == "Paris is the capital."
    assert final["id"] == events[0]["response"]["id"] and final["status"] == "completed"
    assert final["usage"]["total_tokens"] == 11


def test_the_clients_stream_helper_accepts_the_events(served: Served) -> None:
    """openai's `responses.stream` checks each event against the items it has seen."""
    with served.openai().responses.stream(model=MODEL, input="Capital?") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "Paris is the capital."


def test_max_output_tokens_makes_it_incomplete(served: Served) -> None:
    r = served.openai().responses.create(model=MODEL, input="Capital?", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "Paris is" and r.max_output_tokens == 2
    events = _events(served, max_output_tokens=2)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["item"]["status"] == "incomplete"


def test_fields_reach_the_request(served: Served) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "temperature": 0.5,
        "top_p": 0.9,
        "store": True,  # accepted: nothing is stored
        "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}},
        "metadata": {"k": "v"},
    }
    r = _post(served, **body)
    assert r.status_code == 200, r.text
    _, request = served.backend.submits[-1]
    assert request.sampling["temperature"] == 0.5 and request.sampling["top_p"] == 0.9
    assert request.sampling["grammar"] == constraint(json_schema=schema)
    out = r.json()
    assert (out["temperature"], out["top_p"], out["metadata"]) == (0.5, 0.9, {"k": "v"})
    assert out["text"]["format"]["schema"] == schema and out["store"] is False
    _post(served, text={"format": {"type": "json_object"}})
    assert served.backend.submits[-1][1].sampling["grammar"] == constraint(format="json")


def test_input_items_become_the_conversation(served: Served) -> None:
    items = [
        {"role": "developer", "content": "Be short."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "two"}],
        },
    ]
    assert _post(served, input=items, tools=TOOLS).status_code == 200
    messages = served.backend.submits[-1][1].messages
    assert messages is not None
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    calls = messages[2].tool_calls
    assert messages[2].content == "Looking." and calls is not None
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("c1", {"a": 1}), ("c2", {})]
    assert (messages[3].content, messages[3].tool_call_id, messages[3].name) == ("one", "c1", "f")
    assert messages[4].content == "two"


def test_a_call_is_a_function_call_item(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    r = served.openai().responses.create(model=MODEL, input="Hi", tools=TOOLS)
    message, call = r.output
    assert message.type == "message" and r.output_text == "Let me look."
    assert call.type == "function_call" and call.id and call.id.startswith("fc_")
    assert (call.name, json.loads(call.arguments)) == ("f", {"a": 1})
    assert call.call_id.startswith("call_") and r.status == "completed"
    request = served.backend.submits[-1][1]
    assert request.tools == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert r.tools[0].type == "function" and r.tool_choice == "auto"


def test_a_streamed_call(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    events = _events(served, tools=TOOLS)
    kinds = [e["type"] for e in events]
    assert kinds[-5:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[-5]["item"], events[-2]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress"
    assert done["id"] == added["id"] and json.loads(done["arguments"]) == {"a": 1}
    assert events[-5]["output_index"] == 1  # after the message with the text before the call
    final = events[-1]["response"]["output"]
    assert [i["type"] for i in final] == ["message", "function_call"]
    with served.openai().responses.stream(model=MODEL, input="Hi", tools=TOOLS) as stream:
        for _ in stream:
            pass
        assert stream.get_final_response().output[1].type == "function_call"


@pytest.mark.parametrize(
    ("choice", "forced"),
    [("required", None), ({"type": "function", "name": "f"}, "f"), ("none", None)],
)
def test_tool_choice(served: Served, choice: Any, forced: str | None) -> None:
    assert _post(served, tools=TOOLS, tool_choice=choice).status_code == 200
    request = served.backend.submits[-1][1]
    if choice == "none":
        assert request.tools is None
        return
    assert (request.tool_choice, request.forced_tool) == ("required", forced)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"store": "yes"}, "store"),
        ({"temperature": 1000}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "["}]},
            "input[0].arguments",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"instructions": 3}, "instructions"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "no spaces"}]}, "tools[0].name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        (
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "schema": {"type": "string", "format": "hostname"},
                    }
                }
            },
            "text.format.schema",
        ),
        (
            {
                "tools": TOOLS,
                "tool_choice": "required",
                "text": {"format": {"type": "json_object"}},
            },
            "tool_choice",
        ),
        ({"stream": "yes"}, "stream"),
        ({"model": 5}, "model"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"include": "message.output_text.logprobs"}, "include"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without include: nothing would carry them
        ({"include": ["message.output_text.logprobs"], "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_refusals_name_the_field(served: Served, body: dict[str, Any], param: str) -> None:
    error = error_of(_post(served, **body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_client_sees_a_refusal(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.openai().responses.create(model=MODEL, input="x", previous_response_id="resp_1")
    assert "stateless" in caught.value.message


def test_backend_errors_and_stored_responses(served: Served) -> None:
    error = error_of(_post(served, model="nope"), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    with served.client() as c:
        for method in ("GET", "DELETE"):
            error = error_of(c.request(method, "/v1/responses/resp_1"), 404)
            assert "stateless" in error["message"]


def test_a_failure_mid_stream_ends_with_response_failed(served: Served) -> None:
    served.backend.script = Script(fail_after=1)
    events = _events(served)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "server_error"
    assert events[-1]["response"]["status"] == "failed"


def test_the_api_key_guards_the_door() -> None:
    with serving(api_key="sesame") as s:
        assert error_of(_post(s), 401)
        ok = s.openai(key="sesame").responses.create(model=MODEL, input="x")
        assert ok.status == "completed"


def test_a_client_that_leaves_cancels_the_job(served: Served) -> None:
    served.backend.script = Script(pieces=["x"] * 1000, delay_s=0.05)
    body = {"model": MODEL, "input": "Capital?", "stream": True}
    with served.client() as c, c.stream("POST", "/v1/responses", json=body) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        while "output_text.delta" not in next(lines):  # generation is under way
            pass
    job = served.backend.jobs[-1]
    assert job.cancelled.wait(2.0), "job.cancel() was not called after the client left"
    assert job.generated < 100
    served.backend.script = Script(pieces=["x"] * 1000, delay_s=0.05)
    with pytest.raises(httpx.ReadTimeout), served.client() as c:
        c.post("/v1/responses", json={**body, "stream": False}, timeout=0.3)
    assert served.backend.jobs[-1].cancelled.wait(2.0)
