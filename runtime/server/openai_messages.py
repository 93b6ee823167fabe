"""The chat's `messages` and `tools` in OpenAI's wire shape, read into the runtime's messages
(text, tool calls and results, image and audio parts through media_parts) and the request's
tools (`tools`, `tool_choice`, `parallel_tool_calls`); every refusal a 400 naming the field
(`messages[2].content[1].image_url`, `tools[0].function.name`). Pure data: no HTTP."""

from __future__ import annotations

import json
from typing import Any

from ..errors import MediaError
from ..generation.templates import Message
from . import media_parts
from .backend import TextRequest
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import invalid

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_TOOLS = 128


def chat_messages(messages: Any, media: MediaPolicy = NO_URLS) -> list[Message]:
    """`messages` → the conversation, or ApiError (400) naming the message or part. Images
    and audio in user messages become media parts (media_parts.py, under `media`'s rules)."""
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


def chat_tools(body: dict[str, Any], request: TextRequest) -> None:
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
