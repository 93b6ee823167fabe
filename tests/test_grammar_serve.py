"""`infer serve` with response_format (issue 14): the real command, the bundled SmolLM2 and the
real `openai` client; answers constrained by a JSON schema or llama.cpp's JSON grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .llama_server import running_infer_server
from .test_serve import Server

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Describe Ann, who is 31, as JSON."}
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("grammar-serve"))


def test_json_schema_answer_validates(server: Server) -> None:
    answer = server.client().chat.completions.create(
        model="smollm2", messages=ASK, temperature=0, response_format=SCHEMA_FORMAT
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON)


def test_streamed_json_schema_answer_validates(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="smollm2", messages=ASK, temperature=0, response_format=SCHEMA_FORMAT, stream=True
    )
    text, reasons = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasons == ["stop"]
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_completions(server: Server) -> None:
    client = server.client()
    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": 'Reply with {"ok": true}'}],
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    completion = client.completions.create(
        model="smollm2",
        prompt="A person as JSON:",
        temperature=0,
        max_tokens=100,
        extra_body={"response_format": SCHEMA_FORMAT},
    )
    jsonschema.validate(json.loads(completion.choices[0].text), PERSON)


def test_cut_off_answer_is_length(server: Server) -> None:
    answer = server.client().chat.completions.create(
        model="smollm2", messages=ASK, temperature=0, response_format=SCHEMA_FORMAT, max_tokens=3
    )
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("fmt", "words"),
    [
        ({"type": "yaml"}, "type 'yaml' is not supported"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema' must be a JSON schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"oneOf": []}}},
            "keyword 'oneOf'",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "string", "format": "uri"}}},
            "format 'uri'",
        ),
    ],
)
def test_unsupported_response_format_is_a_400(server: Server, fmt: Any, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(
            model="smollm2",
            messages=ASK,
            response_format=fmt,
        )
    body: Any = e.value.body
    assert body["param"] == "response_format"
    assert words in body["message"]
