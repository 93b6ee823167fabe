"""The Responses door end to end (issue 21): `infer serve` on the bundled SmolLM2 in a
subprocess, driven with the `openai` package's `responses.create`. Its text is compared with
/v1/chat/completions' for the same conversation at temperature 0, never with one fixed answer.
(The field checks against the scripted backend are in tests/test_responses_http.py.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from .llama_server import running_infer_server
from .test_serve import Server

ASK = "Name a large city in Europe."
PARAMS = {
    "type": "object",
    "properties": {"city": {"enum": ["Oslo", "Rome"]}},
    "required": ["city"],
}
TOOLS: Any = [{"type": "function", "name": "weather", "parameters": PARAMS}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("responses-home"))


def _chat(s: Server, messages: list[Any], tokens: int) -> Any:
    return s.client().chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=tokens
    )


def test_same_text_as_chat_completions(server: Server) -> None:
    r = server.client().responses.create(
        model="smollm2", instructions="Be brief.", input=ASK, temperature=0, max_output_tokens=12
    )
    chat = _chat(
        server, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK}], 12
    )
    choice = chat.choices[0]
    assert r.output_text == choice.message.content and r.output_text
    assert r.status == ("incomplete" if choice.finish_reason == "length" else "completed")
    assert r.usage and chat.usage
    assert (r.usage.input_tokens, r.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )


def test_streamed_same_text(server: Server) -> None:
    whole = server.client().responses.create(
        model="smollm2", input=ASK, temperature=0, max_output_tokens=12
    )
    stream = server.client().responses.create(
        model="smollm2", input=ASK, temperature=0, max_output_tokens=12, stream=True
    )
    events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    assert deltas == final.output_text == whole.output_text
    assert final.status == whole.status


def test_a_forced_call_and_its_result(server: Server) -> None:
    client = server.client()
    r = client.responses.create(
        model="smollm2",
        input="Weather in Oslo?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "weather"},
        temperature=0,
        max_output_tokens=40,
    )
    call = r.output[-1]
    assert call.type == "function_call" and call.name == "weather"
    jsonschema.validate(json.loads(call.arguments), PARAMS)
    turn: Any = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "weather",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "-3 C"},
    ]
    after = client.responses.create(
        model="smollm2",
        input=turn,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_output_tokens=12,
    )
    chat = _chat(
        server,
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": "weather", "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "name": "weather", "content": "-3 C"},
        ],
        12,
    )
    assert after.output_text == chat.choices[0].message.content


def test_text_format_json_schema(server: Server) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"ok": {"enum": ["yes", "no"]}},
        "required": ["ok"],
    }
    r = server.client().responses.create(
        model="smollm2",
        input="Is Oslo in Norway? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        temperature=0,
        max_output_tokens=40,
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_decodes_beside_a_chat(server: Server) -> None:
    """A Responses stream and an OpenAI chat in flight together on one model's batch: the chat
    is sent once the stream has produced text, and both are answered."""
    client = server.client()
    stream = client.responses.create(
        model="smollm2", input=ASK, temperature=0, max_output_tokens=48, stream=True
    )
    chat_done: list[Any] = []
    events = iter(stream)
    for event in events:
        if event.type == "response.output_text.delta":
            break
    worker = threading.Thread(
        target=lambda: chat_done.append(_chat(server, [{"role": "user", "content": ASK}], 48))
    )
    worker.start()
    rest = list(events)
    worker.join(300)
    assert rest[-1].type in ("response.completed", "response.incomplete")
    assert rest[-1].response.output_text
    assert chat_done and chat_done[0].choices[0].message.content


def test_errors_reach_the_client(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="smollm2", input="x", background=True)
    assert caught.value.body and "background" in str(caught.value.body)
