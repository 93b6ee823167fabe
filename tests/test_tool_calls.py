"""The tool-call parsers of each template family (runtime/generation/tool_calls.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infer.runtime.errors import UsageError
from infer.runtime.generation import tool_calls as tc
from infer.runtime.generation import tool_plan
from infer.runtime.params import SamplingParams


def _calls(parsed: tc.Parsed) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in parsed.calls]


def test_family_from_template_text() -> None:
    assert tc.family("{% if tools %}<tool_call>{% endif %}") == tc.HERMES
    assert tc.family("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]") == tc.MISTRAL
    assert tc.family("<|start_header_id|>{{ tools }}<|python_tag|>") == tc.LLAMA3
    assert tc.family("{{ messages }}") == tc.GENERIC
    assert tc.family(None) == tc.GENERIC


def test_hermes_one_and_several_calls() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    parsed = tc.parse(text, tc.HERMES, {"get_weather"})
    assert parsed.content is None
    assert _calls(parsed) == [("get_weather", {"city": "Oslo"})]
    assert parsed.calls[0].id.startswith("call_")
    two = "Let me check.\n" + text + "\n" + text.replace("Oslo", "Bergen")
    parsed = tc.parse(two, tc.HERMES, {"get_weather"})
    assert parsed.content == "Let me check."
    assert _calls(parsed) == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Bergen"}),
    ]
    assert parsed.calls[0].id != parsed.calls[1].id


def test_hermes_unclosed_last_call_and_string_arguments() -> None:
    text = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}'
    assert _calls(tc.parse(text, tc.HERMES)) == [("f", {"x": 1})]


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "f"}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {}}</tool_call> trailing words',
        '<tool_call>{"name": "f", "arguments": {"a": 1}',
        "no call at all",
    ],
)
def test_hermes_malformed_stays_content(text: str) -> None:
    assert tc.parse(text, tc.HERMES) == tc.Parsed(text, [])


def test_unknown_tool_name_stays_content() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert tc.parse(text, tc.HERMES, {"get_weather"}) == tc.Parsed(text, [])


def test_llama3_json_and_python_tag() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert _calls(tc.parse(text, tc.LLAMA3)) == [("get_weather", {"city": "Oslo"})]
    tagged = '<|python_tag|>{"type": "function", "name": "f", "parameters": {"a": 1}}; '
    tagged += '{"name": "g", "parameters": {}}'
    parsed = tc.parse(tagged, tc.LLAMA3, {"f", "g"})
    assert _calls(parsed) == [("f", {"a": 1}), ("g", {})]
    assert parsed.content is None


@pytest.mark.parametrize(
    "text",
    ['{"name": "f", "parameters": {"a": 1}} and more', '{"answer": 42}', '{"name": "f", "par'],
)
def test_llama3_malformed_stays_content(text: str) -> None:
    assert tc.parse(text, tc.LLAMA3) == tc.Parsed(text, [])


def test_mistral_array() -> None:
    text = '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]'
    assert _calls(tc.parse(text, tc.MISTRAL)) == [("f", {"a": 1}), ("g", {})]
    bad = '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}'
    assert tc.parse(bad, tc.MISTRAL) == tc.Parsed(bad, [])
    assert tc.parse("[1, 2]", tc.MISTRAL) == tc.Parsed("[1, 2]", [])
    unmarked = '[{"name": "f", "arguments": {"a": 1}}]'  # the control token not detokenized
    assert _calls(tc.parse(unmarked, tc.MISTRAL)) == [("f", {"a": 1})]


def test_generic_bare_object_or_array() -> None:
    text = 'Sure: {"name": "f", "arguments": {"a": "b"}}'
    parsed = tc.parse(text, tc.GENERIC, {"f"})
    assert parsed.content == "Sure:"
    assert _calls(parsed) == [("f", {"a": "b"})]
    arr = '[{"name": "f", "arguments": {}}, {"name": "f", "arguments": {"a": 2}}]'
    assert _calls(tc.parse(arr, tc.GENERIC)) == [("f", {}), ("f", {"a": 2})]
    plain = 'The JSON {"a": 1} is an object.'
    assert tc.parse(plain, tc.GENERIC) == tc.Parsed(plain, [])


def test_emittable_holds_from_a_possible_marker() -> None:
    markers = tc.start_markers(tc.HERMES)
    assert tc.emittable("hello", markers) == 5
    assert tc.emittable("hello <tool", markers) == len("hello ")
    assert tc.emittable("hello <tool_call>{", markers) == len("hello ")
    assert tc.emittable("a < b", markers) == 5
    assert tc.emittable('x {"name"', tc.start_markers(tc.GENERIC)) == 2


def test_openai_shape() -> None:
    call = tc.ToolCall("f", '{"a": 1}', id="call_1")
    assert call.openai() == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": 1}'},
    }


# --- the plan (runtime/generation/tool_plan.py), shared by `run --tool` and the server -------
TOOLS = tc.definitions([{"name": "f", "parameters": {"type": "object"}}, {"name": "g"}])
TWO = '{"name": "f", "arguments": {}}\n{"name": "g", "arguments": {"x": 1}}'


def test_definitions_say_which_tool_and_field() -> None:
    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        ([{"name": "f"}, {"name": "f g"}], 1, "name"),
        ([{"name": "f"}, {"name": "f"}], 1, "name"),
        ([{"name": "f", "parameters": {"type": "array"}}], 0, "parameters"),
        ([{"name": "f", "parameters": {"properties": {"a": 3}}}], 0, "parameters"),
        ([{"name": "f", "description": 3}], 0, "description"),
        ([{"type": "other", "function": {"name": "f"}}], 0, ""),
    ]
    for items, index, field in cases:
        with pytest.raises(tc.ToolDefinitionError) as e:
            tc.definitions(items, "--tool")
        assert (e.value.index, e.value.field) == (index, field)
        assert str(e.value).startswith("--tool: ") and e.value.reason  # the server's message


def test_a_plan_parses_in_its_templates_syntax_and_only_offered_tools() -> None:
    plan = tool_plan.plan(TOOLS, "auto", "{{ messages }}")
    assert plan.format == tc.GENERIC and plan.names == {"f", "g"}
    assert [c.name for c in plan.parse(TWO).calls] == ["f", "g"]
    assert plan.parse('{"name": "h", "arguments": {}}').calls == []
    hermes = tool_plan.plan(TOOLS, "auto", "<tool_call>")
    assert hermes.parse(TWO).calls == [] and hermes.markers == ("<tool_call>",)


def test_a_plan_without_parallel_calls_keeps_the_first() -> None:
    plan = tool_plan.plan(TOOLS, "auto", None, parallel=False)
    assert [c.name for c in plan.parse(TWO).calls] == ["f"]
    one = tool_plan.plan(TOOLS, "auto", "<tool_call>", parallel=False).grammar
    assert one != tool_plan.plan(TOOLS, "auto", "<tool_call>").grammar  # one call, then the end


def test_none_offers_nothing_and_reads_nothing() -> None:
    plan = tool_plan.plan(TOOLS, "none", "<tool_call>")
    assert plan.rendered is None and plan.markers == () and plan.grammar == ""
    assert plan.parse(TWO) == tc.Parsed(TWO, [])
    sampling = SamplingParams(grammar='root ::= "x"')
    assert plan.constrain(sampling) is sampling


def test_constrain_forces_a_required_call_and_keeps_a_given_grammar_under_auto() -> None:
    given = SamplingParams(grammar='root ::= "x"')
    required = tool_plan.plan(TOOLS, "required", None, only="g")
    assert required.constrain(given).grammar == tc.grammar(TOOLS, tc.GENERIC, "g")
    assert required.constrain(given).grammar_triggers == ()
    auto = tool_plan.plan(TOOLS, "auto", None)
    assert auto.constrain(given) is given  # response_format holds the whole answer
    lazy = auto.constrain(SamplingParams())
    assert (lazy.grammar, lazy.grammar_triggers) == (auto.grammar, auto.triggers)
    assert lazy.grammar_triggers  # a lazy grammar: free text until a call starts


def test_auto_without_an_enforceable_schema_leaves_the_model_free() -> None:
    """plan() may be handed definitions no validator saw (a Python caller): under "auto" a
    schema no grammar enforces means no grammar, not an error."""
    raw = [{"type": "function", "function": {"name": "f", "parameters": {"properties": 3}}}]
    plan = tool_plan.plan(raw, "auto", None)
    assert (plan.grammar, plan.triggers, plan.names) == ("", (), {"f"})
    with pytest.raises(UsageError):
        tool_plan.plan(raw, "required", None)
