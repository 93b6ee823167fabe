"""The OpenAPI 3.1 document the server publishes at /openapi.json: every route of the app (read
from the router itself, so a route cannot be missing) with the request bodies the protocol
modules accept. The sampling fields come from the one option table (runtime/options.py) by
each door's name for them; the rest of each body is described here, by hand, as the protocol
modules parse it (they stay the judges: a body this schema allows may still be a 400, never a
5xx — which is what tests/test_openapi.py and benchmarks/fuzz.py check with schemathesis).

Used by clients to generate code, and by fuzzers to generate requests.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..options import OPTIONS

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer"}
OBJECT: Schema = {"type": "object"}
STRINGS: Schema = {"type": "array", "items": STRING}
STOP: Schema = {"anyOf": [STRING, STRINGS, {"type": "null"}]}


def _sampling(door: str) -> dict[str, Schema]:
    """The option table's fields under `door`'s names ("openai" or "ollama")."""
    fields: dict[str, Schema] = {}
    for option in OPTIONS:
        name = getattr(option, door)
        if name is None:
            continue
        schema: Schema = {
            "type": "integer" if option.kind is int else "number",
            "description": option.help,
            "minimum": option.low,
            "maximum": option.high,
        }
        if option.low_open:
            schema["exclusiveMinimum"] = schema.pop("minimum")
        fields[name] = schema
    return fields


def _obj(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_TOOL = _obj(
    ["type", "function"],
    type={"enum": ["function"]},
    function=_obj(["name"], name=STRING, description=STRING, parameters=OBJECT, strict=BOOL),
)
_TOOLS: Schema = {"type": "array", "items": _TOOL}
_TOOL_CHOICE: Schema = {"anyOf": [{"enum": ["none", "auto", "required"]}, OBJECT]}
_CONTENT: Schema = {"anyOf": [STRING, {"type": "array", "items": OBJECT}, {"type": "null"}]}
_MESSAGE = _obj(
    ["role"],
    role={"enum": ["system", "developer", "user", "assistant", "tool"]},
    content=_CONTENT,
    name=STRING,
    tool_calls={"type": "array", "items": OBJECT},
    tool_call_id=STRING,
)
_GENERATION: dict[str, Schema] = {
    "model": STRING,
    "stream": BOOL,
    "stream_options": _obj([], include_usage=BOOL),
    "max_tokens": {"anyOf": [INT, {"type": "null"}]},
    "n": INT,
    "stop": STOP,
    "ignore_eos": BOOL,
    # {"<token id>": bias}, each -100..100 (server/logit_bias.py)
    "logit_bias": {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    },
    **_sampling("openai"),
}
_CHAT = _obj(
    ["model", "messages"],
    messages={"type": "array", "items": _MESSAGE},
    max_completion_tokens={"anyOf": [INT, {"type": "null"}]},
    response_format=OBJECT,
    tools=_TOOLS,
    tool_choice=_TOOL_CHOICE,
    parallel_tool_calls=BOOL,
    **_GENERATION,
)
_COMPLETION = _obj(
    ["model", "prompt"],
    prompt={"anyOf": [STRING, STRINGS]},
    echo=BOOL,
    suffix=STRING,
    **_GENERATION,
)
_EMBEDDINGS = _obj(
    ["model", "input"],
    model=STRING,
    input={"anyOf": [STRING, STRINGS]},
    encoding_format={"enum": ["float", "base64"]},
    dimensions=INT,
)
_ANTHROPIC_MESSAGE = _obj(
    ["role", "content"],
    role={"enum": ["user", "assistant"]},
    content={"anyOf": [STRING, {"type": "array", "items": OBJECT}]},
)
_ANTHROPIC_COMMON: dict[str, Schema] = {
    "model": STRING,
    "messages": {"type": "array", "items": _ANTHROPIC_MESSAGE},
    "system": {"anyOf": [STRING, {"type": "array", "items": OBJECT}]},
    "tools": {"type": "array", "items": OBJECT},
    "tool_choice": OBJECT,
}
_ANTHROPIC = _obj(
    ["model", "messages", "max_tokens"],
    max_tokens=INT,
    stream=BOOL,
    stop_sequences=STRINGS,
    temperature={"type": "number", "minimum": 0, "maximum": 1},
    top_p={"type": "number", "minimum": 0, "maximum": 1},
    top_k=INT,
    metadata=OBJECT,
    **_ANTHROPIC_COMMON,
)
_RESPONSES = _obj(
    ["model", "input"],
    model=STRING,
    input={"anyOf": [STRING, {"type": "array", "items": OBJECT}]},
    instructions=STRING,
    stream=BOOL,
    max_output_tokens={"anyOf": [INT, {"type": "null"}]},
    temperature={"type": "number", "minimum": 0, "maximum": 2},
    top_p={"type": "number", "minimum": 0, "maximum": 1},
    tools={"type": "array", "items": OBJECT},
    tool_choice=_TOOL_CHOICE,
    previous_response_id=STRING,
    store=BOOL,
    text=OBJECT,
)
_OLLAMA_OPTIONS: Schema = {
    "type": "object",
    "properties": {
        **_sampling("ollama"),
        "num_predict": INT,
        "num_ctx": INT,
        "stop": STRINGS,
    },
}
_KEEP_ALIVE: Schema = {"anyOf": [STRING, {"type": "number"}]}
_FORMAT: Schema = {"anyOf": [{"enum": ["json"]}, OBJECT]}
_OLLAMA_MESSAGE = _obj(
    ["role"],
    role={"enum": ["system", "user", "assistant", "tool"]},
    content=STRING,
    images=STRINGS,
    tool_calls={"type": "array", "items": OBJECT},
)
_OLLAMA_COMMON: dict[str, Schema] = {
    "model": STRING,
    "stream": BOOL,
    "format": _FORMAT,
    "options": _OLLAMA_OPTIONS,
    "keep_alive": _KEEP_ALIVE,
}
_OLLAMA_CHAT = _obj(
    ["model"],
    messages={"type": "array", "items": _OLLAMA_MESSAGE},
    tools=_TOOLS,
    **_OLLAMA_COMMON,
)
_OLLAMA_GENERATE = _obj(
    ["model"], prompt=STRING, system=STRING, raw=BOOL, suffix=STRING, **_OLLAMA_COMMON
)
_OLLAMA_EMBED = _obj(
    ["model", "input"],
    model=STRING,
    input={"anyOf": [STRING, STRINGS]},
    truncate=BOOL,
    options=_OLLAMA_OPTIONS,
    keep_alive=_KEEP_ALIVE,
)
_OLLAMA_EMBEDDINGS = _obj(["model", "prompt"], model=STRING, prompt=STRING, options=_OLLAMA_OPTIONS)
_OLLAMA_NAMED = _obj(["model"], model=STRING, name=STRING)
_OLLAMA_PULL = _obj(["model"], model=STRING, name=STRING, stream=BOOL, insecure=BOOL)

# (path, method) → (summary, request body schema or None)
BODIES: dict[tuple[str, str], tuple[str, Schema | None]] = {
    ("/v1/chat/completions", "post"): ("OpenAI chat completion", _CHAT),
    ("/v1/completions", "post"): ("OpenAI text completion", _COMPLETION),
    ("/v1/embeddings", "post"): ("OpenAI embeddings", _EMBEDDINGS),
    ("/v1/messages", "post"): ("Anthropic Messages", _ANTHROPIC),
    ("/v1/messages/count_tokens", "post"): (
        "Anthropic token count",
        _obj(["model", "messages"], **_ANTHROPIC_COMMON),
    ),
    ("/v1/responses", "post"): ("OpenAI Responses", _RESPONSES),
    ("/api/chat", "post"): ("Ollama chat", _OLLAMA_CHAT),
    ("/api/generate", "post"): ("Ollama generate", _OLLAMA_GENERATE),
    ("/api/embed", "post"): ("Ollama embed", _OLLAMA_EMBED),
    ("/api/embeddings", "post"): ("Ollama embeddings (legacy)", _OLLAMA_EMBEDDINGS),
    ("/api/show", "post"): ("Ollama model details", _OLLAMA_NAMED),
    ("/api/pull", "post"): ("Ollama pull (with --allow-pull)", _OLLAMA_PULL),
    ("/api/delete", "delete"): ("Ollama delete (with --allow-delete)", _OLLAMA_NAMED),
}

_ERROR: Schema = {"description": "an error, in the door's own error shape"}


def document(routes: list[tuple[str, list[str]]], version: str) -> Schema:
    """The OpenAPI document of `routes` ((path, methods) as the router has them)."""
    paths: dict[str, dict[str, Any]] = {}
    for path, methods in routes:
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", path)
        params = re.findall(r"\{(\w+)\}", template)
        for method in sorted(m.lower() for m in methods if m.upper() != "HEAD"):
            summary, body = BODIES.get((path, method), (f"{method.upper()} {template}", None))
            operation: dict[str, Any] = {
                "summary": summary,
                "operationId": f"{method}_{re.sub(r'[^a-zA-Z0-9]+', '_', template).strip('_')}",
                "responses": {"200": {"description": "the answer"}, "default": _ERROR},
            }
            if params:
                operation["parameters"] = [
                    {"name": p, "in": "path", "required": True, "schema": STRING} for p in params
                ]
            if body is not None:
                content = {"application/json": {"schema": body}}
                operation["requestBody"] = {"required": True, "content": content}
            paths.setdefault(template, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "infer serve",
            "version": version,
            "description": "OpenAI-, Anthropic- and Ollama-compatible API of `infer serve`.",
        },
        "paths": paths,
    }


async def openapi_route(request: Request) -> Response:
    """GET /openapi.json: the document of the app that serves it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("infer")
    except PackageNotFoundError:
        ours = "0"
    app_routes = request.app.routes
    routes = [(r.path, sorted(r.methods or ())) for r in app_routes if isinstance(r, Route)]
    return JSONResponse(document(routes, ours))
