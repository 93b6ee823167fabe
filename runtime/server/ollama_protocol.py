"""Ollama's native protocol (`/api/chat`, `/api/generate`, `/api/embed`…): a JSON body
validated into the core `TextRequest`, and the choices answer assembly (answer.py) made shaped
back into Ollama's objects and NDJSON stream lines. Pure data: no HTTP, no starlette.

Ollama's wire conventions, kept here and nowhere else: streaming is on unless `"stream":
false`; errors are `{"error": "..."}`; durations are nanoseconds; the last object carries
`done`, `done_reason` and the counts. Sampling `options` go through the one option table
(runtime/options.py, by `Option.ollama`); the options infer cannot honour are ignored, as
Ollama itself ignores the ones a runner does not know (docs/serve.md lists them).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import MediaError, OptionError, UsageError
from ..generation.infill import Infill
from ..generation.logprobs import TokenLogprob
from ..generation.templates import Message
from ..generation.tool_calls import ToolCall
from ..options import from_fields
from . import logprobs as shapes
from . import media_parts
from .backend import Choice, FinishReason, TextRequest

VERSION = "0.12.0"  # what /api/version reports: clients gate features on it (Copilot: >= 0.6.4)
MEDIA_TYPE = "application/x-ndjson"
MAX_MODEL_CHARS = 512
MAX_TOOLS = 128
MAX_STOP = 16
MAX_STOP_CHARS = 1024
MAX_INPUTS = 2048
MAX_TOKENS_LIMIT = 1 << 20
ROLES = ("system", "user", "assistant", "tool")
# Ollama options with no meaning here (the runner's own settings, mirostat, typical_p…): ignored,
# as docs/serve.md says. num_ctx too: the context per sequence is set when the model loads.
_HANDLED = {"num_predict", "stop", "num_ctx"}


class OllamaError(Exception):
    """An answer in Ollama's error shape, `{"error": message}`, with its HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


def invalid(field: str, problem: str) -> OllamaError:
    """A 400 whose message starts with the field it is about."""
    return OllamaError(400, f"{field}: {problem}")


class Unset:
    """`keep_alive` not given: the pool's own rule applies (distinct from None, "forever")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass
class OllamaRequest:
    """A validated /api/chat or /api/generate body. `request` is None for a body with nothing
    to generate (no messages, an empty prompt): Ollama's way to load or unload a model."""

    model: str  # as the client named it (answers echo it)
    ref: str  # the name infer resolves (`:latest` and `hf.co/` dropped)
    request: TextRequest | None
    stream: bool = True
    keep_alive: float | Unset | None = UNSET


