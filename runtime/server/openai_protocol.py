"""OpenAI's protocol: a JSON body validated into a `TextRequest` (`parse_chat`,
`parse_completion`), and the choices that answer assembly (answer.py) made of the jobs' events
shaped back into answer objects (`answer_object`) and stream chunks (`ChunkStream`); finish
reasons become OpenAI's words here and nowhere else. Pure data: no HTTP, no starlette.

Every field the server cannot honour is refused with a 400 naming it, never silently ignored;
fields it does not know are ignored (OpenAI's clients send new ones all the time). Numbers are
checked for type and range before they reach the model side.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MediaError, OptionError
from ..generation.logprobs import TokenLogprob
from ..generation.templates import Message
from ..generation.tool_calls import ToolCall
from ..options import from_fields
from . import logit_bias, media_parts
from . import logprobs as shapes
from .backend import Choice, FinishReason, Progress, TextRequest
from .lora_fields import parse_lora
from .media_parts import NO_URLS, MediaPolicy

MAX_TOKENS_LIMIT = (
    1 << 20
)  # more than any context infer loads; a larger value is a typo or an attack
MAX_CHOICES = 128  # n; the backend refuses more than its slots first
MAX_STOP = 16  # OpenAI allows 4
MAX_STOP_CHARS = 1024
MAX_PROMPTS = 64  # /v1/completions with a list of prompts
MAX_MODEL_CHARS = 512
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An answer in OpenAI's error shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class ParsedRequest:
    """A validated request: which model, what to generate, how to answer."""

    model: str
    request: TextRequest  # prompt None for completions: one per entry of `prompts`
    prompts: list[str] = field(default_factory=list)  # /v1/completions only
    token_prompts: list[list[int | str]] = field(default_factory=list)  # ... as token ids
    stream: bool = False
    include_usage: bool = False

    def text_requests(self) -> list[TextRequest]:
        """The backend requests: the chat's one, or one per completion prompt."""
        from dataclasses import replace

        if self.token_prompts:
            return [replace(self.request, prompt_tokens=p) for p in self.token_prompts]
        if not self.prompts:
            return [self.request]
        return [replace(self.request, prompt=p) for p in self.prompts]


