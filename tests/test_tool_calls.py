"""The tool-call parsers of each template family (runtime/generation/tool_calls.py)."""

from __future__ import annotations

import json

import pytest

from infer.runtime.generation import tool_calls as tc


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
