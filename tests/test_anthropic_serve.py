"""Anthropic's Messages API on `infer serve` end to end: the real command on a loopback port,
the bundled SmolLM2, the official `anthropic` client. The door gives the same text as
/v1/chat/completions for the same conversation at temperature 0, counts the same prompt
tokens, and decodes in the same batch as an OpenAI chat. (Field checks against the scripted
backend are in tests/test_anthropic_http.py.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest

from .llama_server import running_infer_server
from .test_serve import Server

SYSTEM = "You are a geography teacher."
TURNS: Any = [
    {"role": "user", "content": "Name a large river."},
    {"role": "assistant", "content": "The Nile."},
    {"role": "user", "content": "Where does it flow?"},
]
GREEDY = {"temperature": 0}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL: Any = {"name": "get_weather", "description": "Weather in a city", "input_schema": SCHEMA}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("anthropic-home"))


def claude(s: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.url, api_key="x", max_retries=0, timeout=300)


def openai_text(s: Server, max_tokens: int) -> tuple[str, str, int]:
    """The OpenAI door's greedy answer to the same conversation: text, finish, prompt tokens."""
    messages = [{"role": "system", "content": SYSTEM}, *TURNS]
    answer = s.client().chat.completions.create(
        model="smollm2", messages=messages, max_tokens=max_tokens, temperature=0
    )
    choice = answer.choices[0]
    assert answer.usage is not None
    return choice.message.content or "", choice.finish_reason, answer.usage.prompt_tokens


def test_same_text_as_chat_completions(server: Server) -> None:
    text, finish, prompt_tokens = openai_text(server, 24)
    message = claude(server).messages.create(
        model="smollm2", max_tokens=24, system=SYSTEM, messages=TURNS, extra_body=GREEDY
    )
    (block,) = message.content
    assert block.type == "text" and block.text == text and text
    assert message.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[finish]
    assert message.usage.input_tokens == prompt_tokens
    assert 0 < message.usage.output_tokens <= 24
    counted = claude(server).messages.count_tokens(model="smollm2", system=SYSTEM, messages=TURNS)
    assert counted.input_tokens == prompt_tokens
    with claude(server).messages.stream(
        model="smollm2", max_tokens=24, system=SYSTEM, messages=TURNS, extra_body=GREEDY
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens


def test_a_stop_sequence_ends_the_answer_and_is_named(server: Server) -> None:
    text, _, _ = openai_text(server, 24)
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]
    for stream in (False, True):
        kwargs: Any = {"system": SYSTEM, "messages": TURNS, "extra_body": GREEDY}
        kwargs |= {"model": "smollm2", "max_tokens": 24, "stop_sequences": [stop]}
        if stream:
            with claude(server).messages.stream(**kwargs) as s:
                message = s.get_final_message()
        else:
            message = claude(server).messages.create(**kwargs)
        assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
        assert message.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]


def test_decodes_in_the_same_batch_as_an_openai_chat(server: Server) -> None:
    """An Anthropic stream and an OpenAI stream: each has received text before either ends."""
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    ask: Any = [{"role": "user", "content": "Count from 1 to 100."}]

    def anthropic_side() -> None:
        with claude(server).messages.stream(
            model="smollm2",
            max_tokens=48,
            messages=ask,
            extra_body=GREEDY,
        ) as stream:
            for _ in stream.text_stream:
                first.setdefault("anthropic", time.monotonic())
        done["anthropic"] = time.monotonic()

    def openai_side() -> None:
        stream = server.client().chat.completions.create(
            model="smollm2",
            messages=ask,
            max_tokens=48,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first.setdefault("openai", time.monotonic())
        done["openai"] = time.monotonic()

    threads = [threading.Thread(target=f) for f in (anthropic_side, openai_side)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(first) == set(done) == {"anthropic", "openai"}
    assert max(first.values()) < min(done.values())


def test_forced_tool_use_and_its_result(server: Server) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]
    message = claude(server).messages.create(
        model="smollm2",
        max_tokens=64,
        messages=ask,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use"
    use = message.content[-1]
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, SCHEMA)
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}
    turns = [
        *ask,
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": [result]},
    ]
    answer = claude(server).messages.create(
        model="smollm2", max_tokens=16, messages=turns, tools=[TOOL], extra_body=GREEDY
    )
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_streamed_tool_use(server: Server) -> None:
    with claude(server).messages.stream(
        model="smollm2",
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[TOOL],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, SCHEMA)


def test_errors_in_anthropics_shape(server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(server).messages.create(
            model="smollm2", max_tokens=8, messages=TURNS, extra_body={"top_p": 2}
        )
    assert bad.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "top_p: must be between 0 and 1 (got 2)",
        },
    }
    with pytest.raises(anthropic.NotFoundError):
        claude(server).messages.create(model="no-such-model", max_tokens=8, messages=TURNS)
    json.dumps(bad.value.body)  # plain JSON, as the client parsed it
