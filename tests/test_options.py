"""The one table of generation options (runtime/options.py): its ranges as docs/options.md states
them, one verdict per value on every front door (`infer run`, a batch file line, models.toml,
HTTP), and the layering of Overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infer.runtime.errors import BatchFileError, ConfigError, OptionError
from infer.runtime.generation.batch_file import parse_batch
from infer.runtime.models.registry import load_registry
from infer.runtime.options import OPTIONS, Option, Overrides, check, sampling
from infer.runtime.params import GenerateOptions, SamplingParams

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"
BEGIN, END = "<!-- options: begin -->", "<!-- options: end -->"


def _row(o: Option) -> str:
    default = "random" if o.default is None else f"{o.default:g}"
    protocols = (o.openai, o.ollama, o.llama_cpp)
    names = " / ".join(f"`{n}`" if n else "-" for n in protocols)
    if set(protocols) == {o.name}:
        names = "the same"
    # A flag is the option's name spelled as a flag (the page says so once, in prose).
    assert o.flag in (None, "--" + o.name.replace("_", "-"))
    flag = "yes" if o.flag else "no"
    models_toml = "yes" if o.per_model else "no"
    return (
        f"| `{o.name}` | {o.kind.__name__} | {default} | {o.interval()} | {flag} | {names} | "
        f"{models_toml} | {o.help} |"
    )


def _table() -> str:
    head = (
        "| option | type | default | range | flag | OpenAI / Ollama / llama.cpp field | "
        "models.toml | meaning |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_row(o) for o in OPTIONS)])


def test_the_documented_table_is_the_table() -> None:
    text = DOC.read_text("utf-8")
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert documented == _table(), "docs/options.md is stale; its table should read:\n" + _table()


def test_overrides_and_sampling_params_have_the_tables_fields() -> None:
    from dataclasses import fields

    names = [o.name for o in OPTIONS]
    assert [f.name for f in fields(Overrides)] == names
    assert set(names) <= {f.name for f in fields(SamplingParams)}
    assert all(o.default == getattr(SamplingParams(), o.name) for o in OPTIONS)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("temperature", 100.5, "must be between 0 and 100 (got 100.5)"),
        ("temperature", -1, "must be between 0 and 100 (got -1)"),
        ("temperature", float("nan"), "must be a finite number (got nan)"),
        ("temperature", "hot", "must be a number (got 'hot')"),
        ("temperature", True, "must be a number (got True)"),
        ("top_k", -3, "must be >= 0 (got -3)"),
        ("top_k", 2**31, "must be at most 2147483647 (got 2147483648)"),
        ("top_k", 1.5, "must be an integer (got 1.5)"),
        ("repeat_penalty", 0, "must be > 0 and <= 100 (got 0)"),
        ("seed", 2**32, "must be between 0 and 4294967295 (got 4294967296)"),
        ("presence_penalty", 2.5, "must be between -2 and 2 (got 2.5)"),
    ],
)
def test_check_names_the_option_and_the_bound(name: str, value: object, problem: str) -> None:
    with pytest.raises(OptionError) as err:
        check(name, value)
    assert (err.value.option, err.value.problem) == (name, problem)
    assert str(err.value) == f"{name} {problem}"  # the runtime's words: no flag


def test_check_keeps_the_options_type() -> None:
    assert check("top_k", 5.0) == 5 and isinstance(check("top_k", 5.0), int)
    assert check("temperature", 1) == 1.0 and isinstance(check("temperature", 1), float)
    assert check("seed", 2**32 - 1) == 2**32 - 1


def test_first_layer_wins_over_the_next_over_the_defaults() -> None:
    request = Overrides(temperature=0.1)
    model = Overrides(temperature=0.5, top_k=7)
    params = sampling(request, model)
    assert (params.temperature, params.top_k, params.top_p) == (0.1, 7, SamplingParams().top_p)
    assert request.over(model) == Overrides(temperature=0.1, top_k=7)
    assert sampling(base=SamplingParams(grammar="root ::= x")).grammar == "root ::= x"
    with pytest.raises(OptionError, match="top_p"):
        Overrides.of({"top_p": 2})
    with pytest.raises(OptionError, match="temperature"):
        SamplingParams(temperature=-1).validate()


# -- one verdict per value on every front door -------------------------------------------------
BAD = [("temperature", 500, "--temperature", "must be between 0 and 100 (got 500)"),
       ("top_k", -3, "--top-k", "must be >= 0 (got -3)")]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "flag", "problem"), BAD, ids=[b[0] for b in BAD])
def test_the_same_value_gets_the_same_verdict_everywhere(
    name: str, value: int, flag: str, problem: str, infer_home: Path
) -> None:
    from infer.runtime.server.openai_requests import parse_chat
    from infer.runtime.server.request_fields import ApiError

    from .conftest import run_infer

    # infer run: exit 2, the flag named
    result = run_infer("run", "smollm2", "hi", flag, str(value))
    assert result.returncode == 2
    assert result.stderr.decode().strip() == f"infer: error: {flag} {problem}", result.stderr
    # a batch file line: the line and its field
    with pytest.raises(BatchFileError) as line_err:
        parse_batch(
            json.dumps({"prompt": "hi", name: value}) + "\n",
            SamplingParams(),
            GenerateOptions(),
            name="p.jsonl",
        )
    assert str(line_err.value) == f"p.jsonl, line 1: '{name}' {problem}"
    # models.toml: the file, the entry, the field
    user_file = infer_home / "config" / "models.toml"
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text(f"[models.smollm2.defaults]\n{name} = {value}\n", "utf-8")
    with pytest.raises(ConfigError) as file_err:
        load_registry()
    assert str(file_err.value) == f"{user_file}: models.smollm2.defaults.{name}: {problem}"
    # HTTP: a 400 naming the JSON field
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], name: value}
    with pytest.raises(ApiError) as http_err:
        parse_chat(body)
    assert (http_err.value.status, http_err.value.param) == (400, name)
    assert http_err.value.message == f"'{name}' {problem}"


def test_cli_words_runtime_errors_with_flags() -> None:
    from infer.cli.app import exit_code
    from infer.cli.options import flag_of
    from infer.runtime.errors import ContextOverflowError, Interrupted, UsageError

    assert flag_of("top_k") == "--top-k" and flag_of("ctx_size") == "--ctx-size"
    overflow = ContextOverflowError(20, 8, 2048)
    assert "raise it with ctx_size" in str(overflow)
    assert "raise it with --ctx-size" in overflow.worded(flag_of)
    assert OptionError("threads", "must be >= 1").worded(flag_of) == "--threads must be >= 1"
    errors = (OptionError("x", "y"), UsageError("u"), Interrupted(), ConfigError("c"))
    assert [exit_code(e) for e in errors] == [2, 2, 130, 1]


def test_flags_win_over_the_models_defaults_in_one_merge() -> None:
    from infer.cli.loading import sampling_params
    from infer.runtime.models.registry import ModelDefaults

    model = ModelDefaults(Overrides(temperature=0.2, top_k=7), ctx_size=4096)
    params = sampling_params(model, Overrides(temperature=0.9), grammar="root ::= x")
    assert (params.temperature, params.top_k, params.grammar) == (0.9, 7, "root ::= x")
    assert sampling_params(model, top_p=0.5, seed=None).top_p == 0.5  # the flags one by one
    with pytest.raises(OptionError, match="top_k"):
        sampling_params(model, Overrides(), top_k=-1)
    assert (model.context(None), model.context(512), ModelDefaults().context(None)) == (
        4096,
        512,
        None,
    )
