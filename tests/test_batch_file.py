"""The runtime's batch-file parser (runtime/generation/batch_file.py), in process, no model: what
`--batch` and any other front end get from the same text."""

from __future__ import annotations

import json

import pytest

from infer.runtime.errors import BatchFileError, InputError
from infer.runtime.generation.batch_file import BatchItem, parse_batch
from infer.runtime.options import BY_NAME
from infer.runtime.params import GenerateOptions, SamplingParams

SAMPLING = SamplingParams(temperature=0.5, top_k=20, seed=7)
OPTIONS = GenerateOptions(max_tokens=5, stop=["END"])


def parse(text: str, suffix: str = ".jsonl") -> list[BatchItem]:
    return parse_batch(text, SAMPLING, OPTIONS, name="p.jsonl", suffix=suffix)


def error(text: str, suffix: str = ".jsonl") -> BatchFileError:
    with pytest.raises(BatchFileError) as err:
        parse(text, suffix)
    assert isinstance(err.value, InputError)  # the CLI maps it as any input error
    return err.value


def test_json_line_overrides_the_callers_settings_and_keeps_the_rest() -> None:
    line = (
        '{"id": "q1", "prompt": "hi", "system": "be brief", "max_tokens": 2, "stop": "x", '
        '"temperature": 0, "top_p": 0.9}'
    )
    (item,) = parse(line + "\n")
    assert (item.line, item.id, item.prompt, item.system) == (1, "q1", "hi", "be brief")
    assert (item.options.max_tokens, item.options.stop) == (2, ["x"])
    assert (item.sampling.temperature, item.sampling.top_p) == (0, 0.9)
    assert (item.sampling.top_k, item.sampling.seed) == (20, 7)  # not overridden: the caller's
    (plain,) = parse('{"prompt": "a", "stop": ["p", "q"], "seed": null}')
    assert plain.id is None and plain.system is None
    assert (plain.options.max_tokens, plain.options.stop) == (5, ["p", "q"])
    assert plain.sampling == SAMPLING  # null is "not given"
    assert SAMPLING.temperature == 0.5 and OPTIONS.stop == ["END"]  # the caller's, unchanged


def test_a_line_may_set_every_option_of_the_table() -> None:
    values = {"repeat_last_n": -1, "frequency_penalty": 0.5, "presence_penalty": -0.5,
              "repeat_penalty": 1.2, "min_p": 0.1, "top_k": 3, "seed": 1, "temperature": 2,
              "top_p": 0.5}  # fmt: skip
    assert set(values) == set(BY_NAME)
    (item,) = parse(json.dumps({"prompt": "hi", **values}) + "\n")
    assert {name: getattr(item.sampling, name) for name in values} == values


def test_plain_text_lines_are_prompts_with_the_callers_settings() -> None:
    items = parse('{"prompt": "a"}\r\nsecond line\n', suffix=".txt")
    assert [(i.line, i.prompt) for i in items] == [(1, '{"prompt": "a"}'), (2, "second line")]
    assert all(i.sampling == SAMPLING and i.options.stop == ["END"] for i in items)
    sniffed = parse("just text\n{not json}\n", suffix="")  # no suffix: the first line decides
    assert [i.prompt for i in sniffed] == ["just text", "{not json}"]
    assert [i.prompt for i in parse('{"prompt": "j"}\n', suffix=".DATA")] == ["j"]


def test_blank_lines_are_skipped_but_counted() -> None:
    items = parse('\n  \n{"prompt": "a"}\n\r\n\t\n{"prompt": "b"}\n\n')
    assert [(i.line, i.prompt) for i in items] == [(3, "a"), (6, "b")]
    err = error("\n \r\n\t\n", suffix=".txt")
    assert (str(err), err.line) == ("p.jsonl: no prompts", None)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "x",}', "not valid JSON ("),  # the parser's words vary by Python version
        ('["x"]', 'expected a JSON object with a "prompt"'),
        ('{"system": "x"}', '"prompt" is missing or empty'),
        ('{"prompt": "  "}', '"prompt" is missing or empty'),
        ('{"prompt": "x", "max_tokens": "5"}', "'max_tokens' has the wrong type (str)"),
        ('{"prompt": "x", "top_k": true}', "'top_k' has the wrong type (bool)"),
        ('{"prompt": "x", "stop": ["a", 1]}', "'stop' has the wrong type (list)"),
        ('{"prompt": "x", "n": 1}', "unknown field 'n' (known: id, prompt, system,"),
        ('{"prompt": "x", "top_p": 2}', "'top_p' must be between 0 and 1 (got 2)"),
        ('{"prompt": "x", "top_k": -1}', "'top_k' must be >= 0 (got -1)"),
        ('{"prompt": "x", "presence_penalty": 2.5}', "'presence_penalty' must be between -2 and 2"),
        ('{"prompt": "x", "repeat_last_n": 1.5}', "'repeat_last_n' has the wrong type (float)"),
        ('{"prompt": "x", "max_tokens": -1}', "'max_tokens' must be >= 0 (got -1)"),
        ('{"prompt": "x", "seed": 1' + "0" * 5000 + "}", "a number with too many digits"),
    ],
)  # fmt: skip
def test_a_malformed_line_names_its_number(line: str, reason: str) -> None:
    err = error('{"prompt": "fine"}\n\n' + line + "\n")
    assert (err.source, err.line) == ("p.jsonl", 3)
    assert str(err).startswith("p.jsonl, line 3: ") and reason in err.reason


def test_deep_nesting_is_an_error_naming_the_line() -> None:
    err = error('{"prompt": "hi"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert str(err) == "p.jsonl, line 2: not valid JSON (nested too deeply)"


@pytest.mark.parametrize("field", ['"prompt": "broken \\ud800 text"', '"stop": ["ok", "\\udfff"]'])
def test_a_lone_surrogate_is_an_error_naming_line_and_field(field: str) -> None:
    line = "{" + field + "}" if "prompt" in field else '{"prompt": "x", ' + field + "}"
    err = error('{"prompt": "fine"}\n' + line + "\n")
    key = "prompt" if "prompt" in field else "stop"
    assert str(err).startswith(f"p.jsonl, line 2: '{key}' is not valid Unicode (a lone surrogate")
