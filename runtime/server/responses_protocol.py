"""OpenAI's Responses API (`POST /v1/responses`): a body validated into the core `TextRequest`
(`parse`), and answer assembly's choices shaped back into a response object
(`response_object`) or its typed stream events (`EventFrames`). Pure data: no HTTP.

Stateless: nothing is stored, so `previous_response_id`, `background` and the other fields that
need a stored response are refused with a 400 naming them; `store` is accepted and does
nothing. As in openai_requests, a field the server cannot honour is refused, one it does not
know is ignored, and errors are OpenAI's error shape (`ApiError`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import MediaError, OptionError, UsageError
from ..generation.logprobs import TokenLogprob
from ..generation.templates import Message
from ..generation.tool_calls import ToolCall
from ..options import from_fields
from . import logprobs as shapes
from . import media_parts
from .backend import Choice, FinishReason, Progress, TextRequest
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import MAX_TOKENS_LIMIT, ApiError, invalid, model_name

MAX_TOOLS = 128
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SAMPLING = ("temperature", "top_p")  # the Responses API's sampling fields (OpenAI names)
# Fields that need a stored response or a feature this server does not have: refused unless
# they hold what a client sends when it does not use them.
REFUSED: dict[str, tuple[Any, ...]] = {
    "previous_response_id": (None, ""),
    "background": (None, False),
    "conversation": (None,),
    "prompt": (None,),
    "reasoning": (None, {}),
    "max_tool_calls": (None,),
    "truncation": (None, "disabled"),
}
WHY = {
    "previous_response_id": "this server is stateless: send the whole conversation in 'input'",
    "conversation": "this server is stateless: send the whole conversation in 'input'",
    "background": "background responses are not supported: this server is stateless",
}


@dataclass
class ResponsesRequest:
    """A validated request: the model, what to generate, and the settings the response object
    repeats back (`echo`: instructions, tools, tool_choice, text, sampling...)."""

    model: str
    request: TextRequest
    stream: bool = False
    echo: dict[str, Any] = field(default_factory=dict)


def parse(body: Any, media: MediaPolicy = NO_URLS) -> ResponsesRequest:
    """A /v1/responses body → the request, or ApiError (400) naming the field. input_image
    parts of user messages become media parts (media_parts.py, under `media`'s rules)."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    _refuse(body)
    model = model_name(body)
    request = TextRequest(messages=_conversation(body, media), sampling=_sampling(body))
    request.logprobs = shapes.responses_requested(body, invalid)
    request.max_tokens = _max_output_tokens(body.get("max_output_tokens"))
    text = body.get("text")
    grammar, fmt = _text_format(text)
    if grammar:
        request.sampling["grammar"] = grammar
    tools, choice = _tools(body, request)
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise invalid("stream", "'stream' must be true or false")
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": request.max_tokens,
        "temperature": request.sampling.get("temperature"),
        "top_p": request.sampling.get("top_p"),
        "tools": tools,
        "tool_choice": choice,
        "parallel_tool_calls": request.parallel_tool_calls,
        "text": {"format": fmt},
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
    }
    return ResponsesRequest(model, request, stream is True, echo)


def _refuse(body: dict[str, Any]) -> None:
    for name, neutral in REFUSED.items():
        if name in body and not any(body[name] == v for v in neutral):
            why = WHY.get(name, "it is not supported by this server")
            raise invalid(name, f"'{name}' cannot be used: {why}")
    if body.get("store") not in (None, True, False):
        raise invalid("store", "'store' must be true or false")


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """temperature and top_p, each with the one option table's verdict (runtime/options.py)."""
    try:
        return dict(from_fields(body, "openai", SAMPLING))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


