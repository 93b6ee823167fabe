"""Constrained decoding (issue 14): --json-schema, --grammar, --format json on `infer run`, the
batch path and the library; schemas checked before a model loads; answers that always parse."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from infer.runtime import GenerateOptions, LoadOptions, Message, SamplingParams, generate, load
from infer.runtime.errors import UsageError
from infer.runtime.generation.batch_file import parse_batch
from infer.runtime.llama.grammar import (
    MAX_GRAMMAR_BYTES,
    check_grammar,
    constraint,
    json_grammar,
    schema_grammar,
)

from .conftest import run_infer
from .test_cli_run import assert_one_line_error

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}

# (prompt, schema): each answer at temperature 0 must parse and validate.
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Describe a person named Ann, 31.", PERSON),
    ("Is the sky blue?", {"type": "boolean"}),
    ("How many legs has a cat?", {"type": "integer"}),
    ("What is pi?", {"type": "number"}),
    ("What is the capital of France?", {"type": "string"}),
    ("Nothing here.", {"type": "null"}),
    ("Pick a colour.", {"enum": ["red", "green", "blue"]}),
    ("Say the version.", {"const": "v1"}),
    ("List three animals.", {"type": "array", "items": {"type": "string"}, "maxItems": 3}),
    (
        "List two or three numbers.",
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
    ),
    (
        "Describe a book.",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "pages": {"type": "integer"},
                "subtitle": {"type": "string", "maxLength": 40},
            },
            "required": ["title"],
            "additionalProperties": False,
        },
    ),
    (
        "Describe a company and its address.",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"],
                },
            },
            "required": ["name", "address"],
        },
    ),
    ("When did it happen?", {"type": "string", "format": "date"}),
    ("At what time?", {"type": "string", "format": "time"}),
    ("When exactly?", {"type": "string", "format": "date-time"}),
    ("Give an id.", {"type": "string", "format": "uuid"}),
    ("Give a product code.", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}),
    ("A short word.", {"type": "string", "minLength": 2, "maxLength": 5}),
    (
        "Two people.",
        {
            "$defs": {"person": PERSON},
            "type": "array",
            "items": {"$ref": "#/$defs/person"},
            "minItems": 2,
            "maxItems": 2,
        },
    ),
    (
        "A number or a word.",
        {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}]},
    ),
    ("Your name, or null if you have none?", {"type": ["string", "null"]}),
    (
        "A task list.",
        {
            "type": "object",
            "properties": {
                "tasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "title": {"type": "string", "maxLength": 30},
                            "done": {"type": "boolean"},
                            "priority": {"enum": ["low", "high"]},
                        },
                        "required": ["title", "done", "priority"],
                        "additionalProperties": False,
                    },
                    "maxItems": 3,
                }
            },
            "required": ["tasks"],
            "additionalProperties": False,
        },
    ),
    (
        "Width 3 and height 4.",
        {
            "type": "object",
            "properties": {"width": {"type": "integer"}},
            "required": ["width"],
            "additionalProperties": {"type": "integer"},
        },
    ),
    (
        "A point.",
        {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]},
    ),
    (
        "A tree node with v 5 and no kids.",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer"},
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 1},
                    },
                    "required": ["v"],
                }
            },
            "$ref": "#/$defs/node",
        },
    ),
]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    engine = load("smollm2", LoadOptions(ctx_size=2048)).new_session()
    yield engine
    engine.model.close()


def answer(engine: Any, prompt: str, grammar: str, max_tokens: int = 200, **kw: Any) -> Any:
    sampling = SamplingParams(temperature=0, grammar=grammar, **kw)
    gen = generate(engine, [Message("user", prompt)], sampling, GenerateOptions(max_tokens))
    text = "".join(gen)
    return gen, text


@pytest.mark.parametrize(("prompt", "schema"), SCHEMAS, ids=[p for p, _ in SCHEMAS])
def test_schema_answers_validate(smollm2: Any, prompt: str, schema: dict[str, Any]) -> None:
    assert len(SCHEMAS) >= 20
    gen, text = answer(smollm2, prompt + " Answer in JSON.", schema_grammar(json.dumps(schema)))
    assert gen.stats.finish_reason == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_format_json_answers_an_object(smollm2: Any) -> None:
    gen, text = answer(smollm2, 'Reply with {"ok": true}', json_grammar(), max_tokens=400)
    assert gen.stats.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


# Every answer this schema allows is short (a bounded name, an age from a list, llama.cpp's
# bounded whitespace): a sampled answer must end by itself well within 300 tokens.
BOUNDED_PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"enum": [18, 31, 42, 67]}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_sampled_answers_validate_too(smollm2: Any) -> None:
    grammar = schema_grammar(json.dumps(BOUNDED_PERSON))
    texts = set()
    for seed in range(3):
        sampling = SamplingParams(temperature=1.0, seed=seed, grammar=grammar)
        gen = generate(smollm2, [Message("user", "A person")], sampling, GenerateOptions(300))
        text = "".join(gen)
        assert gen.stats.finish_reason == "stop", text  # the grammar ended it, not the budget
        jsonschema.validate(json.loads(text), BOUNDED_PERSON)
        texts.add(text)
    assert len(texts) > 1  # sampled, not greedy: the seeds gave different answers


def test_speculative_decoding_honours_the_grammar(smollm2: Any) -> None:
    schema = {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}
    grammar = schema_grammar(json.dumps(schema))
    prompt = [Message("user", "red green blue red green blue: list them as JSON")]
    sampling = SamplingParams(temperature=0, grammar=grammar)
    options = GenerateOptions(100, draft_adapt=False)
    plain = "".join(generate(smollm2, prompt, sampling, options))
    drafted = generate(smollm2, prompt, sampling, options, drafter="lookup")
    assert "".join(drafted) == plain
    jsonschema.validate(json.loads(plain), schema)


def test_tiny_model_output_matches_the_grammar(tiny_model: Path) -> None:
    engine = load(str(tiny_model), LoadOptions()).new_session()
    try:
        for seed in range(4):
            sampling = SamplingParams(
                temperature=1.5, seed=seed, grammar='root ::= [a-c]+ ("!" | "?") [x-z]{0,3}'
            )
            gen = generate(engine, [Message("user", "go")], sampling, GenerateOptions(24))
            text = "".join(gen)
            if gen.stats.finish_reason == "stop":
                assert re.fullmatch(r"[a-c]+[!?][x-z]{0,3}", text), text
            else:
                assert re.fullmatch(r"[a-c]*([!?][x-z]{0,3})?", text), text
    finally:
        engine.model.close()


def test_a_character_no_token_spells_ends_the_answer(tiny_model: Path) -> None:
    """llama.cpp aborts the process when the grammar is handed a token it rejects; with every
    candidate rejected (a NUL, which no piece holds) the answer ends instead."""
    engine = load(str(tiny_model), LoadOptions()).new_session()
    try:
        sampling = SamplingParams(temperature=0, grammar='root ::= "a" [\\x00] "b"')
        gen = generate(engine, [Message("user", "go")], sampling, GenerateOptions(8))
        assert "".join(gen) == "a"
    finally:
        engine.model.close()


# -- checked before a model loads ------------------------------------------------------------


@pytest.mark.parametrize(
    ("grammar", "reason"),
    [
        ('root ::= "a', "unexpected end of input"),
        ("root ::= undefined-rule", "Undefined rule identifier 'undefined-rule'"),
        ('root ::= root "a" | "b"', "left recursion"),
        ('expr ::= "a"', "no 'root' rule"),
        ("root ::= [a-", "unexpected end"),
        ('root ::= "a"{', "expecting"),
        ("", "empty"),
        ("   \n", "empty"),
    ],
)
def test_bad_grammars_are_refused(grammar: str, reason: str) -> None:
    with pytest.raises(UsageError, match=re.escape(reason)):
        check_grammar(grammar)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object (got an array)"),
        ('"string"', "must be a JSON object"),
        ('{"type": "integer", "minimum": 3}', "keyword 'minimum'"),
        ('{"type": "number", "multipleOf": 2}', "keyword 'multipleOf'"),
        ('{"type": "string", "format": "email"}', "format 'email'"),
        ('{"oneOf": [{"type": "string"}]}', "keyword 'oneOf' is not supported (use anyOf)"),
        ('{"not": {"type": "string"}}', "keyword 'not'"),
        ('{"type": "array", "items": {}, "uniqueItems": true}', "keyword 'uniqueItems'"),
        ('{"type": "object", "patternProperties": {}}', "keyword 'patternProperties'"),
        ('{"type": "object", "minProperties": 1}', "keyword 'minProperties'"),
        ('{"type": "string", "pattern": "[a-z]+"}', "anchored"),
        ('{"type": "string", "pattern": "^a$", "maxLength": 3}', "'maxLength' next to 'pattern'"),
        ('{"type": "array", "maxItems": 3}', "need 'items'"),
        ('{"properties": {"a": {}}, "required": ["b"]}', "required property 'b'"),
        ('{"$ref": "https://example.com/s.json"}', "only local $ref"),
        ('{"$ref": "#/$defs/missing"}', "points to nothing"),
        ('{"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {}}}', "next to '$ref'"),
        ('{"type": "integer", "enum": [1], "maximum": 3}', "keyword 'maximum'"),
        ('{"type": "date"}', "unknown type 'date'"),
        ('{"anyOf": [{"type": "string"}], "type": "string"}', "next to 'anyOf'"),
        ('{"properties": {"a": {"type": "integer", "exclusiveMinimum": 0}}}', "/properties/a"),
    ],
)
def test_unsupported_schemas_are_refused(schema: str, words: str) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        schema_grammar(schema)


def test_text_over_the_bound_is_refused() -> None:
    big = "x" * (MAX_GRAMMAR_BYTES + 1)
    with pytest.raises(UsageError, match="larger than 10 MB"):
        check_grammar(big)
    with pytest.raises(UsageError, match="larger than 10 MB"):
        schema_grammar(big)


def test_only_one_constraint_at_a_time() -> None:
    with pytest.raises(UsageError, match="--json-schema and --format cannot be used together"):
        constraint(json_schema="{}", format="json")
    assert constraint(format="off") == ""
    assert constraint() == ""


def test_json_strings_have_no_raw_control_characters() -> None:
    """The converter's own string rule lets a raw newline into a string: invalid JSON."""
    grammar = schema_grammar('{"type": "string"}')
    assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F]' in grammar


