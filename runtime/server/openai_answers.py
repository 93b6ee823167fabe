"""OpenAI's answers: the choices that answer assembly (answer.py) made of the jobs' events,
shaped into whole answer objects (`answer_object`: chat.completion, text_completion) and
stream chunks (`ChunkStream`); finish reasons become OpenAI's words here and nowhere else.
Pure data: no HTTP, no starlette."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..generation.logprobs import TokenLogprob
from ..generation.tool_calls import ToolCall
from . import logprobs as shapes
from .backend import Choice, FinishReason, Progress
from .request_fields import ApiError

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