def _max_output_tokens(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS_LIMIT:
        raise invalid(
            "max_output_tokens",
            f"'max_output_tokens' must be an integer between 1 and {MAX_TOKENS_LIMIT}",
        )
    return value


# --- input ----------------------------------------------------------------------------------
def _conversation(body: dict[str, Any], media: MediaPolicy) -> list[Message]:
    """`instructions` (a system message first) and `input`: a string (one user message) or
    items: messages, and the function_call / function_call_output items of tool turns."""
    out: list[Message] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid("instructions", "'instructions' must be a string")
        if instructions:
            out.append(Message("system", instructions))
    given = body.get("input")
    if isinstance(given, str):
        out.append(Message("user", given))
    elif isinstance(given, list) and given:
        calls: dict[str, str] = {}  # call_id → function name, for the tool messages
        for i, item in enumerate(given):
            _item(item, f"input[{i}]", out, calls, media)
    else:
        raise invalid("input", "'input' must be a string or a non-empty array of items")
    if not any(m.role != "system" for m in out):
        raise invalid("input", "'input' must hold at least one message besides instructions")
    return out


def _item(
    item: Any, where: str, out: list[Message], calls: dict[str, str], media: MediaPolicy
) -> None:
    if not isinstance(item, dict):
        raise invalid(where, f"'{where}' must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            known = "user, assistant, system, developer"
            raise invalid(f"{where}.role", f"unknown role {role!r} (use one of: {known})")
        policy = media if role == "user" else None
        out.append(Message(ROLES[role], _parts(item.get("content"), f"{where}.content", policy)))
    elif kind == "function_call":
        _call_item(item, where, out, calls)
    elif kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{where}.call_id", "a function_call_output needs its 'call_id'")
        text = _content(item.get("output"), f"{where}.output")
        out.append(Message("tool", text, tool_call_id=call_id, name=calls.get(call_id)))
    else:
        raise invalid(
            f"{where}.type",
            f"input items of type {kind!r} are not supported "
            "(message, function_call, function_call_output)",
        )


def _call_item(item: dict[str, Any], where: str, out: list[Message], calls: dict[str, str]) -> None:
    """A function_call item: joined to the assistant turn just before it (its text, or the
    calls made together), as the chat's assistant message with tool_calls."""
    name, call_id, arguments = item.get("name"), item.get("call_id"), item.get("arguments", "{}")
    if not isinstance(name, str) or not name:
        raise invalid(f"{where}.name", "a function_call needs its function's 'name'")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}.call_id", "a function_call needs its 'call_id'")
    try:
        args = json.loads(arguments or "{}") if isinstance(arguments, str) else None
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise invalid(f"{where}.arguments", "'arguments' must be a JSON object as text")
    calls[call_id] = name
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    last = out[-1] if out else None
    if last is not None and last.role == "assistant":
        out[-1] = replace(last, tool_calls=(*(last.tool_calls or ()), call))
    else:
        out.append(Message("assistant", "", tool_calls=(call,)))


def _content(content: Any, where: str) -> str:
    """A string, or text parts (input_text; output_text in an assistant's turn)."""
    found = _parts(content, where, None)
    assert isinstance(found, str)  # no media where no policy is given
    return found


def _parts(content: Any, where: str, media: MediaPolicy | None) -> str | list[dict[str, Any]]:
    """The text, or with input_image parts (user messages: `media` given) the content as text
    and media parts in their order."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(where, f"'{where}' must be a string or an array of text parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}[{j}]"
        if kind == "input_image" and media is not None:
            parts.append(_image(part, at, media))
            continue
        if kind in ("input_image", "input_file", "input_audio"):
            why = "input_image parts go in user messages" if kind == "input_image" else "send text"
            raise invalid(at, f"'{kind}' parts are not supported here: {why}")
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise invalid(at, 'each part must be {"type": "input_text", "text": ...}')
        parts.append({"type": "text", "text": part["text"]})
    if any(p["type"] == "media" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def _image(part: dict[str, Any], at: str, media: MediaPolicy) -> dict[str, Any]:
    """input_image {image_url: a data: URI, base64, or an http(s) URL}; file_id needs a files
    API this server does not have."""
    if part.get("file_id") is not None and part.get("image_url") is None:
        raise invalid(f"{at}.file_id", "file ids are not supported: send image_url as a data: URI")
    where = f"{at}.image_url"
    try:
        return media_parts.media_part(media_parts.image(part.get("image_url"), media), where)
    except MediaError as e:
        raise invalid(where, e.reason) from None


# --- text.format, tools ---------------------------------------------------------------------
def _text_format(text: Any) -> tuple[str, dict[str, Any]]:
    """`text.format` as the grammar every token must keep matching ("" for text), and the
    format the response repeats. The grammar comes from the same converter as the chat's
    response_format; a schema it cannot enforce is a 400."""
    if text is None:
        return "", {"type": "text"}
    if not isinstance(text, dict):
        raise invalid("text", "'text' must be an object")
    if text.get("verbosity") not in (None, "medium"):
        raise invalid("text.verbosity", "'text.verbosity' is not supported by this server")
    fmt = text.get("format")
    if fmt is None:
        return "", {"type": "text"}
    param = "text.format"
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid(param, "'text.format' must be an object with a 'type'")
    from ..llama.grammar import constraint

    kind = fmt["type"]
    if kind == "text":
        return "", {"type": "text"}
    if kind == "json_object":
        return constraint(format="json"), {"type": "json_object"}
    if kind != "json_schema":
        raise invalid(
            param, f"'text.format' type {kind!r} is not supported (text, json_object, json_schema)"
        )
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise invalid(f"{param}.schema", "'text.format.schema' must be a JSON schema object")
    if fmt.get("strict") not in (None, True, False):
        raise invalid(f"{param}.strict", "'text.format.strict' must be true or false")
    try:
        grammar = constraint(json_schema=schema, names=(f"{param}.schema", "", ""))
    except UsageError as e:
        raise invalid(f"{param}.schema", str(e)) from None
    keep = ("type", "name", "description", "schema", "strict")
    return grammar, {k: fmt[k] for k in keep if k in fmt}


def _tools(body: dict[str, Any], request: TextRequest) -> tuple[list[dict[str, Any]], Any]:
    """`tools` (Responses' flat function shape), `tool_choice` and `parallel_tool_calls` into
    the request; the tools and choice as the response repeats them."""
    offered = _definitions(body.get("tools"))
    names = [t["function"]["name"] for t in offered]
    parallel = body.get("parallel_tool_calls")
    if parallel not in (None, True, False):
        raise invalid("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
    request.parallel_tool_calls = parallel is not False
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        name = choice.get("name")
        if choice.get("type") != "function" or not isinstance(name, str):
            raise invalid(
                "tool_choice",
                'tool_choice must be auto, none, required or {"type": "function", "name": ...}',
            )
        if name not in names:
            raise invalid("tool_choice", f"tool_choice names {name!r}, which is not in 'tools'")
        request.tool_choice, request.forced_tool = "required", name
    elif choice == "required":
        if not offered:
            raise invalid("tool_choice", "tool_choice 'required' needs 'tools'")
        request.tool_choice = choice
    elif choice not in ("auto", "none"):
        raise invalid("tool_choice", "'tool_choice' must be auto, none, required or a function")
    echoed = [_flat(t) for t in offered]
    if choice == "none" or not offered:
        return echoed, choice
    if request.tool_choice == "required" and "grammar" in request.sampling:
        raise invalid("tool_choice", "a required tool call and 'text.format' cannot be combined")
    request.tools = offered
    return echoed, choice


def _definitions(tools: Any) -> list[dict[str, Any]]:
    """Function tools in Responses' flat shape ({type, name, description, parameters,
    strict}), checked by the runtime's one validator; a refusal names `tools[i].field`."""
    from ..generation.tool_calls import ToolDefinitionError, definitions

    if tools in (None, []):
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid("tools", f"'tools' must be an array of at most {MAX_TOOLS} functions")
    wrapped = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            where = f"tools[{i}].type"
            raise invalid(where, f"only function tools are supported (got {kind!r})")
        if tool.get("strict") not in (None, True, False):
            raise invalid(f"tools[{i}].strict", "'strict' must be true or false")
        fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        wrapped.append({"type": "function", "function": fn})
    try:
        return definitions(wrapped, "tools")
    except ToolDefinitionError as e:
        where = f"tools[{e.index}]" + (f".{e.field}" if e.field else "")
        raise invalid(where, e.reason) from None


