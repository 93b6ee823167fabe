"""Anthropic's Messages API on the HTTP side, against the scripted backend
(tests/fake_backend.py): the real `anthropic` client, the mapping of fields onto the core's
`TextRequest`, Anthropic's event stream and error shape, the API key as `x-api-key`. The
bundled model's end-to-end tests are in tests/test_anthropic_serve.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from infer.runtime.server.backend import Overloaded

from .fake_backend import MODEL, Script
from .test_serve_http import Served, serving

TOOL = {"name": "f", "description": "look", "input_schema": {"type": "object"}}
CALL = ["Let me look. ", '{"name": "f", ', '"arguments": {"a": 1}}']
ASK = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving() as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_script(served: Served) -> None:
    served.backend.script = Script()
    served.backend.raise_on_submit = None


def client(s: Served, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.url, api_key=key, max_retries=0, timeout=10)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": ASK, **extra}


def post(s: Served, payload: Any, path: str = "/v1/messages", **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=s.url, timeout=10) as c:
        return c.post(path, json=payload, **kw)


def events(text: str) -> list[tuple[str, Any]]:
    """(event name, data) of each server-sent event, each checked to end with a blank line."""
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def error_of(r: httpx.Response, status: int, kind: str = "invalid_request_error") -> str:
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and set(r.json()["error"]) == {"type", "message"}
    assert r.json()["error"]["type"] == kind
    return str(r.json()["error"]["message"])


# --- the anthropic client -------------------------------------------------------------------
def test_create_with_the_anthropic_client(served: Served) -> None:
    message = client(served).messages.create(
        model=MODEL,
        max_tokens=32,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Capital?"}]}],
        stop_sequences=["\n\n"],
        metadata={"user_id": "u1"},
        # this client version has no sampling arguments; older ones and other clients send them
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
    )
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Paris is the capital."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 4
    _, request = served.backend.submits[-1]
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "Be brief."),
        ("user", "Capital?"),
    ]
    assert request.max_tokens == 32 and request.stop == ["\n\n"] and request.tools is None
    assert request.sampling == {"temperature": 0.5, "top_p": 0.9, "top_k": 40}


def test_max_tokens_is_max_tokens(served: Served) -> None:
    message = client(served).messages.create(model=MODEL, max_tokens=2, messages=ASK)  # type: ignore[arg-type]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_a_stop_sequence_is_named(served: Served) -> None:
    served.backend.script = Script(stop="\n\n")
    message = client(served).messages.create(
        model=MODEL,
        max_tokens=16,
        messages=ASK,  # type: ignore[arg-type]
        stop_sequences=["\n\n", "END"],
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "\n\n"
    served.backend.script = Script(stop="END")
    seen = events(post(served, body(stop_sequences=["END"], stream=True)).text)
    assert seen[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_stream_with_the_anthropic_client(served: Served) -> None:
    with client(served).messages.stream(model=MODEL, max_tokens=16, messages=ASK) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Paris is the capital."
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 4


def test_event_sequence(served: Served) -> None:
    r = post(served, body(stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    seen = events(r.text)
    names = [name for name, _ in seen]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = seen[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 7 and start["usage"]["output_tokens"] == 0
    assert seen[2][1]["content_block"] == {"type": "text", "text": ""}
    assert {d["index"] for n, d in seen if n.startswith("content_block")} == {0}
    delta = seen[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4


def test_count_tokens_with_the_anthropic_client(served: Served) -> None:
    two = [*ASK, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Sure?"}]
    counted = client(served).messages.count_tokens(model=MODEL, messages=two, system="Be brief.")  # type: ignore[arg-type]
    assert counted.input_tokens == 7 + 4  # the fake's count: 7 + one per message
    model, request = served.backend.counted[-1]
    assert model == MODEL and request.messages and request.messages[0].role == "system"
    assert post(served, {"model": MODEL, "messages": ASK}, "/v1/messages/count_tokens").json() == {
        "input_tokens": 8
    }


# --- tools ----------------------------------------------------------------------------------
def test_tool_use_answer(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    message = client(served).messages.create(
        model=MODEL,
        max_tokens=64,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert message.stop_reason == "tool_use"
    text, use = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert use.type == "tool_use" and use.id.startswith("toolu_")
    assert use.name == "f" and use.input == {"a": 1}
    _, request = served.backend.submits[-1]
    assert request.tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "description": "look"},
        }
    ]
    assert request.tool_choice == "auto" and request.parallel_tool_calls


def test_streamed_tool_use(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    seen = events(post(served, body(tools=[TOOL], stream=True)).text)
    starts = [d for n, d in seen if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[1]["content_block"]["input"] == {}
    stops = [d["index"] for n, d in seen if n == "content_block_stop"]
    assert stops == [0, 1]
    parts = [d["delta"] for n, d in seen if n == "content_block_delta" and d["index"] == 1]
    assert [p["type"] for p in parts] == ["input_json_delta"]
    assert json.loads("".join(p["partial_json"] for p in parts)) == {"a": 1}
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    served.backend.script = Script(pieces=CALL)
    with client(served).messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=ASK,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[1].input == {"a": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, ("auto", None, True)),
        ({"type": "any"}, ("required", None, True)),
        ({"type": "tool", "name": "f"}, ("required", "f", True)),
        ({"type": "any", "disable_parallel_tool_use": True}, ("required", None, False)),
    ],
)
def test_tool_choice(served: Served, choice: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert post(served, body(tools=[TOOL], tool_choice=choice)).status_code == 200
    _, request = served.backend.submits[-1]
    assert (request.tool_choice, request.forced_tool, request.parallel_tool_calls) == expected


def test_tool_choice_none_offers_no_tools(served: Served) -> None:
    served.backend.script = Script(pieces=CALL)
    r = post(served, body(tools=[TOOL], tool_choice={"type": "none"}))
    assert r.json()["stop_reason"] == "end_turn"
    assert r.json()["content"] == [{"type": "text", "text": "".join(CALL)}]
    assert served.backend.submits[-1][1].tools is None


def test_tool_turns_map_to_the_cores_messages(served: Served) -> None:
    turns = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "x"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here:"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "is_error": True,
                    "content": [{"type": "text", "text": "boom"}],
                },
            ],
        },
    ]
    assert post(served, body(messages=turns, tools=[TOOL])).status_code == 200
    messages = served.backend.submits[-1][1].messages or []
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    assert messages[1].content == "Looking." and messages[1].tool_calls == (call,)
    assert (messages[2].content, messages[2].tool_call_id, messages[2].name) == (
        "42",
        "toolu_1",
        "f",
    )
    assert messages[3].content == "Error: boom"
    assert messages[4].content == "Here:"


# --- refusals -------------------------------------------------------------------------------
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"model": MODEL, "messages": ASK}, "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens="8"), "max_tokens"),
        (body(model=5), "model"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
        (body(messages=[{"role": "user", "content": [IMAGE]}]), "messages.0.content.0.source"),
        (body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages.0.content.0"),
        (
            body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]),
            "messages.0.content.0.id",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]),
            "messages.0.content.0.tool_use_id",
        ),
        (body(system=[{"type": "image"}]), "system.0"),
        (body(temperature=-1), "temperature"),
        (body(temperature="hot"), "temperature"),
        (body(top_p=1.5), "top_p"),
        (body(top_k=1.5), "top_k"),
        (body(stop_sequences="x"), "stop_sequences"),
        (body(stop_sequences=[""]), "stop_sequences"),
        (body(stream="yes"), "stream"),
        (body(thinking={"type": "deep"}), "thinking"),
        (body(tools=[{"name": "f"}]), "tools.0.input_schema"),
        (body(tools=[{"name": "f g", "input_schema": {"type": "object"}}]), "tools.0.name"),
        (body(tools=[{"name": "f", "input_schema": {"type": "array"}}]), "tools.0.input_schema"),
        (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
        (body(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}), "tool_choice.name"),
        (body(tool_choice={"type": "any"}), "tool_choice"),
        (body(tools=[TOOL], tool_choice="auto"), "tool_choice"),
        (body(mcp_servers=[{"url": "x"}]), "mcp_servers"),
        (body(output_config=[]), "output_config"),
        (body(output_config={"format": {"type": "json"}}), "output_config.format"),
        (
            body(output_config={"format": {"type": "json_schema", "schema": {"not": {}}}}),
            "output_config.format.schema",
        ),
        (
            body(
                output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
                tools=[TOOL],
                tool_choice={"type": "any"},
            ),
            "output_config.format",
        ),
    ],
)
def test_invalid_field_is_a_400_naming_it(served: Served, payload: Any, field: str) -> None:
    message = error_of(post(served, payload), 400)
    assert message.startswith(f"{field}: "), message
    assert not served.backend.submits or served.backend.submits[-1][1].max_tokens != 0


def test_output_format_is_a_grammar(served: Served) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"format": {"type": "json_schema", "schema": schema}, "effort": "low"}
    assert post(served, body(output_config=fmt)).status_code == 200
    grammar = served.backend.submits[-1][1].sampling["grammar"]
    assert isinstance(grammar, str) and "root" in grammar


def test_thinking_is_accepted(served: Served) -> None:
    r = post(served, body(thinking={"type": "enabled", "budget_tokens": 1024}))
    assert r.status_code == 200 and [b["type"] for b in r.json()["content"]] == ["text"]


def test_the_client_raises_on_a_400(served: Served) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(served).messages.create(model=MODEL, max_tokens=8, messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["message"].startswith("messages: ")  # type: ignore[index]


def test_malformed_json_and_too_large(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as c:
        r = c.post("/v1/messages", content=b"{", headers={"content-type": "application/json"})
        assert "not valid JSON" in error_of(r, 400)
        r = c.post("/v1/messages", content=b"x" * (9 << 20))
    error_of(r, 413, "request_too_large")


def test_unknown_model_and_overloaded(served: Served) -> None:
    message = error_of(post(served, body(model="nope")), 404, "not_found_error")
    assert "infer pull" in message
    served.backend.raise_on_submit = Overloaded(3, retry_after_s=2)
    r = post(served, body())
    error_of(r, 503, "overloaded_error")
    assert r.headers["retry-after"] == "2"
    error_of(
        post(served, {"model": "nope", "messages": ASK}, "/v1/messages/count_tokens"),
        404,
        "not_found_error",
    )


def test_a_failure_mid_stream_ends_with_an_error_event(served: Served) -> None:
    served.backend.script = Script(fail_after=2)
    seen = events(post(served, body(stream=True)).text)
    name, error = seen[-1]
    assert name == "error" and error["error"]["type"] == "api_error"
    assert "request id" in error["error"]["message"]


def test_api_key_as_x_api_key_or_bearer() -> None:
    with serving(api_key="sekret") as s:
        assert client(s, "sekret").messages.create(model=MODEL, max_tokens=4, messages=ASK)  # type: ignore[arg-type]
        bearer = {"authorization": "Bearer sekret"}
        assert post(s, body(), headers=bearer).status_code == 200
        with pytest.raises(anthropic.AuthenticationError):
            client(s, "wrong").messages.create(model=MODEL, max_tokens=4, messages=ASK)  # type: ignore[arg-type]
        error_of(post(s, body()), 401, "authentication_error")
        error_of(post(s, body(), "/v1/messages/count_tokens"), 401, "authentication_error")
        # the OpenAI door takes the key in Anthropic's header too, and keeps its own shape
        r = post(s, {"model": MODEL, "messages": ASK}, "/v1/chat/completions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_anthropic_version_header_and_host_check(served: Served) -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "whatever"}
    assert post(served, body(), headers=headers).status_code == 200
    error_of(post(served, body(), headers={"host": "evil.example"}), 403, "permission_error")