# --- names ----------------------------------------------------------------------------------
def model_ref(name: str) -> str:
    """What infer resolves for a name as Ollama clients send it: `smollm2:latest` is the alias
    `smollm2`; `hf.co/owner/repo:Q4_K_M` is the Hub model `owner/repo:Q4_K_M`."""
    for prefix in ("hf.co/", "huggingface.co/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.removesuffix(":latest")


def ollama_name(model_id: str) -> str:
    """A served model's name as Ollama lists it: `name:tag` (`:latest` where it has no tag)."""
    return model_id if ":" in model_id else model_id + ":latest"


def _model(body: dict[str, Any]) -> str:
    model = body.get("model", body.get("name"))  # older clients send `name`
    if not isinstance(model, str) or not model.strip():
        raise invalid("model", "required: the name of a model this server can run")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise invalid("model", "not a valid model name")
    return model


# --- keep_alive -----------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive(value: Any) -> float | Unset | None:
    """Seconds to keep the model loaded after this request: a number (seconds) or a Go duration
    ("5m", "1h30m", "-1"); 0 unloads it once idle, a negative value keeps it (None)."""
    if value is None:
        return UNSET
    if isinstance(value, bool):
        raise invalid("keep_alive", 'must be a duration ("5m", "1h") or a number of seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _go_duration(value.strip())
    else:
        raise invalid("keep_alive", 'must be a duration ("5m", "1h") or a number of seconds')
    if not math.isfinite(seconds):
        raise invalid("keep_alive", f"not a duration: {value!r}")
    return None if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    try:
        return sign * float(rest)  # "300", "-1": seconds, as Ollama accepts too
    except ValueError:
        pass
    total, at = 0.0, 0
    for m in _DURATION.finditer(rest):
        if m.start() != at:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        at = m.end()
    if not rest or at != len(rest):
        raise invalid("keep_alive", f'not a duration: {text!r} (e.g. "5m", "1h", "30s", -1)')
    return sign * total


# --- options --------------------------------------------------------------------------------
def _options(body: dict[str, Any], request: TextRequest) -> None:
    """Ollama's `options` into the request: the sampling options by their Ollama names through
    the one option table, num_predict as max_tokens, stop; the rest ignored."""
    options = body.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise invalid("options", "must be an object")
    try:
        request.sampling.update(from_fields(options, "ollama"))
    except OptionError as e:
        raise invalid(f"options.{e.option}", e.problem) from None
    for key, value in options.items():
        if value is None:
            continue
        where = f"options.{key}"
        if key == "num_predict":
            request.max_tokens = _num_predict(value)
        elif key == "stop":
            request.stop = _stop(value, where)


def _num_predict(value: Any) -> int | None:
    """Tokens to generate; -1 (no limit) and -2 (fill the context) both run to the end."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("options.num_predict", f"must be an integer (got {value!r})")
    if value in (-1, -2):
        return None
    if not 1 <= value <= MAX_TOKENS_LIMIT:
        raise invalid("options.num_predict", f"must be -1, -2 or 1 to {MAX_TOKENS_LIMIT}")
    return value


def _stop(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid(where, "must be a string or an array of strings")
    if len(items) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in items):
        raise invalid(where, f"at most {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} characters")
    return list(items)


def _format(value: Any) -> str:
    """`format`: "json" (any JSON) or a JSON schema, as the grammar every token keeps to."""
    from ..llama.grammar import constraint

    if value in (None, ""):
        return ""
    if value == "json":
        return constraint(format="json")
    if not isinstance(value, dict):
        raise invalid("format", 'must be "json" or a JSON schema object')
    try:
        return constraint(json_schema=value, names=("format", "", ""))
    except UsageError as e:
        raise invalid("format", str(e)) from None


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false (got {value!r})")
    return value


def _refuse(body: dict[str, Any], names: Sequence[str]) -> None:
    """Fields this server cannot honour: a 400 naming each, unless empty."""
    reasons = {
        "template": "a custom prompt template is not supported: the model's own is used",
        "context": "the deprecated 'context' token array is not supported: send the messages",
    }
    for name in names:
        if body.get(name) not in (None, "", [], False, 0):
            raise invalid(name, reasons[name])


def _common(body: dict[str, Any], names: Sequence[str]) -> tuple[TextRequest, bool]:
    _refuse(body, names)
    request = TextRequest()
    _options(body, request)
    request.logprobs = shapes.ollama_requested(body, invalid)
    grammar = _format(body.get("format"))
    if grammar:
        request.sampling["grammar"] = grammar
    return request, _boolean(body, "stream", True)


# --- the endpoints --------------------------------------------------------------------------
def parse_chat(body: Any) -> OllamaRequest:
    """An /api/chat body → the request, or OllamaError (400) naming the field."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    model = _model(body)
    request, stream = _common(body, ())
    alive = keep_alive(body.get("keep_alive"))
    raw = body.get("messages")
    if raw is None or raw == []:  # Ollama's load / unload request
        return OllamaRequest(model, model_ref(model), None, stream, alive)
    request.messages = _messages(raw)
    tools = _definitions(body.get("tools"))
    if tools:
        request.tools, request.tool_choice = tools, "auto"
    return OllamaRequest(model, model_ref(model), request, stream, alive)


def parse_generate(body: Any) -> OllamaRequest:
    """An /api/generate body → the request: the prompt as the user's turn (after `system`)
    rendered with the model's chat template, or as plain text with `raw`."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    model = _model(body)
    request, stream = _common(body, ("template", "context"))
    alive = keep_alive(body.get("keep_alive"))
    prompt, system = body.get("prompt"), body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise invalid("prompt", "must be a string")
    if system is not None and not isinstance(system, str):
        raise invalid("system", "must be a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("suffix", "must be a string")
    if not prompt:  # Ollama's load / unload request
        return OllamaRequest(model, model_ref(model), None, stream, alive)
    if suffix:  # fill-in-the-middle: the prompt is the code before the gap (generation/infill)
        if body.get("images") not in (None, []):
            raise invalid("images", "images do not combine with 'suffix' (fill-in-the-middle)")
        request.infill, request.infill_field = Infill(prompt, suffix), "suffix"
    elif _boolean(body, "raw", False):
        if body.get("images") not in (None, []):
            raise invalid("images", "images need the chat template: leave 'raw' off")
        request.prompt = prompt
    else:
        request.messages = [Message("system", system)] if system else []
        images = body.get("images")
        content = _with_images(prompt, images, "images") if images not in (None, []) else prompt
        request.messages.append(Message("user", content))
    return OllamaRequest(model, model_ref(model), request, stream, alive)


def _with_images(text: str, images: Any, where: str) -> list[dict[str, Any]]:
    """A user turn's content with Ollama's images (base64 strings): the images first, then the
    text, as Ollama and llama-mtmd-cli place them."""
    if not isinstance(images, list):
        raise invalid(where, "must be an array of base64-encoded images")
    parts: list[dict[str, Any]] = []
    for k, data in enumerate(images):
        try:
            parts.append(
                media_parts.media_part(media_parts.from_base64(data, "image"), f"{where}[{k}]")
            )
        except MediaError as e:
            raise invalid(f"{where}[{k}]", e.reason) from None
    return [*parts, {"type": "text", "text": text}] if text else parts


def _messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list):
        raise invalid("messages", "must be an array of messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"unknown role {role!r} (use {', '.join(ROLES)})")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise invalid(f"{where}.content", "must be a string")
        if m.get("images") not in (None, []):
            if role != "user":
                raise invalid(f"{where}.images", "images go in user messages")
            out.append(Message(role, _with_images(content, m["images"], f"{where}.images")))
            continue
        if role == "tool":
            name = m.get("tool_name", m.get("name"))
            name = name if isinstance(name, str) else None
            call_id = m.get("tool_call_id")
            call_id = call_id if isinstance(call_id, str) and call_id else f"call_{i}"
            out.append(Message("tool", content, tool_call_id=call_id, name=name))
        elif role == "assistant" and m.get("tool_calls") not in (None, []):
            calls = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
            out.append(Message("assistant", content, tool_calls=calls))
        else:
            out.append(Message(role, content))
    return out


def _tool_calls(calls: Any, where: str) -> tuple[dict[str, Any], ...]:
    """An assistant's calls in Ollama's shape (arguments as an object), as the templates take
    them (OpenAI's shape with the arguments as a dict)."""
    if not isinstance(calls, list):
        raise invalid(where, "must be an array of calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(at, 'must be {"function": {"name": ..., "arguments": {...}}}')
        args = fn.get("arguments") or {}
        if isinstance(args, str):  # some clients send OpenAI's text form
            try:
                args = json.loads(args)
            except ValueError:
                raise invalid(f"{at}.function.arguments", "must be a JSON object") from None
        if not isinstance(args, dict):
            raise invalid(f"{at}.function.arguments", "must be an object")
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{j}"
        function = {"name": fn["name"], "arguments": args}
        out.append({"id": call_id, "type": "function", "function": function})
    return tuple(out)


def _definitions(tools: Any) -> list[dict[str, Any]]:
    """`tools` (OpenAI's function shape, which Ollama's is), through the runtime's one validator
    of function definitions; a refusal names the field."""
    from ..generation.tool_calls import ToolDefinitionError, definitions

    if tools in (None, []):
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid("tools", f"must be an array of at most {MAX_TOOLS} functions")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise invalid(f"tools[{i}]", 'must be {"type": "function", "function": {...}}')
    try:
        return definitions(tools, "tools")
    except ToolDefinitionError as e:
        where = f"tools[{e.index}]" + (f".function.{e.field}" if e.field else "")
        raise invalid(where, e.reason) from None


@dataclass
class EmbedRequest:
    model: str
    ref: str
    inputs: list[str]
    keep_alive: float | Unset | None
    legacy: bool  # /api/embeddings: one `prompt`, one `embedding`


def parse_embed(body: Any, legacy: bool) -> EmbedRequest:
    """An /api/embed body (`input`: a string or strings) or an /api/embeddings one (`prompt`)."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    model = _model(body)
    name = "prompt" if legacy else "input"
    value = body.get(name)
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        raise invalid(name, "must be a string" + ("" if legacy else " or an array of strings"))
    if len(inputs) > MAX_INPUTS:
        raise invalid(name, f"at most {MAX_INPUTS} inputs per request")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        raise invalid("dimensions", "shortening vectors is not supported: leave it out")
    return EmbedRequest(model, model_ref(model), inputs, keep_alive(body.get("keep_alive")), legacy)


# --- answers --------------------------------------------------------------------------------
DONE = {
    FinishReason.STOP: "stop",
    FinishReason.TOOL_CALLS: "stop",  # Ollama's tool calls end with "stop"
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "length",  # cut short (disconnect, shutdown): not a full answer
}


@dataclass
class Timing:
    """A request's clock, for the durations of the last object (nanoseconds)."""

    started: float = field(default_factory=time.monotonic)  # before the model was looked up
    load_s: float = 0.0  # submit: loading the model if needed, rendering, tokenizing
    ttft_s: float | None = None  # from submit to the first token: the prompt's evaluation

    def metrics(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        total = time.monotonic() - self.started
        prompt = self.ttft_s or 0.0
        generation = max(0.0, total - self.load_s - prompt)
        return {
            "total_duration": _ns(total),
            "load_duration": _ns(self.load_s),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": _ns(prompt),
            "eval_count": completion_tokens,
            "eval_duration": _ns(generation),
        }


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def now() -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def call_object(call: ToolCall) -> dict[str, Any]:
    """A tool call in Ollama's shape: the arguments as an object."""
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        args = {}
    return {"id": call.id, "function": {"name": call.name, "arguments": args}}


def message(content: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = [call_object(c) for c in calls]
    return out


def answer_object(
    chat: bool, model: str, choice: Choice, metrics: dict[str, Any]
) -> dict[str, Any]:
    """A whole answer: /api/chat's message or /api/generate's response, and the metrics."""
    head: dict[str, Any] = {"model": model, "created_at": now()}
    if chat:
        content = choice.text if not choice.calls else choice.content or ""
        head["message"] = message(content, choice.calls)
    else:
        head["response"] = choice.text
    if choice.logprobs is not None:
        head["logprobs"] = shapes.ollama(choice.logprobs)
    return {**head, "done": True, "done_reason": DONE[choice.reason], **metrics}


def empty_answer(chat: bool, model: str, reason: str) -> dict[str, Any]:
    """The answer to a load ("load") or unload ("unload") request: nothing generated."""
    body: dict[str, Any] = {"model": model, "created_at": now()}
    body.update({"message": message("")} if chat else {"response": ""})
    return {**body, "done": True, "done_reason": reason}


def line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class NdjsonStream:
    """Ollama's stream for one answer (an answer.StreamShaper): one JSON line per piece of
    text (or per tool call), then the last line with `done: true`, the reason and the metrics;
    a failure midway ends it with `{"error": ...}`."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        model: str,
        chat: bool,
        timing: Timing,
        ttft: Callable[[], float | None],
        on_error: Callable[[Exception], OllamaError],
    ) -> None:
        self.model, self.chat, self.timing, self.ttft = model, chat, timing, ttft
        self.on_error = on_error
        self.reason = FinishReason.STOP

    def opening(self, choices: int) -> list[bytes]:
        return []

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        part = self._part(text)
        if logprobs:
            part["logprobs"] = shapes.ollama(logprobs)
        return line(part)

    def call(self, index: int, k: int, call: ToolCall) -> bytes:
        return line(self._part("", [call]))

    def end(self, index: int, reason: FinishReason) -> bytes:
        self.reason = reason  # the last line, with the counts, comes from closing()
        return b""

    def error(self, error: Exception) -> bytes:
        return line(self.on_error(error).body())

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        self.timing.ttft_s = self.ttft()
        last = {**self._part(""), "done": True, "done_reason": DONE[self.reason]}
        return [line({**last, **self.timing.metrics(prompt_tokens, completion_tokens)})]

    def _part(self, text: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": now()}
        body.update({"message": message(text, calls)} if self.chat else {"response": text})
        return {**body, "done": False}
