"""`infer run MODEL "…" --tool @FILE` (issue 14) as a script meets it: a real subprocess with
pipes, on tiny random-weight GGUFs whose templates write each tool-call syntax, on the bundled
model, and against `infer serve` with --remote. A call is made certain with --tool-choice
required (or a tool's name); its arguments are validated with jsonschema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import run_infer
from .test_serve import Server
from .test_tool_serve import HERMES, LLAMA3, MISTRAL
from .tiny_gguf import write_tiny_gguf

PARAMS = {"type": "object", "properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"]}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
BARE = {"name": "w", "description": "The weather", "parameters": PARAMS}
OPENAI = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
SCHEMAS = {"w": PARAMS, "get_weather": WEATHER, "ping": {"type": "object", "properties": {}}}
QUIET = ["--seed", "1", "--ctx-size", "256"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tool-run-models")
    return {
        name: write_tiny_gguf(root / f"{name}.gguf", template=t)
        for name, t in (("hermes", HERMES), ("llama3", LLAMA3), ("mistral", MISTRAL))
    }


@pytest.fixture
def tool_file(tmp_path: Path) -> Path:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(BARE))
    return path


def _calls(stdout: bytes, names: set[str] | None = None) -> list[dict[str, Any]]:
    """stdout as the one JSON object a call prints, its calls checked against their schemas."""
    lines = stdout.decode().splitlines()
    assert len(lines) == 1, stdout
    answer = json.loads(lines[0])
    assert answer.keys() == {"tool_calls", "content", "finish_reason"}
    assert answer["finish_reason"] == "tool_calls"
    calls = answer["tool_calls"]
    assert calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        name = call["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    return calls


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_required_call_printed_as_json(
    family: str, models: dict[str, Path], tool_file: Path
) -> None:
    result = run_infer(
        "run", str(models[family]), "Oslo?", "--tool", f"@{tool_file}",
        "--tool-choice", "required", "-n", "120", *QUIET,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    (call,) = _calls(result.stdout, {"w"})
    assert call["function"]["name"] == "w"


def test_each_definition_shape_and_a_named_choice(models: dict[str, Path], tmp_path: Path) -> None:
    """OpenAI's shape in a file with a list, a bare definition inline, --tool repeated; the
    named tool is the one called, with arguments valid for its richer schema."""
    listed = tmp_path / "tools.json"
    listed.write_text(json.dumps([OPENAI, {"name": "ping"}]))
    result = run_infer(
        "run", str(models["hermes"]), "Weather in Oslo?", "--tool", f"@{listed}",
        "--tool", json.dumps(BARE), "--tool-choice", "get_weather", "-n", "160",
        "--seed", "3", "--ctx-size", "512",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (call,) = _calls(result.stdout)
    assert call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) >= {"city", "unit"}


def test_json_record_gains_tool_calls(models: dict[str, Path], tool_file: Path) -> None:
    result = run_infer(
        "run", str(models["mistral"]), "Oslo?", "--tool", f"@{tool_file}", "--tool-choice",
        "w", "--json", "-n", "120", *QUIET,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record.keys() == {"model", "text", "finish_reason", "tool_calls", "stats"}
    assert record["finish_reason"] == record["stats"]["finish_reason"] == "tool_calls"
    assert record["text"] == ""
    (call,) = record["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS)


def test_bundled_model_generic_call(bundled_model: Path, tmp_path: Path) -> None:
    """SmolLM2's template has no tool syntax: the generic JSON form, forced by the grammar."""
    path = tmp_path / "weather.json"
    path.write_text(json.dumps(OPENAI))
    result = run_infer(
        "run", str(bundled_model), "What is the weather in Oslo, in celsius?", "--tool",
        f"@{path}", "--tool-choice", "required", "--temperature", "0", "-n", "80",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (call,) = _calls(result.stdout, {"get_weather"})
    assert json.loads(call["function"]["arguments"])["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_plain_text_answer_printed_as_text(
    choice: str, models: dict[str, Path], tool_file: Path
) -> None:
    """No call (random bytes do not spell `<tool_call>` in 6 tokens): the text, as a plain run
    prints it; --json says finish_reason length with no calls."""
    args = ["run", str(models["hermes"]), "Oslo?", "--tool", f"@{tool_file}"]
    args += ["--tool-choice", choice, "-n", "6", *QUIET]
    plain = run_infer(*args, "--temperature", "0")
    assert plain.returncode == 0, plain.stderr
    assert b"tool_calls" not in plain.stdout and plain.stdout.endswith(b"\n")
    record = json.loads(run_infer(*args, "--temperature", "0", "--json").stdout)
    assert record["finish_reason"] == "length" and record["tool_calls"] == []
    assert plain.stdout.decode(errors="replace").rstrip("\n") == record["text"].rstrip("\n")


def test_choice_none_keeps_the_users_grammar(models: dict[str, Path], tool_file: Path) -> None:
    """With --tool-choice none no tool grammar replaces --grammar: it holds the answer."""
    result = run_infer(
        "run", str(models["hermes"]), "Oslo?", "--tool", f"@{tool_file}", "--tool-choice",
        "none", "--grammar", 'root ::= "ok"', "-n", "8", "--temperature", "0", *QUIET,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\n"


def test_required_call_cut_off_is_an_error(models: dict[str, Path], tool_file: Path) -> None:
    result = run_infer(
        "run", str(models["hermes"]), "Oslo?", "--tool", f"@{tool_file}",
        "--tool-choice", "required", "-n", "5", *QUIET,
    )  # fmt: skip
    assert result.returncode == 1
    assert b"cut off at 5 tokens before the tool call was complete (--max-tokens)" in result.stderr


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ("@missing.json", "--tool: cannot read missing.json"),
        ("{not json", "--tool {not json: not JSON"),
        ('{"description": "no name"}', "tool 1 needs a 'name'"),
        ('{"name": "a", "parameters": "x"}', "a: 'parameters' must be a JSON schema"),
        ('{"name": "a", "parameters": {"type": "array"}}', "must be a JSON schema of an object"),
        (
            '{"name": "a", "parameters": {"properties": {"n": {"minimum": 1}}}}',
            "keyword 'minimum' is not supported",
        ),
        ('[{"name": "a"}, {"name": "a"}]', "two tools are named 'a'"),
        ('{"type": "retrieval", "function": {"name": "a"}}', "not a function definition"),
        ("42", "not a function definition"),
    ],
)
def test_bad_tools_refused_before_the_model_loads(tool: str, message: str, tmp_path: Path) -> None:
    result = run_infer("run", str(tmp_path / "absent.gguf"), "hi", "--tool", tool)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tool-choice", "b"], "--tool-choice must be auto, required, none or a tool's name"),
        (["--format", "json"], "--tool does not combine with --json-schema"),
        (["--raw"], "--tool does not combine with --raw"),
        (["--batch", "-"], "--tool does not combine with --batch"),
    ],
)
def test_bad_tool_flags(extra: list[str], message: str, tmp_path: Path) -> None:
    args = ["run", str(tmp_path / "absent.gguf"), "--tool", '{"name": "a"}', *extra]
    result = run_infer(*args, *([] if "--batch" in extra else ["hi"]), input="")
    assert result.returncode == 2
    assert message in result.stderr.decode(), result.stderr


