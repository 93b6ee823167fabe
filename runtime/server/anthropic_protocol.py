"""Anthropic's Messages API: a `POST /v1/messages` (or `/v1/messages/count_tokens`) body
validated into the core `TextRequest` (`parse_messages`, `parse_count`), and the choice that
answer assembly (answer.py) made of the job's events shaped back into a message object
(`message_object`) and Anthropic's typed stream events (`EventShaper`). Stop reasons become
Anthropic's words here and nowhere else. Pure data: no HTTP, no starlette.

The conversation maps onto the core's messages as the OpenAI door maps its own: `tool_use`
blocks are an assistant's tool calls, `tool_result` blocks tool messages, so the same
conversation renders the same prompt through either door. A field this server cannot honour is
refused with a 400 naming it (`messages.2.content.0.source`, Anthropic's way of pointing at a
field); fields it does not know are ignored, as the OpenAI door does.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MediaError, OptionError
from ..generation.logprobs import TokenLogprob
from ..generation.templates import Message
from ..generation.tool_calls import ToolCall
from ..options import from_fields
from . import media_parts
from .backend import Choice, FinishReason, TextRequest
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import (
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOKENS_LIMIT,
    ApiError,
    kind_of,
    model_name,
)

MAX_TOOLS = 128
# The sampling fields Anthropic has (Option.openai names: Anthropic spells them the same).
SAMPLING = ("temperature", "top_p", "top_k")
# Blocks a client may send that hold nothing a text model can read (a past answer's reasoning):
# dropped, as the real API drops them from models that do not think.
DROPPED = ("thinking", "redacted_thinking")
# Anthropic's error types by HTTP status (api_error for the rest).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def invalid(where: str, message: str) -> ApiError:
    return ApiError(400, message, param=where)


def error_body(error: ApiError) -> dict[str, Any]:
    """An ApiError in Anthropic's shape; the field, when there is one, leads the message as the
    real API writes it (`max_tokens: Field required`)."""
    message = f"{error.param}: {error.message}" if error.param else error.message
    kind = ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass
class ParsedMessages:
    model: str
    request: TextRequest
    stream: bool = False


# --- the two endpoints ----------------------------------------------------------------------
def parse_messages(body: Any, media: MediaPolicy = NO_URLS) -> ParsedMessages:
    """A /v1/messages body → the request, or ApiError (400) naming the field. Image blocks
    become media parts (media_parts.py, under `media`'s rules)."""
    body = _object(body)
    model = _model(body)
    if "max_tokens" not in body:
        raise invalid("max_tokens", "Field required")
    limit = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    request = _conversation(body, media)
    request.max_tokens = limit
    request.stop = _stop(body.get("stop_sequences"))
    request.sampling = _sampling(body)
    _output_format(body.get("output_config"), request)
    _thinking(body.get("thinking"))
    if body.get("mcp_servers") not in (None, []):
        raise invalid("mcp_servers", "MCP servers are not supported by this server")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", f"must be true or false (got {kind_of(stream)})")
    return ParsedMessages(model, request, stream)


def parse_count(body: Any, media: MediaPolicy = NO_URLS) -> ParsedMessages:
    """A /v1/messages/count_tokens body (no max_tokens, no sampling) → the request to count."""
    body = _object(body)
    return ParsedMessages(_model(body), _conversation(body, media))


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    return body


def _conversation(body: dict[str, Any], media: MediaPolicy) -> TextRequest:
    """What both endpoints read: system, messages, tools and tool_choice."""
    messages = _system(body.get("system")) + _messages(body.get("messages"), media)
    request = TextRequest(messages=messages)
    _tools(body, request)
    return request


# --- field checks ---------------------------------------------------------------------------
def _model(body: dict[str, Any]) -> str:
    return model_name(body, "not a valid model name")


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(name, f"must be an integer (got {kind_of(value)})")
    if not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high} (got {value})")
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """temperature, top_p and top_k, each given the one option table's verdict
    (runtime/options.py): Anthropic spells them as OpenAI does."""
    try:
        return dict(from_fields(body, "openai", SAMPLING))
    except OptionError as e:
        raise invalid(e.option, e.problem) from None


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop_sequences", "must be an array of strings")
    if len(stop) > MAX_STOP:
        raise invalid("stop_sequences", f"at most {MAX_STOP} strings (got {len(stop)})")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise invalid("stop_sequences", f"each string must be 1 to {MAX_STOP_CHARS} characters")
    return list(stop)


