"""Tool calls in a model's output: the template family's syntax parsed into OpenAI's
`tool_calls` (pure functions; only the model's output is ever given to them).

Families, detected from the chat template's text:
- hermes (Hermes, Qwen 2.5/3): `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, repeated
- llama3 (Llama 3.1+): `{"name": …, "parameters": {…}}`, possibly after `<|python_tag|>`,
  several separated by `;` or newlines
- mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`
- generic: a bare JSON object (or array of them) with name and arguments
Output that does not parse cleanly into calls of offered tools stays plain content.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..params import GrammarTrigger

HERMES, LLAMA3, MISTRAL, GENERIC = "hermes", "llama3", "mistral", "generic"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Parsed:
    content: str | None  # the text before the calls (None when empty and there are calls)
    calls: list[ToolCall]


def family(template: str | None) -> str:
    """The tool-call syntax a chat template's model writes."""
    text = template or ""
    if "<tool_call>" in text:
        return HERMES
    if "[TOOL_CALLS]" in text:
        return MISTRAL
    if "<|python_tag|>" in text or ("<|start_header_id|>" in text and "tools" in text):
        return LLAMA3
    return GENERIC


def start_markers(kind: str) -> tuple[str, ...]:
    """Text at which a call may begin: a stream holds its text from the first of these on."""
    return {
        HERMES: ("<tool_call>",),
        MISTRAL: ("[TOOL_CALLS]", "[", "{"),
        LLAMA3: ("<|python_tag|>", "{"),
    }.get(kind, ("{", "["))


def emittable(text: str, markers: tuple[str, ...]) -> int:
    """How much of `text` can be streamed as content now: up to the first marker, or to where a
    marker may be beginning at its end."""
    cut = len(text)
    for marker in markers:
        at = text.find(marker)
        if at >= 0:
            cut = min(cut, at)
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:size]):
                cut = min(cut, len(text) - size)
                break
    return cut


def parse(text: str, kind: str, names: Collection[str] | None = None) -> Parsed:
    """The calls in a model's answer; none (and the whole text as content) when malformed or
    when a call names a tool that was not offered (`names`; None: any)."""
    calls: list[ToolCall] | None
    if kind == HERMES:
        at = text.find("<tool_call>")
        calls = _hermes(text[at:]) if at >= 0 else None
    elif kind == MISTRAL and "[TOOL_CALLS]" in text:
        at = text.find("[TOOL_CALLS]")
        calls = _json_calls(text[at + len("[TOOL_CALLS]") :])
    else:  # Mistral's marker is a control token: a detokenizer may have dropped it
        at, calls = _bare(text, kind == LLAMA3)
    if not calls or (names is not None and any(c.name not in names for c in calls)):
        return Parsed(text, [])
    before = text[:at].strip()
    return Parsed(before or None, calls)


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    keys = set(obj) - {"name", "id", "type"}
    if len(keys) != 1 or next(iter(keys)) not in ("arguments", "parameters"):
        return None
    args = obj[next(iter(keys))]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _hermes(text: str) -> list[ToolCall] | None:
    calls = []
    pos = 0
    pattern = re.compile(r"\s*<tool_call>\s*")
    while pos < len(text.rstrip()):
        opened = pattern.match(text, pos)
        if not opened:
            return None
        try:
            obj, end = _DECODER.raw_decode(text, opened.end())
        except ValueError:
            return None
        call = _call(obj)
        if call is None:
            return None
        calls.append(call)
        closed = re.compile(r"\s*</tool_call>").match(text, end)
        pos = closed.end() if closed else end
        if not closed and text[end:].strip():
            return None
    return calls or None


def _json_calls(text: str) -> list[ToolCall] | None:
    """A JSON array of calls, or one call object, and nothing after it."""
    try:
        obj, end = _DECODER.raw_decode(text.strip())
    except ValueError:
        return None
    if text.strip()[end:].strip():
        return None
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call(o) for o in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _bare(text: str, llama: bool) -> tuple[int, list[ToolCall] | None]:
    """Llama 3's and the generic form: JSON from the first `{` (or `[`, or `<|python_tag|>`)
    to the end of the answer."""
    tag = text.find("<|python_tag|>") if llama else -1
    if tag >= 0:
        at, body = tag, text[tag + len("<|python_tag|>") :]
    else:
        starts = [i for i in (text.find("{"), -1 if llama else text.find("[")) if i >= 0]
        if not starts:
            return 0, None
        at = min(starts)
        body = text[at:]
    calls: list[ToolCall] = []
    pos = 0
    body = body.rstrip()
    while pos < len(body):
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
        if pos >= len(body):
            break
        try:
            obj, pos = _DECODER.raw_decode(body, pos)
        except ValueError:
            return at, None
        items = obj if isinstance(obj, list) and not llama else [obj]
        for item in items:
            call = _call(item)
            if call is None:
                return at, None
            calls.append(call)
    return at, calls or None


_WRAP = {
    HERMES: ('"<tool_call>\\n" ', ' "\\n</tool_call>"'),
    MISTRAL: ('"[TOOL_CALLS][" ', ' "]"'),
}


def grammar(tools: list[dict[str, Any]], kind: str, only: str | None = None) -> str:
    """GBNF that makes the answer one call, in the family's syntax, of one of `tools` (or of
    `only`) whose arguments match its JSON schema. UsageError for a schema it cannot enforce."""
    from ..llama.grammar import check_grammar

    before, after = _WRAP.get(kind, ("", ""))
    return check_grammar(
        f"root ::= {before}infer-tool-call{after}\n{_call_rules(tools, kind, only)}",
        "tools[].function.parameters",
    )


