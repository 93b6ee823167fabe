"""One plan for an answer with tools offered, shared by `infer run --tool` and the server:
which syntax the model's template writes calls in, the grammar (or lazy grammar and its
triggers) that tool_choice asks for, which tools the template renders, and how the answer is
read back into calls. Built once from validated definitions (tool_calls.definitions); nothing
downstream decides any of it again.

    plan(tools, "auto", template) -> ToolPlan
    ToolPlan.constrain(sampling) -> SamplingParams   # before generating
    ToolPlan.parse(text) -> Parsed                    # after
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..errors import UsageError
from ..params import GrammarTrigger, SamplingParams
from . import tool_calls
from .tool_calls import Parsed

CHOICES = tool_calls.CHOICES  # auto | required | none


@dataclass(frozen=True)
class ToolPlan:
    """What tool_choice makes of the offered tools for one model. With "none" the tools are
    neither rendered nor parsed: the answer is plain text, as if none were offered."""

    tools: tuple[dict[str, Any], ...]  # OpenAI's {"type": "function", "function": {...}}
    choice: str  # auto | required | none
    format: str  # tool_calls.HERMES | LLAMA3 | MISTRAL | GENERIC, from the template
    grammar: str = ""  # "" with "none", or where "auto" has no schema to hold calls to
    triggers: tuple[GrammarTrigger, ...] = ()  # non-empty: `grammar` is lazy
    only: str | None = None  # a required call of this one function
    parallel: bool = True  # more than one call per answer

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def rendered(self) -> list[dict[str, Any]] | None:
        """The tools the chat template shows the model (None with "none")."""
        return None if self.choice == "none" else list(self.tools)

    @property
    def markers(self) -> tuple[str, ...]:
        """Text at which a call may begin: a stream holds its text from the first on."""
        return tool_calls.start_markers(self.format) if self.choice != "none" else ()

    def constrain(self, sampling: SamplingParams) -> SamplingParams:
        """`sampling` with the plan's grammar: a required call's always; "auto"'s lazy one
        unless the answer is already held to a grammar (response_format, --json-schema)."""
        if not self.grammar or (self.choice == "auto" and sampling.grammar):
            return sampling
        return replace(sampling, grammar=self.grammar, grammar_triggers=self.triggers)

    def parse(self, text: str) -> Parsed:
        """The calls in an answer (only of offered tools; the first alone unless parallel);
        the whole text as content when there are none or the plan offers none."""
        if self.choice == "none":
            return Parsed(text, [])
        parsed = tool_calls.parse(text, self.format, self.names)
        if not self.parallel and len(parsed.calls) > 1:
            return Parsed(parsed.content, parsed.calls[:1])
        return parsed


def plan(
    tools: list[dict[str, Any]],
    choice: str,
    template: str | None,
    *,
    only: str | None = None,
    parallel: bool = True,
) -> ToolPlan:
    """The plan for `tools` (from tool_calls.definitions) under `choice`: "required" (of
    `only`, or of any tool) forces one call whose arguments match its schema; "auto" holds a
    call to the schemas once the model starts one (a lazy grammar; none where a schema keyword
    cannot be enforced: the model then decides freely); "none" offers nothing."""
    kind = tool_calls.family(template)
    base = ToolPlan(tuple(tools), choice, kind, only=only, parallel=parallel)
    if choice == "required":
        return replace(base, grammar=tool_calls.grammar(tools, kind, only))
    if choice != "auto":
        return base
    try:
        grammar, triggers = tool_calls.lazy_grammar(tools, kind, parallel)
    except UsageError:
        return base
    return replace(base, grammar=grammar, triggers=triggers)