def test_batch_file_fields_constrain_their_line() -> None:
    base = SamplingParams(grammar=json_grammar())
    text = "\n".join(
        [
            json.dumps({"prompt": "a", "json_schema": PERSON}),
            json.dumps({"prompt": "b", "grammar": 'root ::= "x"'}),
            json.dumps({"prompt": "c", "format": "off"}),
            json.dumps({"prompt": "d"}),
        ]
    )
    items = parse_batch(text, base, GenerateOptions(), name="f.jsonl")
    assert "a-kv" not in items[0].sampling.grammar and "name-kv" in items[0].sampling.grammar
    assert items[1].sampling.grammar == 'root ::= "x"'
    assert items[2].sampling.grammar == ""
    assert items[3].sampling.grammar == json_grammar()


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"prompt": "a", "json_schema": {"type": "integer", "minimum": 0}}, "keyword 'minimum'"),
        ({"prompt": "a", "grammar": "root ::= nope"}, "Undefined rule identifier 'nope'"),
        ({"prompt": "a", "grammar": "x", "format": "json"}, "cannot be used together"),
        ({"prompt": "a", "format": "yaml"}, "format must be json or off"),
    ],
)
def test_bad_batch_lines_name_the_line(line: dict[str, Any], words: str) -> None:
    from infer.runtime.errors import BatchFileError

    text = json.dumps({"prompt": "fine"}) + "\n" + json.dumps(line)
    with pytest.raises(BatchFileError, match=re.escape(words)) as e:
        parse_batch(text, SamplingParams(), GenerateOptions(), name="f.jsonl")
    assert "2" in str(e.value)