# --- field checks ---------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The table's options the body sets (runtime/options.py), by their OpenAI names, with the
    table's verdict on each; a 400 names the JSON field."""
    try:
        return dict(from_fields(body, "openai"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise invalid(name, f"'{name}' must be an integer (got {kind_of(value)})")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low} and {high} (got {value})")
    return int(value)


def boolean(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A true/false field (absent or null: `default`), else a 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be true or false (got {kind_of(value)})")
    return value


def kind_of(value: Any) -> str:
    """A JSON value's kind in words, for 400s ("an array", "null")."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def model_name(
    body: dict[str, Any], invalid_name: str = "'model' is not a valid model name"
) -> str:
    """The model a body names; "" when it names none (absent, null or ""), which the backend
    answers with the first model named at start, as llama-server and vLLM do."""
    model = body.get("model")
    if model is None or model == "":
        return ""
    if not isinstance(model, str) or not model.strip():
        raise invalid("model", f"'model' must be a model's name (got {kind_of(model)})")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise invalid("model", invalid_name)
    return model


def stop_strings(body: dict[str, Any], *, drop_empty: bool = False) -> list[str]:
    """`stop`: a string or an array of at most MAX_STOP, each 1 to MAX_STOP_CHARS characters;
    `drop_empty`: "" is left out instead (llama-server's doors drop it)."""
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop", "'stop' must be a string or an array of strings")
    if drop_empty:
        items = [s for s in items if s]
    if len(items) > MAX_STOP:
        raise invalid("stop", f"'stop' may hold at most {MAX_STOP} strings (got {len(items)})")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise invalid("stop", f"each 'stop' string must be 1 to {MAX_STOP_CHARS} characters")
    return list(items)


def _refuse_unsupported(body: dict[str, Any], completions: bool) -> None:
    """The OpenAI features this server cannot honour: a 400 naming each, unless the field holds
    its neutral value (what a client sends when it does not use the feature)."""
    for name in ("functions", "function_call", "audio", "prediction"):
        if body.get(name) not in (None, [], {}):
            hint = " (use 'tools' and 'tool_choice')" if "function" in name else ""
            raise invalid(name, f"'{name}' is not supported by this server{hint}")
    if completions:
        for name in ("tools", "tool_choice"):
            if body.get(name) not in (None, [], "none"):
                raise invalid(name, f"'{name}' is only supported by /v1/chat/completions")
    # vLLM's and llama-server's assistant prefill: the answer would go on from the last
    # assistant message; infer always starts a new turn, so asking for it is refused
    if body.get("continue_final_message") not in (None, False):
        raise invalid(
            "continue_final_message", "'continue_final_message' is not supported by this server"
        )
    if body.get("add_generation_prompt") not in (None, True):
        raise invalid(
            "add_generation_prompt",
            "'add_generation_prompt: false' is not supported by this server",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid("modalities", "only the 'text' modality is supported")
    if completions:
        if body.get("echo") not in (None, False):
            raise invalid("echo", "'echo' is not supported by this server")
        if body.get("best_of") not in (None, 1):
            raise invalid("best_of", "'best_of' other than 1 is not supported by this server")
        if body.get("suffix") not in (None, ""):
            raise invalid("suffix", "'suffix' (insertion) is not supported by this server")


def _response_format(fmt: Any) -> str:
    """`response_format` as the grammar every token must keep matching ("" for text):
    {"type": "json_object"} is llama.cpp's JSON grammar; {"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}} the schema's, refused (400) where the converter could not
    enforce it. Any other shape is refused too."""
    param = "response_format"
    if fmt is None:
        return ""
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid(param, "'response_format' must be an object with a 'type'")
    kind = fmt["type"]
    if kind == "text":
        return ""
    from ..errors import UsageError
    from ..llama.grammar import constraint

    if kind == "json_object":
        schema = fmt.get("schema")  # llama.cpp's extension: json_object held to a schema
        if schema is None:
            return constraint(format="json")
        if not isinstance(schema, dict):
            raise invalid(param, "'response_format.schema' must be a JSON schema object")
        try:
            return constraint(json_schema=schema, names=("response_format.schema", "", ""))
        except UsageError as e:
            raise invalid(param, str(e)) from None
    if kind != "json_schema":
        raise invalid(
            param,
            f"'response_format' type {kind!r} is not supported (text, json_object, json_schema)",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid(param, "'response_format.json_schema' must be an object")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid(param, "'response_format.json_schema.name' must be a string")
    if spec.get("strict") not in (None, True, False):
        raise invalid(param, "'response_format.json_schema.strict' must be true or false")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalid(param, "'response_format.json_schema.schema' must be a JSON schema object")
    try:
        return constraint(json_schema=schema, names=("response_format.json_schema.schema", "", ""))
    except UsageError as e:
        raise invalid(param, str(e)) from None


def llama_grammar(body: dict[str, Any]) -> str:
    """llama.cpp's extensions `json_schema` (a schema held to as response_format's is) and
    `grammar` (GBNF), checked as --grammar is; "" when neither is set."""
    from ..errors import UsageError
    from ..llama.grammar import constraint

    schema, grammar = body.get("json_schema"), body.get("grammar")
    try:
        if schema is not None:
            if not isinstance(schema, dict):
                raise invalid("json_schema", "'json_schema' must be a JSON schema object")
            return constraint(json_schema=schema, names=("json_schema", "", ""))
        if grammar is not None and grammar != "":
            if not isinstance(grammar, str):
                raise invalid("grammar", "'grammar' must be a string (GBNF)")
            return constraint(grammar=grammar, names=("", "grammar", ""))
    except UsageError as e:
        raise invalid("json_schema" if schema is not None else "grammar", str(e)) from None
    return ""


def _common(body: dict[str, Any], completions: bool) -> tuple[TextRequest, bool, bool]:
    _refuse_unsupported(body, completions)
    sampling = _sampling(body)
    limit = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    if not completions:
        newer = _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
        limit = newer if newer is not None else limit
    elif limit is None and "max_tokens" not in body:
        limit = 16  # OpenAI's default for the legacy completions endpoint
    n = _integer(body, "n", 1, MAX_CHOICES)
    stream = boolean(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options", "'stream_options' is only allowed with 'stream': true")
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object")
        include_usage = boolean(options, "include_usage")
    grammar = _response_format(body.get("response_format")) or llama_grammar(body)
    if grammar:
        sampling["grammar"] = grammar
    try:
        bias = logit_bias.parse_openai(body.get("logit_bias"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None
    if bias:
        sampling["logit_bias"] = bias
    request = TextRequest(sampling=sampling, max_tokens=limit, stop=stop_strings(body), n=n or 1)
    request.logprobs = shapes.openai_requested(body, completions, invalid)
    # llama.cpp's extension: generate past end-of-generation tokens (benchmarks want exact
    # lengths); with no max_tokens it would run to the end of the context.
    request.ignore_eos = boolean(body, "ignore_eos")
    try:
        request.lora = parse_lora(body.get("lora"))  # llama-server's per-request LoRA scales
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None
    return request, stream, include_usage


# --- the two endpoints ----------------------------------------------------------------------
def parse_chat(body: Any, media: MediaPolicy = NO_URLS) -> ParsedRequest:
    """A /v1/chat/completions body → the request, or ApiError (400) naming the field. Images
    and audio in user messages become media parts (media_parts.py, under `media`'s rules)."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    messages = _messages(body.get("messages"), media)
    request, stream, include_usage = _common(body, completions=False)
    request.messages = messages
    _tools(body, request)
    return ParsedRequest(model, request, stream=stream, include_usage=include_usage)


def parse_completion(body: Any) -> ParsedRequest:
    """A /v1/completions body → the request (one prompt per entry of a list; a prompt may be
    token ids, as llama-server takes them), or ApiError."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    prompt = body.get("prompt")
    prompts: list[str] = []
    tokens: list[list[int | str]] = []
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(p) for p in prompt):
        tokens = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)
    ):
        tokens = [list(p) for p in prompt]
    else:
        raise invalid(
            "prompt", "'prompt' must be a string, an array of strings, or token ids (arrays)"
        )
    if len(prompts) + len(tokens) > MAX_PROMPTS:
        raise invalid("prompt", f"at most {MAX_PROMPTS} prompts per request")
    request, stream, include_usage = _common(body, completions=True)
    return ParsedRequest(model, request, prompts, tokens, stream, include_usage)


MAX_TOOLS = 128


def _tools(body: dict[str, Any], request: TextRequest) -> None:
    """`tools`, `tool_choice` and `parallel_tool_calls` into the request (tool_choice "none":
    no tools are offered to the model at all)."""
    offered = _definitions(body.get("tools"))
    names = [t["function"]["name"] for t in offered]
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto" if offered else "none"
    request.parallel_tool_calls = body.get("parallel_tool_calls") is not False
    if body.get("parallel_tool_calls") not in (None, True, False):
        raise invalid("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise invalid(
                "tool_choice",
                "'tool_choice' must be auto, none, required or "
                '{"type": "function", "function": {"name": ...}}',
            )
        if name not in names:
            raise invalid("tool_choice", f"tool_choice names {name!r}, which is not in 'tools'")
        request.tool_choice, request.forced_tool = "required", name
    elif choice in ("auto", "required"):
        if not offered:
            raise invalid("tool_choice", f"tool_choice {choice!r} needs 'tools'")
        request.tool_choice = choice
    elif choice != "none":
        raise invalid("tool_choice", "'tool_choice' must be auto, none, required or a function")
    if choice == "none":
        return
    if request.tool_choice == "required" and "grammar" in request.sampling:
        raise invalid(
            "tool_choice", "a required tool call and 'response_format' cannot be combined"
        )
    request.tools = offered


def _definitions(tools: Any) -> list[dict[str, Any]]:
    """`tools` in OpenAI's wire shape, checked by the runtime's one validator of function
    definitions; its refusal is a 400 naming the field (`tools[2].function.name`)."""
    from ..generation.tool_calls import ToolDefinitionError, definitions

    if tools in (None, []):
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid("tools", f"'tools' must be an array of at most {MAX_TOOLS} functions")
    for i, tool in enumerate(tools):  # OpenAI's shape only: no bare {"name", ...} over HTTP
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            where = f"tools[{i}]"
            raise invalid(where, f'\'{where}\' must be {{"type": "function", "function": {{...}}}}')
    try:
        return definitions(tools, "tools")
    except ToolDefinitionError as e:
        where = f"tools[{e.index}]" + (f".function.{e.field}" if e.field else "")
        raise invalid(where, e.reason) from None


def _tool_calls(calls: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(calls, list) or not calls:
        raise invalid(where, f"'{where}' must be a non-empty array of calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(
                at,
                f'\'{at}\' must be {{"id", "type": "function", "function": {{name, arguments}}}}',
            )
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except ValueError:
                raise invalid(f"{at}.function.arguments", "'arguments' must be JSON text") from None
        if not isinstance(args, dict):
            raise invalid(f"{at}.function.arguments", "'arguments' must be a JSON object")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise invalid(f"{at}.id", "a call's 'id' must be a string")
        out.append(
            {
                "id": call_id or f"call_{j}",
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return tuple(out)


def _messages(messages: Any, media: MediaPolicy = NO_URLS) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty array of messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, f"'{where}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if role == "function" or m.get("function_call"):
            raise invalid(f"{where}.role", "function messages are not supported: use tool")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"{where}.tool_call_id", "a tool message needs its 'tool_call_id'")
            name = m.get("name") if isinstance(m.get("name"), str) else None
            text = _content(m.get("content"), f"{where}.content")
            out.append(Message("tool", text, tool_call_id=call_id, name=name))
            continue
        if not isinstance(role, str) or role not in ROLES:
            known = ", ".join(r for r in [*ROLES, "tool"] if r != "developer")
            raise invalid(f"{where}.role", f"unknown role {role!r} (use one of: {known})")
        if role == "assistant" and m.get("tool_calls") not in (None, []):
            calls = _tool_calls(m.get("tool_calls"), f"{where}.tool_calls")
            content = m.get("content")
            text = "" if content is None else _content(content, f"{where}.content")
            out.append(Message("assistant", text, tool_calls=calls))
            continue
        policy = media if role == "user" else None
        out.append(
            Message(ROLES[role], _user_content(m.get("content"), f"{where}.content", policy))
        )
    return out


def _content(content: Any, where: str, media: MediaPolicy | None = None) -> str:
    """A message's text; its image and audio parts only where `media` is given (user
    messages): see _user_content."""
    found = _user_content(content, where, media)
    if isinstance(found, list):  # only reached with media=None refused above
        raise invalid(where, "images and audio go in user messages")
    return found


def _user_content(
    content: Any, where: str, media: MediaPolicy | None
) -> str | list[dict[str, Any]]:
    """The text, or with image_url / input_audio parts the content as text and media parts
    (runtime/media.py) in their order; a 400 names the part that cannot be used."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(where, f"'{where}' must be a string or an array of text parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}[{j}]"
        if kind in ("image_url", "input_audio") and media is None:
            raise invalid(at, f"'{kind}' parts go in user messages")
        if kind == "image_url":
            parts.append(_image_part(part, at, media or NO_URLS))
            continue
        if kind == "input_audio":
            parts.append(_audio_part(part, at, media or NO_URLS))
            continue
        if kind in ("input_image", "image", "file", "audio"):
            raise invalid(at, f"'{kind}' parts are not supported: use image_url or input_audio")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise invalid(at, 'each part must be {"type": "text", "text": "..."}')
        parts.append({"type": "text", "text": part["text"]})
    if not any(p["type"] == "media" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _image_part(part: dict[str, Any], at: str, media: MediaPolicy) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec  # some clients send the string
    where = f"{at}.image_url"
    try:
        return media_parts.media_part(media_parts.image(url, media), where)
    except MediaError as e:
        raise invalid(where, e.reason) from None


def _audio_part(part: dict[str, Any], at: str, media: MediaPolicy) -> dict[str, Any]:
    spec = part.get("input_audio")
    where = f"{at}.input_audio"
    if not isinstance(spec, dict):
        raise invalid(where, 'must be {"data": "<base64>", "format": "wav"}')
    try:
        return media_parts.media_part(
            media_parts.audio(spec.get("data"), spec.get("format"), media), where
        )
    except MediaError as e:
        raise invalid(where, e.reason) from None


# --- answers --------------------------------------------------------------------------------
# OpenAI has no "cancelled": an answer cut short by a disconnect or shutdown is "length".
FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
}


def finish_reason(reason: FinishReason) -> str:
    """A choice's finish reason in OpenAI's words."""
    return FINISH[reason]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def answer_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


def answer_object(
    chat: bool, model: str, choices: Sequence[Choice], used: dict[str, int]
) -> dict[str, Any]:
    """A whole answer: chat.completion or text_completion."""
    id, created = answer_id(chat), int(time.time())
    if chat:
        return chat_answer(id, created, model, choices, used)
    return completion_answer(id, created, model, choices, used)


def chat_answer(
    id: str, created: int, model: str, choices: Sequence[Choice], used: dict[str, int]
) -> dict[str, Any]:
    """A choice with calls has them as OpenAI's tool_calls, with the text before them."""
    out = []
    for i, choice in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        if choice.calls:
            message = {"role": "assistant", "content": choice.content}
            message["tool_calls"] = [c.openai() for c in choice.calls]
        logprobs = None if choice.logprobs is None else shapes.chat(choice.logprobs)
        out.append(
            {
                "index": i,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason(choice.reason),
            }
        )
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": out,
        "usage": used,
    }


def completion_answer(
    id: str, created: int, model: str, choices: Sequence[Choice], used: dict[str, int]
) -> dict[str, Any]:
    out = [
        {
            "index": i,
            "text": c.text,
            "logprobs": None if c.logprobs is None else shapes.completion(c.logprobs),
            "finish_reason": finish_reason(c.reason),
        }
        for i, c in enumerate(choices)
    ]
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": out,
        "usage": used,
    }


class ChunkStream:
    """OpenAI's server-sent events for one answer (an answer.StreamShaper): the chat's role
    chunk per choice, a chunk per text piece, two per tool call (its head: id, type, name;
    then its arguments), one per finish, the usage chunk when asked for, then `data: [DONE]`.
    Every chunk has the same id, created and model. `on_error` maps a failure to the error
    object that ends a stream cut short."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self, model: str, chat: bool, include_usage: bool, on_error: Callable[[Exception], ApiError]
    ) -> None:
        self.id, self.created, self.model, self.chat = (
            answer_id(chat),
            int(time.time()),
            model,
            chat,
        )
        self.include_usage, self.on_error = include_usage, on_error
        self._offsets: dict[int, int] = {}  # completions' logprobs: each choice's text so far
        # llama-server's `timings`, added to the usage chunk when the route can tell them
        self.timings: Callable[[], dict[str, Any]] | None = None
        # a progress frame's fields (telemetry.py), set by the route when return_progress
        self.telemetry: Callable[[Progress], dict[str, Any]] = lambda p: {}

    def opening(self, choices: int) -> list[bytes]:
        if not self.chat:  # completions have no roles
            return []
        # content null, not "": llama-server's form, which llama.cpp's clients expect (a
        # content delta there is never empty); OpenAI's clients read both
        return [self._chunk(i, {"role": "assistant", "content": None}) for i in range(choices)]

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        shaped = None
        if self.chat:
            shaped = shapes.chat(logprobs) if logprobs else None
        else:
            offset = self._offsets.get(index, 0)
            self._offsets[index] = offset + len(text)
            shaped = shapes.completion(logprobs, offset) if logprobs else None
        return self._chunk(index, {"content": text}, logprobs=shaped)

    def call(self, index: int, k: int, call: ToolCall) -> bytes:
        head = {"index": k, "id": call.id, "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        arguments = {"index": k, "function": {"arguments": call.arguments}}
        return self._chunk(index, {"tool_calls": [head]}) + self._chunk(
            index, {"tool_calls": [arguments]}
        )

    def end(self, index: int, reason: FinishReason) -> bytes:
        return self._chunk(index, {}, finish_reason(reason))

    def error(self, error: Exception) -> bytes:
        return _event(self.on_error(error).body())

    def progress(self, progress: Progress) -> bytes:
        """llama-server's progress chunk: an empty delta (the chat's role) and the fields."""
        delta = {"role": "assistant", "content": None} if self.chat else {"content": ""}
        return _event(self._wrap([self._choice(0, delta)]) | self.telemetry(progress))

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        done = b"data: [DONE]\n\n"
        if not self.include_usage:
            return [done]
        used = {**self._wrap([]), "usage": usage(prompt_tokens, completion_tokens)}
        if self.timings is not None:
            used["timings"] = self.timings()
        return [_event(used), done]

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return _event(self._wrap([self._choice(index, delta, reason, logprobs)]))

    def _choice(
        self,
        index: int,
        delta: dict[str, Any],
        reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.chat:
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        text = delta.get("content", "")
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def _wrap(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return {**head, "choices": choices}


def _event(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"
