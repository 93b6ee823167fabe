"""What soak.py sends and how it reads what comes back: the weighted mix of request kinds, one
request of each kind (every door, streamed and not), the invalid requests (each must be a 4xx),
the text of an answer (whole or streamed) for the temperature-0 same-answer check, and the
checks of an answer's shape (a JSON-schema answer that does not follow its schema, a forced tool
call that is missing)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any

PROMPTS = ["Say hi", "Name a colour", "What is 2+2?", "Translate 'Hola' to English"]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MIX = {  # kind: weight
    "chat": 12,
    "chat_stream": 12,
    "completion": 6,
    "completion_stream": 6,
    "embeddings": 6,
    "json_schema": 6,
    "tools": 6,
    "ollama": 4,
    "ollama_stream": 3,
    "anthropic": 4,
    "anthropic_stream": 3,
    "responses": 4,
    "responses_stream": 3,
    "cancel": 6,
    "slow_reader": 4,
    "invalid": 10,
}
# Answers that must be whole to be checked (a JSON object, a tool call's arguments) get room.
STRUCTURED_TOKENS = 64


# The streamed kinds a cancel or a slow reader is made of, one door at random each time.
STREAMS = ["chat_stream", "completion_stream", "ollama_stream", "anthropic_stream",
           "responses_stream"]  # fmt: skip


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    body: dict[str, Any] | bytes  # bytes: sent as they are (a malformed body)
    stream: bool = False
    door: str = ""  # a cancel's or slow reader's streamed kind: how its stream reads

    @property
    def reads_as(self) -> str:
        return self.door or self.kind


def build(kind: str, model: str, prompt: str, tokens: int, rng: random.Random) -> Request:
    """One request of `kind` (MIX's keys) at temperature 0."""
    if kind in ("cancel", "slow_reader"):
        door = rng.choice(STREAMS)
        return replace(build(door, model, prompt, tokens, rng), kind=kind, door=door)
    messages = [{"role": "user", "content": prompt}]
    base = {"model": model, "temperature": 0, "max_tokens": tokens}
    streamed = kind.endswith("_stream")
    if kind in ("chat", "chat_stream"):
        body = {**base, "messages": messages, "stream": streamed}
        return Request(kind, "/v1/chat/completions", body, streamed)
    if kind in ("completion", "completion_stream"):
        body = {**base, "prompt": prompt, "stream": streamed}
        return Request(kind, "/v1/completions", body, streamed)
    if kind == "embeddings":
        return Request(kind, "/v1/embeddings", {"model": model, "input": [prompt, prompt + "!"]})
    if kind == "json_schema":
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
        body = {**base, "max_tokens": STRUCTURED_TOKENS, "messages": messages}
        return Request(kind, "/v1/chat/completions", {**body, "response_format": fmt})
    if kind == "tools":
        body = {**base, "max_tokens": STRUCTURED_TOKENS, "messages": messages, "tools": [TOOL]}
        return Request(kind, "/v1/chat/completions", {**body, "tool_choice": "required"})
    if kind in ("ollama", "ollama_stream"):
        options = {"temperature": 0, "num_predict": tokens}
        if kind == "ollama":
            body = {"model": model, "messages": messages, "stream": False, "options": options}
            return Request(kind, "/api/chat", body)
        body = {"model": model, "prompt": prompt, "stream": True, "options": options}
        return Request(kind, "/api/generate", body, True)
    if kind in ("anthropic", "anthropic_stream"):
        return Request(kind, "/v1/messages", {**base, "messages": messages, "stream": streamed},
                       streamed)  # fmt: skip
    if kind in ("responses", "responses_stream"):
        body = {"model": model, "input": prompt, "temperature": 0, "max_output_tokens": tokens}
        return Request(kind, "/v1/responses", {**body, "stream": streamed}, streamed)
    if kind == "invalid":
        return invalid(model, rng)
    raise ValueError(f"unknown kind {kind!r}")


def invalid(model: str, rng: random.Random) -> Request:
    """A request every door must refuse with a 4xx (never a 5xx, never an answer)."""
    return Request("invalid", *rng.choice(invalid_requests(model)))


def invalid_requests(model: str) -> list[tuple[str, dict[str, Any] | bytes]]:
    """(path, body) of each invalid request the soak sends (tests/test_soak_mix.py sends them
    all once)."""
    messages = [{"role": "user", "content": "Say hi"}]
    return [
        ("/v1/chat/completions", {"model": model, "messages": "not a list"}),
        ("/v1/chat/completions", {"model": model, "messages": messages, "temperature": -3}),
        ("/v1/chat/completions", {"model": 7, "messages": messages}),
        ("/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": "many"}),
        ("/v1/chat/completions", {"model": model, "messages": messages, "n": 10_000}),
        ("/v1/chat/completions", {"model": "no-such-model", "messages": messages}),
        ("/v1/chat/completions", b'{"model": "x", "messages": [{"role": '),
        ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": -5}),
        ("/v1/embeddings", {"model": model, "input": {"not": "text"}}),
        ("/api/chat", {"model": model, "messages": "not a list"}),
        ("/api/generate", {"model": model, "prompt": 12}),
        ("/v1/messages", {"model": model, "messages": messages}),  # no max_tokens
        ("/v1/responses", {"model": model, "input": 5}),
    ]