# -- the command line ------------------------------------------------------------------------


def test_run_json_schema_answers_valid_json(tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    result = run_infer(
        "run", "smollm2", "Describe Ann, 31.", "--temperature", "0", "--json-schema", f"@{schema}"
    )
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), PERSON)


def test_run_grammar_and_format(tmp_path: Path) -> None:
    result = run_infer(
        "run", "smollm2", "Is water wet?", "--temperature", "0", "--grammar",
        'root ::= "yes" | "no"',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() in ("yes", "no")
    result = run_infer("run", "smollm2", "A cat.", "--temperature", "0", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)


def test_run_cut_off_answer_exits_1() -> None:
    result = run_infer(
        "run", "smollm2", "A cat.", "--temperature", "0", "--format", "json", "-n", "4"
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.strip().splitlines()[-1] == (
        "infer: error: the answer was cut off at 4 tokens before the JSON was complete "
        "(--max-tokens)"
    )
    record = run_infer(
        "run", "smollm2", "A cat.", "--temperature", "0", "--format", "json", "-n", "4", "--json"
    )
    assert record.returncode == 1
    assert json.loads(record.stdout)["finish_reason"] == "length"


def test_run_cut_off_by_the_context_exits_1(tiny_model: Path) -> None:
    result = run_infer(
        "run", str(tiny_model), "go", "--ctx-size", "48", "--grammar", "root ::= [a-z]+",
        "--temperature", "0",
    )  # fmt: skip
    assert result.returncode == 1
    assert re.fullmatch(rb"[a-z]+\n?", result.stdout), result.stdout
    last = result.stderr.decode().strip().splitlines()[-1]
    assert re.fullmatch(
        r"infer: error: the answer was cut off at \d+ tokens before the grammar was complete "
        r"\(--ctx-size\)",
        last,
    ), last


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--grammar", "root ::= nope"], "Undefined rule identifier 'nope'"),
        (["--grammar", 'root ::= root "a"'], "left recursion"),
        (["--json-schema", "{nope"], "--json-schema: not valid JSON"),
        (["--json-schema", "[]"], "must be a JSON object"),
        (["--json-schema", '{"type": "string", "format": "uri"}'], "format 'uri'"),
        (["--json-schema", "@/no/such/file.json"], "cannot read /no/such/file.json"),
        (["--format", "yaml"], "--format must be json or off"),
        (["--format", "json", "--grammar", 'root ::= "a"'], "cannot be used together"),
    ],
)
def test_bad_constraints_fail_before_the_load(flags: list[str], words: str) -> None:
    # A model that does not exist: the constraint is checked first.
    result = run_infer("run", "./no-such-model.gguf", "hi", *flags)
    assert_one_line_error(result, 2, words)