def _output_format(config: Any, request: TextRequest) -> None:
    """`output_config.format` ({"type": "json_schema", "schema": {...}}): the schema's grammar
    holds every token, refused (400) where the converter could not enforce it. `effort` is
    accepted and has no effect."""
    from ..errors import UsageError
    from ..llama.grammar import constraint

    if config is None:
        return
    if not isinstance(config, dict):
        raise invalid("output_config", "must be an object")
    where, fmt = "output_config.format", config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise invalid(where, 'must be {"type": "json_schema", "schema": {...}}')
    if not isinstance(fmt.get("schema"), dict):
        raise invalid(f"{where}.schema", "must be a JSON schema object")
    if request.tool_choice == "required":
        raise invalid(where, "a required tool call and an output format cannot be combined")
    try:
        names = (f"{where}.schema", "", "")
        request.sampling["grammar"] = constraint(json_schema=fmt["schema"], names=names)
    except UsageError as e:  # its message names the field already
        raise ApiError(400, str(e)) from None


def _thinking(thinking: Any) -> None:
    """Extended thinking is accepted and has no effect: the models served here write no
    separate reasoning, and an answer without thinking blocks is a valid answer."""
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise invalid("thinking", 'must be {"type": "enabled" | "disabled" | "adaptive", ...}')


# --- the conversation -----------------------------------------------------------------------
def _system(system: Any) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message("system", system)] if system else []
    if not isinstance(system, list):
        raise invalid("system", "must be a string or an array of text blocks")
    text = "".join(_text_block(b, f"system.{i}") for i, b in enumerate(system))
    return [Message("system", text)] if text else []


def _text_block(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise invalid(where, 'must be a text block {"type": "text", "text": "..."}')
    if not isinstance(block.get("text"), str):
        raise invalid(f"{where}.text", "must be a string")
    return str(block["text"])


def _messages(messages: Any, media: MediaPolicy) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "must be a non-empty array of messages")
    out: list[Message] = []
    names: dict[str, str] = {}  # tool_use id → its tool's name, for the tool_result turns
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise invalid(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role", f"must be 'user' or 'assistant' (got {role!r})")
        content = m.get("content")
        if isinstance(content, str):
            out.append(Message(role, content))
        elif not isinstance(content, list):
            raise invalid(f"{where}.content", "must be a string or an array of content blocks")
        elif role == "assistant":
            out.append(_assistant(content, f"{where}.content", names))
        else:
            out.extend(_user(content, f"{where}.content", names, media))
    return out


def _assistant(blocks: list[Any], where: str, names: dict[str, str]) -> Message:
    """An assistant turn: its text, and its tool_use blocks as the core's tool calls."""
    texts, calls = [], []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in DROPPED:
            continue
        if kind != "tool_use":
            texts.append(_text_block(block, at))
            continue
        call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{at}.id", "a tool_use block needs its 'id'")
        if not isinstance(name, str) or not name:
            raise invalid(f"{at}.name", "a tool_use block needs its tool's 'name'")
        if not isinstance(arguments, dict):
            raise invalid(f"{at}.input", "must be an object")
        names[call_id] = name
        function = {"name": name, "arguments": arguments}
        calls.append({"id": call_id, "type": "function", "function": function})
    return Message("assistant", "".join(texts), tool_calls=tuple(calls) if calls else None)


def _user(
    blocks: list[Any], where: str, names: dict[str, str], media: MediaPolicy
) -> list[Message]:
    """A user turn: its tool_result blocks as tool messages, then its text and images as a user
    message (results first wherever they stand: they answer the assistant's calls just
    before)."""
    results, parts = [], []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            results.append(_tool_result(block, at, names))
        elif kind == "image":
            parts.append(_image(block, at, media))
        elif kind == "document":
            raise invalid(at, "'document' blocks are not supported: send text or images")
        else:
            parts.append({"type": "text", "text": _text_block(block, at)})
    if parts or not results:
        if any(p["type"] == "media" for p in parts):
            return [*results, Message("user", parts)]
        return [*results, Message("user", "".join(p["text"] for p in parts))]
    return results


def _image(block: dict[str, Any], at: str, media: MediaPolicy) -> dict[str, Any]:
    """An image block: source {type: base64, media_type, data}, or {type: url, url} when the
    server fetches URLs."""
    source = block.get("source")
    where = f"{at}.source"
    kind = source.get("type") if isinstance(source, dict) else None
    try:
        if kind == "base64":
            assert isinstance(source, dict)
            media_type = source.get("media_type")
            if not isinstance(media_type, str) or not media_type.startswith("image/"):
                raise invalid(f"{where}.media_type", f"{media_type!r} is not an image type")
            image = media_parts.image(f"data:{media_type};base64,{source.get('data') or ''}")
        elif kind == "url":
            assert isinstance(source, dict)
            url = source.get("url")
            if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
                raise invalid(f"{where}.url", "must be an http(s) URL")
            image = media_parts.image(url, media)
        else:
            raise invalid(where, 'must be {"type": "base64", "media_type", "data"} or a url')
    except MediaError as e:
        raise invalid(where, e.reason) from None
    return media_parts.media_part(image, where)


def _tool_result(block: dict[str, Any], at: str, names: dict[str, str]) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{at}.tool_use_id", "a tool_result block needs its 'tool_use_id'")
    content = block.get("content", "")
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "document"):
                raise invalid(f"{at}.content.{k}", "this model reads text only")
            parts.append(_text_block(part, f"{at}.content.{k}"))
        content = "".join(parts)
    elif not isinstance(content, str):
        raise invalid(f"{at}.content", "must be a string or an array of text blocks")
    if block.get("is_error") is True:  # the model is told, as Anthropic's own models are
        content = f"Error: {content}"
    return Message("tool", content, tool_call_id=call_id, name=names.get(call_id))