def test_tool_choice_needs_tool(tmp_path: Path) -> None:
    result = run_infer("run", str(tmp_path / "absent.gguf"), "hi", "--tool-choice", "auto")
    assert result.returncode == 2 and b"--tool-choice needs --tool" in result.stderr


# --- --remote -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("tool-run-home")
    s = Server(str(models["hermes"]), "--ctx-size", "512", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def test_remote_prints_the_remotes_calls(served: Server, tool_file: Path) -> None:
    model = served.client().models.list().data[0].id
    args = ["run", model, "Oslo?", "--tool", f"@{tool_file}", "--remote", served.url]
    result = run_infer(*args, "--tool-choice", "required", "-n", "120", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert len(_calls(result.stdout, {"w"})) == 1
    record = json.loads(run_infer(*args, "--tool-choice", "w", "-n", "120", "--json").stdout)
    assert record["finish_reason"] == "tool_calls" and record["tool_calls"]
    assert record["tool_calls"][0]["function"]["name"] == "w"
    jsonschema.validate(json.loads(record["tool_calls"][0]["function"]["arguments"]), PARAMS)
    plain = run_infer(*args, "--tool-choice", "none", "-n", "4", "--temperature", "0")
    assert plain.returncode == 0 and b"tool_calls" not in plain.stdout


def test_remote_required_call_cut_off_is_an_error(served: Server, tool_file: Path) -> None:
    model = served.client().models.list().data[0].id
    result = run_infer(
        "run", model, "Oslo?", "--tool", f"@{tool_file}", "--remote", served.url,
        "--tool-choice", "required", "-n", "5",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert b"cut off at 5 tokens before the tool call was complete (--max-tokens)" in result.stderr


def test_remote_refuses_bad_tools_before_connecting(tool_file: Path) -> None:
    result = run_infer("run", "m", "hi", "--tool", '{"name": 1}', "--remote", "http://127.0.0.1:9")
    assert result.returncode == 2 and b"needs a 'name'" in result.stderr