# The calls from a family's start marker on (what a lazy grammar sees once the marker is
# written): the marker, then calls whose arguments match their tools' schemas. `{more}`: where
# further calls may follow.
_FROM_MARKER = {
    HERMES: (
        'root ::= infer-hermes{more} "\\n"?\n'
        'infer-hermes ::= "<tool_call>" infer-ws infer-tool-call infer-ws "</tool_call>"\n',
        ' ("\\n"? infer-hermes)*',
    ),
    MISTRAL: (
        'root ::= "[TOOL_CALLS]" infer-ws "[" infer-ws infer-tool-call{more} "]"\n',
        ' ("," infer-ws infer-tool-call)*',
    ),
    LLAMA3: (
        'root ::= ("<|python_tag|>" infer-ws)? infer-tool-call{more}\n',
        ' (";" infer-ws infer-tool-call)*',
    ),
    GENERIC: ("root ::= infer-tool-call\n", ""),
}
_OBJECT_START = ('{"name"', '{ "name"')  # a call object's first text (the converter's spacing)


def lazy_grammar(
    tools: list[dict[str, Any]], kind: str, parallel: bool = True
) -> tuple[str, tuple[GrammarTrigger, ...]]:
    """GBNF and its triggers, a lazy grammar (llama/lazy.py), for tool_choice "auto": the
    answer is free until it writes the family's call marker (Hermes `<tool_call>`, Mistral
    `[TOOL_CALLS]`, Llama 3 `<|python_tag|>`, or a call object `{"name"` as the whole answer for
    Llama 3 and the generic form); from there on it must be calls of `tools` (one unless
    `parallel`) whose arguments match their schemas, and then the end. The two go to
    SamplingParams.grammar and .grammar_triggers."""
    from ..llama.grammar import check_grammar

    at_start = tuple(GrammarTrigger(w, at_start=True) for w in _OBJECT_START)
    triggers = {
        HERMES: (GrammarTrigger("<tool_call>"),),
        MISTRAL: (GrammarTrigger("[TOOL_CALLS]"),),
        LLAMA3: (GrammarTrigger("<|python_tag|>"), *at_start),
    }.get(kind, at_start)
    root, more = _FROM_MARKER.get(kind, _FROM_MARKER[GENERIC])
    body = root.replace("{more}", more if parallel else "") + "infer-ws ::= [ \\t\\n]{0,8}\n"
    text = check_grammar(body + _call_rules(tools, kind, None), "tools[].function.parameters")
    return text, triggers


def _call_rules(tools: list[dict[str, Any]], kind: str, only: str | None) -> str:
    """The rule `infer-tool-call`: one call object of one of `tools` (or of `only`)."""
    from ..llama.grammar import schema_dict_grammar

    key = "parameters" if kind == LLAMA3 else "arguments"
    options = []
    for tool in tools:
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, key: fn["parameters"]},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    if not options:
        raise UsageError(f"no tool named {only!r}")
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    body = schema_dict_grammar(schema, "tools[].function.parameters")
    return re.sub(r"^root ::=", "infer-tool-call ::=", body, flags=re.MULTILINE)


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CHOICES = ("auto", "required", "none")


class ToolDefinitionError(UsageError):
    """A function definition refused by `definitions`: `index` (0-based) and `field` ("" for
    the whole item, else "name", "parameters" or "description") say where, so the server can
    name `tools[i].function.field`; `reason` is the message without the CLI's prefix."""

    def __init__(self, message: str, index: int, field: str, reason: str) -> None:
        super().__init__(message)
        self.index, self.field, self.reason = index, field, reason


def definitions(items: Sequence[Any], what: str = "--tool") -> list[dict[str, Any]]:
    """Function definitions, each OpenAI's `{"type": "function", "function": {...}}` or a bare
    `{"name", "description", "parameters"}`, in OpenAI's shape: the one validator of tools,
    for `--tool` and the server alike. ToolDefinitionError naming `what` for one without a
    valid name, a name given twice, or parameters that are not an object schema the grammar
    converter enforces (checked here, before any model loads)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        out.append(_definition(item, i, what, {t["function"]["name"] for t in out}))
    return out


def _definition(item: Any, i: int, what: str, taken: set[str]) -> dict[str, Any]:
    from ..llama.grammar import schema_dict_grammar

    def refuse(field: str, reason: str, message: str) -> ToolDefinitionError:
        return ToolDefinitionError(message, i, field, reason)

    fn = item.get("function") if isinstance(item, dict) and "function" in item else item
    wrapped = fn is not item and item.get("type", "function") != "function"
    if not isinstance(fn, dict) or wrapped:
        reason = (
            'not a function definition ({"name": ..., "parameters": {...}} or '
            '{"type": "function", "function": {...}})'
        )
        raise refuse("", reason, f"{what}: tool {i + 1} is {reason}")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        reason = "a function name is 1 to 64 of a-z A-Z 0-9 _ . -"
        message = f"{what}: tool {i + 1} needs a 'name' of 1 to 64 of a-z A-Z 0-9 _ . - "
        raise refuse("name", reason, message + f"(got {name!r})")
    if name in taken:
        reason = f"two tools are named {name!r}"
        raise refuse("name", reason, f"{what}: {reason}")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        reason = "'parameters' must be a JSON schema of an object"
        raise refuse("parameters", reason, f"{what}: {name}: {reason}")
    try:
        schema_dict_grammar(params, f"{what}: {name}: parameters")
    except UsageError as e:
        raise refuse("parameters", str(e), str(e)) from None
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        reason = "'description' must be a string"
        raise refuse("description", reason, f"{what}: {name}: {reason}")
    entry: dict[str, Any] = {"name": name, "parameters": params}
    if description is not None:
        entry["description"] = description
    return {"type": "function", "function": entry}