# --- tools ----------------------------------------------------------------------------------
def _tools(body: dict[str, Any], request: TextRequest) -> None:
    """`tools` (Anthropic's {name, description, input_schema}) as the core's function
    definitions, and `tool_choice`: auto, any (a call is required), tool (that one), none (no
    tools offered at all, as the OpenAI door does)."""
    offered = _definitions(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is None:
        choice = {"type": "auto"}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice", 'must be {"type": "auto" | "any" | "tool" | "none"}')
    if kind == "none" or not offered:
        if kind in ("any", "tool"):
            raise invalid("tool_choice", f"tool_choice {kind!r} needs 'tools'")
        return
    parallel = choice.get("disable_parallel_tool_use", False)
    if not isinstance(parallel, bool):
        raise invalid("tool_choice.disable_parallel_tool_use", "must be true or false")
    request.parallel_tool_calls = not parallel
    if kind == "tool":
        name = choice.get("name")
        if name not in {t["function"]["name"] for t in offered}:
            raise invalid("tool_choice.name", f"names {name!r}, which is not in 'tools'")
        request.forced_tool = name
    request.tool_choice = "auto" if kind == "auto" else "required"
    request.tools = offered


def _definitions(tools: Any) -> list[dict[str, Any]]:
    """Anthropic's tool definitions in the core's (OpenAI's) shape, checked by the runtime's
    one validator; its refusal names the field (`tools.2.input_schema`)."""
    from ..generation.tool_calls import ToolDefinitionError, definitions

    if tools in (None, []):
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid("tools", f"must be an array of at most {MAX_TOOLS} tools")
    functions = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid(f"tools.{i}", "must be {name, description, input_schema}")
        if tool.get("type") not in (None, "custom"):  # web_search_…, bash_…: Anthropic runs them
            raise invalid(f"tools.{i}.type", f"server tool {tool['type']!r} is not supported")
        if "input_schema" not in tool:
            raise invalid(f"tools.{i}.input_schema", "Field required")
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if "description" in tool:
            function["description"] = tool["description"]
        functions.append({"type": "function", "function": function})
    try:
        return definitions(functions, "tools")
    except ToolDefinitionError as e:
        field = {"parameters": "input_schema"}.get(e.field, e.field)
        reason = e.reason.replace("'parameters'", "'input_schema'")
        raise invalid(f"tools.{e.index}" + (f".{field}" if field else ""), reason) from None


# --- answers --------------------------------------------------------------------------------
# Anthropic has no "cancelled": an answer cut short by a disconnect or shutdown is max_tokens,
# as the OpenAI door calls it "length".
STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.CANCELLED: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
}


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def tool_use_id(call: ToolCall) -> str:
    """Anthropic's ids are `toolu_…`; the core's are `call_…`."""
    return "toolu_" + call.id.removeprefix("call_")


def tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": {}}


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def stop_reason(reason: FinishReason, stop: str | None) -> dict[str, Any]:
    """`stop_reason` and `stop_sequence`: a choice ended by a stop string says which."""
    if reason == FinishReason.STOP and stop is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": stop}
    return {"stop_reason": STOP_REASONS[reason], "stop_sequence": None}


def message_object(
    model: str, choice: Choice, stop: str | None, input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    """A whole answer: the text (when there is some, or nothing else), then the calls; `stop`
    the stop string that ended it."""
    blocks: list[dict[str, Any]] = []
    text = choice.content if choice.calls else choice.text
    if text or not choice.calls:
        blocks.append({"type": "text", "text": text or ""})
    for call in choice.calls:
        blocks.append({**tool_use(call), "input": json.loads(call.arguments)})
    return {
        **_head(message_id(), model),
        "content": blocks,
        **stop_reason(choice.reason, stop),
        "usage": usage(input_tokens, output_tokens),
    }


def _head(id: str, model: str) -> dict[str, Any]:
    return {"id": id, "type": "message", "role": "assistant", "model": model}


class EventShaper:
    """Anthropic's stream for one answer (an answer.StreamShaper): message_start and a ping;
    per content block a content_block_start, its deltas (text_delta, or a tool_use's
    arguments as one input_json_delta) and a content_block_stop; then message_delta with the
    stop reason and usage, and message_stop. `on_error` maps a failure to the error that ends
    a stream cut short; `stops` is answer.Answer.stops, filled as the answer ends."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        model: str,
        input_tokens: int,
        on_error: Callable[[Exception], ApiError],
        stops: dict[int, str],
    ) -> None:
        self.id, self.model, self.input_tokens, self.on_error = (
            message_id(),
            model,
            input_tokens,
            on_error,
        )
        self.blocks = 0  # content blocks started
        self.open: str | None = None  # the type of the block now open
        self.reason = FinishReason.STOP
        self.stops = stops

    def opening(self, choices: int) -> list[bytes]:
        message = {**_head(self.id, self.model), "content": [], "stop_reason": None}
        message |= {"stop_sequence": None, "usage": usage(self.input_tokens, 0)}
        start = _event("message_start", {"type": "message_start", "message": message})
        return [start, _event("ping", {"type": "ping"})]

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        head = b"" if self.open == "text" else self._close() + self._start(_EMPTY_TEXT)
        delta = {"type": "text_delta", "text": text}
        return head + self._delta(delta)

    def call(self, index: int, k: int, call: ToolCall) -> bytes:
        out = self._close() + self._start(tool_use(call))
        out += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        return out + self._close()

    def end(self, index: int, reason: FinishReason) -> bytes:
        self.reason = reason
        head = self._start(_EMPTY_TEXT) if not self.blocks else b""  # a message has a block
        return head + self._close()

    def error(self, error: Exception) -> bytes:
        return _event("error", error_body(self.on_error(error)))

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        delta = stop_reason(self.reason, self.stops.get(0))
        used = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
        tail = {"type": "message_delta", "delta": delta, "usage": used}
        return [_event("message_delta", tail), _event("message_stop", {"type": "message_stop"})]

    def _start(self, block: dict[str, Any]) -> bytes:
        self.open = block["type"]
        self.blocks += 1
        payload = {"type": "content_block_start", "index": self.blocks - 1}
        return _event("content_block_start", {**payload, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        return _event("content_block_delta", payload)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        payload = {"type": "content_block_stop", "index": self.blocks - 1}
        return _event("content_block_stop", payload)


_EMPTY_TEXT = {"type": "text", "text": ""}


def _event(name: str, payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {text}\n\n".encode()
