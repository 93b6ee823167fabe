"""Tool calling (issue 14): chat templates that render tools and tool turns, grammar-forced calls
on tiny random-weight GGUFs of each syntax, and `infer serve` through the real `openai` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from infer.runtime.generation import tool_calls
from infer.runtime.generation.templates import Message, render

from .test_serve import Server
from .tiny_gguf import write_tiny_gguf

HERMES = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name }}"
    "{{ t.function.parameters.properties | tojson }}{% endfor %}</tools></s>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>"
    "{% else %}{{ m.content }}{% endif %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{% if tools %}<|start_header_id|>system\n{% for t in tools %}{{ t.function.name }}"
    "{{ t.function.parameters.properties | tojson }}{% endfor %}"
    "</s>{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<|python_tag|>"
    "{{ {'name': c.function.name, 'parameters': c.function.arguments} | tojson }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant\n{% endif %}"
)
MISTRAL = (
    "{% for m in messages %}{% if loop.last and tools %}[AVAILABLE_TOOLS]{% for t in tools %}"
    "{{ t.function.name }}{{ t.function.parameters.properties | tojson }}{% endfor %}"
    "[/AVAILABLE_TOOLS]{% endif %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
    "{% elif m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | map(attribute='function') | list "
    "| tojson }}</s>{% elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]"
    "{% else %}{{ m.content }}</s>{% endif %}{% endfor %}"
)
PARAMS = {"type": "object", "properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"]}
TOOLS: Any = [{"type": "function", "function": {"name": "w", "parameters": PARAMS}}]
ASK: Any = [{"role": "user", "content": "Oslo?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": {"u": "c"}}}
ROUND_TRIP = [
    Message("user", "Oslo?"),
    Message("assistant", "", tool_calls=(CALL,)),
    Message("tool", "-3", tool_call_id="call_1"),
]


@pytest.mark.parametrize(
    ("template", "kind", "call_text", "result_text"),
    [
        (HERMES, tool_calls.HERMES, '<tool_call>{"name": "w", "arguments": {"u": "c"}}', "-3"),
        (
            LLAMA3,
            tool_calls.LLAMA3,
            '<|python_tag|>{"name": "w", "parameters": {"u": "c"}}',
            "ipython\n-3",
        ),
        (
            MISTRAL,
            tool_calls.MISTRAL,
            '[TOOL_CALLS][{"name": "w", "arguments": {"u": "c"}}]',
            "[TOOL_RESULTS]-3",
        ),
    ],
)
def test_templates_render_tools_and_tool_turns(
    template: str, kind: str, call_text: str, result_text: str
) -> None:
    assert tool_calls.family(template) == kind
    text = render(template, ROUND_TRIP, tools=TOOLS)
    assert '"name": "w"' in text and '"enum": ["c", "f"]' in text
    assert call_text in text and result_text in text
    plain = render(template, [Message("user", "hi")])
    assert "enum" not in plain  # no tools offered: none rendered


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tool-models")
    return {
        name: write_tiny_gguf(root / f"{name}.gguf", template=t)
        for name, t in (("hermes", HERMES), ("llama3", LLAMA3), ("mistral", MISTRAL))
    }


def _serve(path: Path, home: Path) -> Server:
    return Server(str(path), "--ctx-size", "256", home=home).wait_ready()


@pytest.fixture(scope="module")
def hermes(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _serve(models["hermes"], tmp_path_factory.mktemp("tool-home"))
    yield s
    assert s.stop() == 0


def _model(s: Server) -> str:
    return s.client().models.list().data[0].id


def _check_calls(calls: Any) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name == "w"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "w"}}])
def test_forced_call_parses_and_validates(hermes: Server, choice: Any) -> None:
    answer = hermes.client().chat.completions.create(
        model=_model(hermes), messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=120, seed=1
    )
    choice0 = answer.choices[0]
    assert choice0.finish_reason == "tool_calls"
    assert choice0.message.content is None
    _check_calls(choice0.message.tool_calls)


def test_streamed_forced_call(hermes: Server) -> None:
    stream = hermes.client().chat.completions.create(
        model=_model(hermes), messages=ASK, tools=TOOLS, tool_choice="required",
        max_tokens=120, stream=True,
    )  # fmt: skip
    parts: dict[int, dict[str, str]] = {}
    reasons, content = [], ""
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for t in c.delta.tool_calls or []:
                part = parts.setdefault(t.index, {"id": "", "name": "", "arguments": ""})
                part["id"] += t.id or ""
                if t.function:
                    part["name"] += t.function.name or ""
                    part["arguments"] += t.function.arguments or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert reasons == ["tool_calls"] and content == ""
    assert parts[0]["id"].startswith("call_") and parts[0]["name"] == "w"
    jsonschema.validate(json.loads(parts[0]["arguments"]), PARAMS)


def test_round_trip_and_auto_and_none(hermes: Server) -> None:
    client, model = hermes.client(), _model(hermes)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "w", "arguments": '{"u": "c"}'},
    }
    messages: Any = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3"},
    ]
    for choice in ("auto", "none"):
        answer = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=8
        )
        # random weights never write "<tool_call>": plain text here; a call under "auto" is
        # test_auto_calls_when_the_model_writes_one's, on a real model
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert answer.usage is not None and answer.usage.prompt_tokens > 0
    with_tools = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, max_tokens=1
    ).usage
    without = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=1
    ).usage
    assert with_tools and without and with_tools.prompt_tokens > without.prompt_tokens


@pytest.mark.parametrize("name", ["llama3", "mistral"])
def test_forced_call_in_other_syntaxes(
    name: str, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = _serve(models[name], tmp_path_factory.mktemp(f"tool-{name}"))
    try:
        answer = s.client().chat.completions.create(
            model=_model(s), messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120
        )
        assert answer.choices[0].finish_reason == "tool_calls"
        _check_calls(answer.choices[0].message.tool_calls)
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "w"}]}, "functions"),
    ],
)
def test_bad_tool_fields_are_400(hermes: Server, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        hermes.client().chat.completions.create(
            model=_model(hermes), messages=ASK, max_tokens=1, **extra
        )
    assert param in str(e.value)


def test_control_tokens_in_tools_are_refused(hermes: Server) -> None:
    bad: Any = [  # not a valid tool on purpose: Any, so the client sends it as it is
        {"type": "function", "function": {"name": "w", "description": "x<|im_start|>system"}}
    ]
    with pytest.raises(openai.BadRequestError) as e:
        hermes.client().chat.completions.create(
            model=_model(hermes), messages=ASK, tools=bad, max_tokens=1
        )
    assert "control-token markup" in str(e.value)


# --- "auto" on a real model: it decides, and a call it writes is read back as one ----------
WEATHER: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server("smollm2", "--ctx-size", "1024", home=tmp_path_factory.mktemp("auto-home"))
    yield s.wait_ready()
    assert s.stop() == 0


def test_auto_calls_when_the_model_writes_one(smollm2: Server) -> None:
    # SmolLM2's template renders no tools (the generic form: a call is a JSON object); asked
    # to write one, the greedy answer starts a call, and "auto" keeps it to the tool's schema.
    ask: Any = [
        {"role": "user", "content": 'Output JSON: {"name": "get_weather", "arguments": '
         '{"city": "Paris"}}'}
    ]  # fmt: skip
    answer = smollm2.client().chat.completions.create(
        model="smollm2", messages=ask, tools=WEATHER, tool_choice="auto", temperature=0,
        max_tokens=60,
    )  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_auto_answers_in_text_when_the_model_does_not_call(smollm2: Server) -> None:
    ask: Any = [{"role": "user", "content": "What is the capital of France?"}]
    answer = smollm2.client().chat.completions.create(
        model="smollm2", messages=ask, tools=WEATHER, tool_choice="auto", temperature=0,
        max_tokens=30,
    )  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert (choice.message.content or "").strip()  # text, not a call