def test_oversized_schema_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_GRAMMAR_BYTES + 1)
    result = run_infer("run", "smollm2", "hi", "--json-schema", f"@{big}")
    assert_one_line_error(result, 2, "larger than 10 MB")


def test_batch_answers_follow_each_lines_constraint(tmp_path: Path) -> None:
    lines = [
        {"prompt": "Describe Bob, 40.", "json_schema": PERSON},
        {"prompt": "Is ice cold?", "grammar": 'root ::= "yes" | "no"'},
        {"prompt": "Describe Eve, 22."},
    ]
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_infer(
        "run", "smollm2", "--batch", str(batch), "--temperature", "0", "--json-schema",
        json.dumps(PERSON), "-n", "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["finish_reason"] for r in out] == ["stop"] * 3
    jsonschema.validate(json.loads(out[0]["text"]), PERSON)
    assert out[1]["text"] in ("yes", "no")
    jsonschema.validate(json.loads(out[2]["text"]), PERSON)  # the flag's schema


# -- the chat --------------------------------------------------------------------------------


def test_chat_format_json_and_off() -> None:
    from .test_chat_repl import Chat

    chat = Chat("--temperature", "0", "-n", "200")
    assert "format free text" in chat.say("/show")
    assert "(format json)" in chat.say("/format json")
    assert "format constrained" in chat.say("/show")
    answer = chat.say('Reply with {"ok": true}').split("\n", 1)[1]
    assert isinstance(json.loads(answer), dict)
    assert "(format off)" in chat.say("/format off")
    assert "usage: /format json|off" in chat.say("/format yaml")
    assert "/format json|off" in chat.say("/set grammar x")
    assert chat.bye() == 0


def test_chat_takes_the_schema_flag() -> None:
    from .test_chat_repl import Chat

    chat = Chat("--temperature", "0", "--json-schema", json.dumps(PERSON), command="chat")
    answer = chat.say("Describe Ann, 31.").split("\n", 1)[1]
    jsonschema.validate(json.loads(answer), PERSON)
    assert chat.bye() == 0
