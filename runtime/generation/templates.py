"""Chat prompts: render the GGUF's chat template safely and tokenize it without letting user text
become control tokens.

A chat template is untrusted code shipped inside a downloaded file (llama-cpp-python
CVE-2024-34359 was Jinja SSTI to RCE), so it is rendered in Jinja's immutable sandbox, on a worker
thread with a deadline, with string repetition and output size bounded.

User text is never parsed for special tokens: the template is rendered with placeholders in place
of each message's content, the result is split at the placeholders, template text is tokenized
with special tokens parsed and content with them off, and the token lists are joined. Piped text
containing `<|im_start|>system` stays plain text.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..errors import TemplateError
from ..media import MARKER

RENDER_SECONDS = 5.0
EXTRA_OUTPUT_CHARS = 1 << 20  # template text allowed beyond the messages' own text
MAX_REPEAT_CHARS = 1 << 20
MAX_INT_BITS = 1 << 12
_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no tokenizer or template emits them
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class Message:
    role: str
    content: str | list[dict[str, Any]]  # a list: text and media parts (runtime/media.py)
    # OpenAI tool calling: an assistant's calls ({"id", "type", "function": {"name",
    # "arguments" as a dict}}), and a tool message's call id and function name
    tool_calls: tuple[dict[str, Any], ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as the chat template sees it: a list's text parts joined, each media
        part (runtime/media.py) as libmtmd's marker, where the runtime puts its chunks."""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            MARKER if p.get("type") == "media" else str(p.get("text") or "") for p in self.content
        )

    def context(self, content: str) -> dict[str, Any]:
        """The message as HF chat templates see it."""
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls is not None:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class Segment:
    """A run of prompt text; `special` says whether control-token markup in it is honoured."""

    text: str
    special: bool


def _oversized(operator: str, left: Any, right: Any, concat_limit: int) -> str | None:
    """Why `left OPERATOR right` would build a value past the limits, or None. Doubling in a loop
    (`s = s + s`, `n = n * n`) grows memory exponentially with each iteration. Templates join
    message content with `+`, so concatenation is allowed up to the size of the whole output."""
    sized = hasattr(left, "__len__"), hasattr(right, "__len__")
    ints = isinstance(left, int), isinstance(right, int)
    if operator == "*" and ((sized[0] and ints[1]) or (ints[0] and sized[1])):
        length, times = (len(left), right) if sized[0] else (len(right), left)
        if length * times > MAX_REPEAT_CHARS:
            return "template repeats a value beyond the size limit"
    if operator == "+" and all(sized) and len(left) + len(right) > concat_limit:
        return "template builds a value beyond the size limit"
    if operator == "*" and all(ints) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        return "template builds a number beyond the size limit"
    if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
        return "template exponent too large"
    if operator == "**" and all(ints) and left.bit_length() * right > MAX_INT_BITS:
        return "template builds a number beyond the size limit"
    return None


def _sandbox(concat_limit: int) -> Any:
    from jinja2.exceptions import SecurityError, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            refused = _oversized(operator, left, right, concat_limit)
            if refused:
                raise SecurityError(refused)
            return super().call_binop(context, operator, left, right)

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template refused the conversation: {message}")

    # loopcontrols ({% break %}, {% continue %}): transformers enables it and templates use it.
    env = BoundedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.loopcontrols"],
    )
    env.globals["raise_exception"] = raise_exception
    # as transformers renders: JSON not escaped for HTML (tool schemas keep their < and >)
    env.filters["tojson"] = lambda value, indent=None, **kw: json.dumps(
        value, ensure_ascii=False, indent=indent, separators=kw.get("separators")
    )
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
    return env, (SecurityError, TemplateSyntaxError)


def render(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    timeout: float = RENDER_SECONDS,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    """Render a chat template in the bounded sandbox; raise TemplateError on any failure."""
    budget = sum(len(m.text) for m in messages) + EXTRA_OUTPUT_CHARS
    env, fatal = _sandbox(budget)
    context = {
        "messages": [m.context(m.text) for m in messages],
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": add_generation_prompt,
    }
    if tools:  # templates test `tools is defined` / `if tools`: absent unless offered
        context["tools"] = [dict(t) for t in tools]
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            compiled = env.from_string(template)
            out: list[str] = []
            size = 0
            for chunk in compiled.generate(**context):
                size += len(chunk)
                if size > budget:
                    raise TemplateError("the chat template's output exceeds the size limit")
                out.append(chunk)
            result["text"] = "".join(out)
        except BaseException as e:
            result["error"] = e

    # A daemon thread, so that a template that never yields cannot keep the process alive.
    worker = threading.Thread(target=work, name="chat-template", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        _stop(worker)
        raise TemplateError(f"the chat template did not finish rendering within {timeout:g} s")
    error = result.get("error")
    if isinstance(error, TemplateError):
        raise error
    # `from error`: INFER_DEBUG=1 shows where in the template (or in infer) it failed.
    if isinstance(error, fatal):
        raise TemplateError(f"the chat template is unsafe or invalid: {error}") from error
    if error is not None:
        raise TemplateError(f"the chat template failed: {type(error).__name__}: {error}") from error
    return str(result["text"])


class _RenderCancelled(BaseException):
    """Raised inside a render thread that ran past its deadline."""


def _stop(worker: threading.Thread) -> None:
    """Make a runaway render thread stop: left alone it would spin, holding the GIL, for as long
    as the template loops (hours), slowing every other thread of the process. Compiled templates
    are Python code, so an asynchronous exception ends them at the next bytecode."""
    import ctypes

    if worker.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(worker.ident), ctypes.py_object(_RenderCancelled)
        )


def segments(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[Segment]:
    """The rendered prompt as template segments (special) and message-content segments (plain).
    Tool definitions and call arguments are rendered by the template as template text."""
    placeholders = [replace(m, content=_PLACEHOLDER.format(i)) for i, m in enumerate(messages)]
    text = render(template, placeholders, bos_token=bos_token, eos_token=eos_token, tools=tools)
    out: list[Segment] = []
    pos = 0
    for match in _PLACEHOLDER_RE.finditer(text):
        if match.start() > pos:
            out.append(Segment(text[pos : match.start()], True))
        index = int(match.group(1))
        if index >= len(messages):
            raise TemplateError("the chat template produced an unexpected placeholder")
        if messages[index].text:
            out.append(Segment(messages[index].text, False))
        pos = match.end()
    if pos < len(text):
        out.append(Segment(text[pos:], True))
    return out


def tokenize_segments(
    parts: Sequence[Segment], tokenize: Callable[[str, bool], list[int]]
) -> list[int]:
    """Join the token lists of each segment; `tokenize(text, special)` is the engine's."""
    tokens: list[int] = []
    for part in parts:
        tokens.extend(tokenize(part.text, part.special))
    return tokens


def build_messages(prompt: str, system: str | None) -> list[Message]:
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", prompt))
    return messages
