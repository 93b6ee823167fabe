"""`infer run MODEL "…" --tool @get_weather.json`: function definitions offered to the model
through its own chat template; the calls it makes are printed as JSON on stdout for a script to
act on (infer executes nothing). Local and `--remote` runs print the same shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import InferError, Interrupted, UsageError

from . import output

if TYPE_CHECKING:
    from infer.runtime.generation.loop import Generation
    from infer.runtime.generation.tool_calls import Parsed
    from infer.runtime.llama.interface import Session
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.params import GenerateOptions, SamplingParams


@dataclass(frozen=True)
class Offered:
    """The tools of `--tool` and what `--tool-choice` makes of them."""

    tools: list[dict[str, Any]]
    choice: str  # auto | required | none
    only: str | None = None  # --tool-choice NAME: the one function the model must call

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def openai_choice(self) -> str | dict[str, Any]:
        """tool_choice as an OpenAI request says it."""
        if self.only is not None:
            return {"type": "function", "function": {"name": self.only}}
        return self.choice


def read_tools(values: list[str] | None, choice: str | None) -> Offered | None:
    """The --tool values (JSON text or @FILE; each one definition or a list of them) checked,
    before any model loads; None without --tool."""
    from infer.runtime.generation.tool_calls import CHOICES, definitions

    if not values:
        if choice is not None:
            raise UsageError("--tool-choice needs --tool")
        return None
    items: list[Any] = []
    for value in values:
        data = _json(value)
        items.extend(data if isinstance(data, list) else [data])
    tools = definitions(items, "--tool")
    picked = choice or "auto"
    if picked in CHOICES:
        return Offered(tools, picked)
    offered = Offered(tools, "required", picked)
    if picked not in offered.names:
        raise UsageError(
            f"--tool-choice must be auto, required, none or a tool's name "
            f"({', '.join(sorted(offered.names))}); got {picked!r}"
        )
    return offered


def _json(value: str) -> Any:
    from .inputs import read_file

    where = value if len(value) <= 40 else value[:37] + "..."
    text = value
    if value.startswith("@"):
        try:
            text = read_file(value[1:])
        except InferError as e:
            raise UsageError(f"--tool: {e}") from None
        where = value[1:]
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"--tool {where}: not JSON ({e})") from None


def check_flags(flags: dict[str, bool]) -> None:
    """Flags a tool run cannot honour, refused by name."""
    for flag, given in flags.items():
        if given:
            raise UsageError(f"--tool does not combine with {flag}")


def answer(
    engine: Session,
    resolved: ResolvedModel,
    text: str,
    system: str | None,
    sampling: SamplingParams,
    options: GenerateOptions,
    offered: Offered,
    *,
    drafter: Session | str | None,
    json_out: bool,
    stats: bool,
) -> None:
    """One answer with the tools offered: the model's calls as JSON, or its text."""
    from infer.runtime import Message
    from infer.runtime.api import generate
    from infer.runtime.generation.tool_calls import Parsed
    from infer.runtime.generation.tool_plan import plan

    from .signals import cancel_on_sigint

    template = resolved.defaults.chat_template or engine.model.chat_template
    tools = plan(offered.tools, offered.choice, template, only=offered.only)
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", text))
    with cancel_on_sigint() as cancel:
        gen = generate(
            engine,
            messages,
            sampling,
            options,
            template=resolved.defaults.chat_template,
            cancel=cancel,
            drafter=drafter,
            tools=tools,
        )
        try:
            for _ in gen:  # held: the answer may turn out to be a call
                pass
        except Interrupted:
            _end(gen, resolved.name, Parsed(gen.text, []), json_out)
            raise
    parsed = tools.parse(gen.text)
    if parsed.calls:
        gen.stats.finish_reason = "tool_calls"
    _end(gen, resolved.name, parsed, json_out)
    if stats:
        output.print_stats(gen.stats)
    _check_complete(gen, parsed, offered, tools.markers)


def _end(gen: Generation, model: str, parsed: Parsed, json_out: bool) -> None:
    calls = [c.openai() for c in parsed.calls]
    print_answer(
        model,
        parsed.content,
        calls,
        gen.stats.finish_reason,
        gen.stats.as_dict(),
        json_out=json_out,
    )


def print_answer(
    model: str,
    content: str | None,
    calls: list[dict[str, Any]],
    finish_reason: str,
    stats: dict[str, Any],
    *,
    json_out: bool,
) -> None:
    """How an answer with tools offered ends on stdout, local or remote: with calls, one JSON
    object `{"tool_calls": [...], "content": ..., "finish_reason": "tool_calls"}`; without, the
    text as a plain run prints it. `--json`: the usual record with `tool_calls` added."""
    record: dict[str, Any] = {"tool_calls": calls, "content": content}
    if json_out:
        record = {
            "model": model,
            "text": content or "",
            "finish_reason": finish_reason,
            "tool_calls": calls,
            "stats": {**stats, "finish_reason": finish_reason},
        }
        output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
    elif calls:
        record["finish_reason"] = finish_reason
        output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
    elif content:
        output.write_answer(content if content.endswith("\n") else content + "\n")


def _check_complete(
    gen: Generation, parsed: Parsed, offered: Offered, markers: tuple[str, ...]
) -> None:
    """A call cut off by --max-tokens or the context is an error, not an answer."""
    reason = gen.stats.finish_reason
    if reason not in ("length", "context") or parsed.calls:
        return
    started = offered.choice == "required" or any(m in gen.text for m in markers if len(m) > 1)
    if started:
        limit = "--max-tokens" if reason == "length" else "--ctx-size"
        raise cut_off(gen.stats.generated_tokens, limit)


def cut_off(tokens: int, limit: str) -> InferError:
    """The error for a tool call the limit cut short (a local or a remote run)."""
    return InferError(
        f"the answer was cut off at {tokens} tokens before the tool call was complete ({limit})"
    )