def answer_text(kind: str, data: Any) -> str | None:
    """The text of a whole (not streamed) answer; None where there is none to compare."""
    try:
        if kind in ("chat", "json_schema"):
            return str(data["choices"][0]["message"]["content"])
        if kind == "tools":
            calls = data["choices"][0]["message"].get("tool_calls") or []
            return json.dumps([[c["function"]["name"], c["function"]["arguments"]] for c in calls])
        if kind == "completion":
            return str(data["choices"][0]["text"])
        if kind == "ollama":
            return str(data["message"]["content"])
        if kind == "anthropic":
            return "".join(b.get("text", "") for b in data["content"])
        if kind == "responses":
            return "".join(
                part.get("text", "")
                for item in data["output"]
                if item.get("type") == "message"
                for part in item["content"]
            )
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def stream_piece(kind: str, line: str) -> str:
    """The answer's text in one line of a stream (SSE for OpenAI, Anthropic and Responses;
    NDJSON for Ollama); "" for lines that carry none."""
    if kind.startswith("ollama"):
        raw = line
    elif line.startswith("data:"):
        raw = line[5:].strip()
    else:
        return ""
    if not raw or raw == "[DONE]":
        return ""
    try:
        data = json.loads(raw)
        if kind.startswith("ollama"):
            return str(data.get("response") or (data.get("message") or {}).get("content") or "")
        if kind.startswith("anthropic"):
            delta = data.get("delta") or {}
            return str(delta.get("text", "")) if data.get("type") == "content_block_delta" else ""
        if kind.startswith("responses"):
            return str(data["delta"]) if data.get("type") == "response.output_text.delta" else ""
        choice = (data.get("choices") or [{}])[0]
        return str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return ""


def problem(kind: str, data: Any) -> str | None:
    """What is wrong with a 200 answer's shape, or None: a JSON-schema answer that ended on
    its own must parse and follow the schema; a forced tool call must be there, its arguments
    JSON; embeddings must be two vectors of one length."""
    try:
        if kind == "json_schema":
            choice = data["choices"][0]
            if choice["finish_reason"] != "stop":
                return None  # cut by max_tokens: not the schema's fault
            value = json.loads(choice["message"]["content"])
            if not (isinstance(value, dict) and isinstance(value.get("answer"), str)):
                return f"json_schema: {value!r} does not follow the schema"
        elif kind == "tools":
            choice = data["choices"][0]
            calls = choice["message"].get("tool_calls") or []
            if not calls:
                return f"tools: no tool call under tool_choice required ({choice['finish_reason']})"
            if choice["finish_reason"] == "tool_calls":
                for call in calls:
                    json.loads(call["function"]["arguments"])
        elif kind == "embeddings":
            vectors = [d["embedding"] for d in data["data"]]
            if len(vectors) != 2 or len({len(v) for v in vectors}) != 1:
                return "embeddings: not two vectors of one length"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        return f"{kind}: {type(e).__name__}: {e}"
    return None