def _flat(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    return {
        "type": "function",
        "name": fn["name"],
        "description": fn.get("description"),
        "parameters": fn.get("parameters"),
        "strict": True,  # the grammar holds a call's arguments to its schema
    }


# --- answers --------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def status_of(reason: FinishReason) -> str:
    """A response's status: cut short (max_output_tokens, the context, a disconnect) is
    "incomplete", with incomplete_details.reason "max_output_tokens"."""
    return "incomplete" if reason in (FinishReason.LENGTH, FinishReason.CANCELLED) else "completed"


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def message_item(
    id: str, text: str, status: str, logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if status == "in_progress" else [text_part(text, logprobs)],
    }


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`logprobs`: the tokens' (include message.output_text.logprobs), else empty."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def call_item(id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    arguments = "" if status == "in_progress" else call.arguments
    return {
        "id": id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def response_object(
    id: str,
    created: int,
    model: str,
    echo: dict[str, Any],
    output: list[dict[str, Any]],
    status: str,
    used: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "usage": used,
        "error": error,
        "incomplete_details": incomplete,
        "store": False,  # stateless: nothing is kept
        **echo,
    }


def whole(model: str, echo: dict[str, Any], choice: Choice, used: dict[str, Any]) -> dict[str, Any]:
    """The response object of a whole answer: a message (the text before any calls), then a
    function_call item per call."""
    status = status_of(choice.reason)
    output = []
    if not choice.calls or choice.content:
        logprobs = shapes.responses(choice.logprobs) if choice.logprobs else None
        output.append(message_item(new_id("msg"), choice.content or "", status, logprobs))
    output += [call_item(new_id("fc"), call) for call in choice.calls]
    return response_object(new_id("resp"), int(time.time()), model, echo, output, status, used)


class EventFrames:
    """The Responses stream (an answer.StreamShaper): typed server-sent events, each with its
    `sequence_number`. A message item is opened at the first text and closed at a call or the
    end; each call is an item of its own with its arguments in one delta. The last event is
    response.completed (response.incomplete when cut short) with the whole response."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self, model: str, echo: dict[str, Any], on_error: Callable[[Exception], ApiError]
    ) -> None:
        self.id, self.created, self.model, self.echo = new_id("resp"), int(time.time()), model, echo
        self.on_error = on_error
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items done, for the final response
        self.message: dict[str, Any] | None = None  # the open message item
        self.text_so_far = ""
        self.logprobs_so_far: list[dict[str, Any]] = []  # the open message's tokens'
        self.status = "completed"
        # llama-server's telemetry, set by the route (telemetry.py): a progress event's fields,
        # the timings on each text delta (timings_per_token), and those of the last event
        self.telemetry: Callable[[Progress], dict[str, Any]] = lambda p: {}
        self.per_token: Callable[[], dict[str, Any]] | None = None
        self.timings: Callable[[], dict[str, Any]] | None = None

    def opening(self, choices: int) -> list[bytes]:
        return [self._life("response.created"), self._life("response.in_progress")]

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        opened = b"" if self.message is not None else self._open_message()
        self.text_so_far += text
        shaped = shapes.responses(logprobs)
        self.logprobs_so_far += shaped
        live = {"timings": self.per_token()} if self.per_token is not None else {}
        return opened + self._event(
            "response.output_text.delta",
            **self._at(),
            content_index=0,
            delta=text,
            logprobs=shaped,
            **live,
        )

    def progress(self, progress: Progress) -> bytes:
        """llama-server's progress: a response.in_progress event with the prompt's progress."""
        return self._event(
            "response.in_progress",
            response=self._response("in_progress", None),
            **self.telemetry(progress),
        )

    def call(self, index: int, k: int, call: ToolCall) -> bytes:
        out = self._close_message("completed")
        item = call_item(new_id("fc"), call, "in_progress")
        where = {"item_id": item["id"], "output_index": len(self.output)}
        out += self._event("response.output_item.added", output_index=len(self.output), item=item)
        out += self._event("response.function_call_arguments.delta", **where, delta=call.arguments)
        out += self._event(
            "response.function_call_arguments.done", **where, arguments=call.arguments
        )
        done = call_item(item["id"], call)
        out += self._event("response.output_item.done", output_index=len(self.output), item=done)
        self.output.append(done)
        return out

    def end(self, index: int, reason: FinishReason) -> bytes:
        self.status = status_of(reason)
        out = b""
        if self.message is None and not self.output:  # nothing said: an empty message
            out = self._open_message()
        return out + self._close_message(
            "incomplete" if self.status == "incomplete" else "completed"
        )

    def error(self, error: Exception) -> bytes:
        api = self.on_error(error)
        code = api.code or ("server_error" if api.status >= 500 else "invalid_request_error")
        failed = self._response("failed", None, {"code": code, "message": api.message})
        return self._event("error", code=code, message=api.message, param=api.param) + self._event(
            "response.failed", response=failed
        )

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        final = self._response(self.status, usage(prompt_tokens, completion_tokens))
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        timings = {"timings": self.timings()} if self.timings is not None else {}
        return [self._event(kind, response=final, **timings)]

    # --- the pieces ---
    def _open_message(self) -> bytes:
        self.message = message_item(new_id("msg"), "", "in_progress")
        self.text_so_far, self.logprobs_so_far = "", []
        added = self._event(
            "response.output_item.added", output_index=len(self.output), item=self.message
        )
        part = self._event(
            "response.content_part.added", **self._at(), content_index=0, part=text_part("")
        )
        return added + part

    def _close_message(self, status: str) -> bytes:
        if self.message is None:
            return b""
        text, at, logprobs = self.text_so_far, self._at(), self.logprobs_so_far
        out = self._event(
            "response.output_text.done", **at, content_index=0, text=text, logprobs=logprobs
        )
        out += self._event(
            "response.content_part.done", **at, content_index=0, part=text_part(text, logprobs)
        )
        done = message_item(self.message["id"], text, status, logprobs)
        out += self._event("response.output_item.done", output_index=len(self.output), item=done)
        self.output.append(done)
        self.message = None
        return out

    def _at(self) -> dict[str, Any]:
        assert self.message is not None
        return {"item_id": self.message["id"], "output_index": len(self.output)}

    def _response(
        self, status: str, used: dict[str, Any] | None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        output = list(self.output)
        return response_object(
            self.id, self.created, self.model, self.echo, output, status, used, error
        )

    def _life(self, kind: str) -> bytes:
        return self._event(kind, response=self._response("in_progress", None))

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {text}\n\n".encode()
