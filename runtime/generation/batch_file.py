"""Batch files: the prompts of a `--batch` file as validated items, each with its settings.

A batch file is JSON Lines (one object a line: "prompt", optional "id", "system", "max_tokens",
"stop", any option of runtime/options.py's table (temperature, top_k...), which override the
caller's, and at most one of "json_schema" (an
object, or its text), "grammar" (GBNF) or "format" ("json" or "off"), which replace the caller's
constraint) or plain text with one prompt per
line. Parsing, validation and the per-prompt merging live here, not in the CLI, because every
front end that takes many prompts (the CLI's `--batch`, a library user, an HTTP server) needs the
same rules and the same errors, which name the source and the line. Pure Python: no model, no
file access (the caller reads the text, with its own bounds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BatchFileError, UsageError
from ..options import BY_NAME, OPTIONS, Overrides, SamplingParams
from ..params import GenerateOptions

# A line's fields and their JSON types: its own, then every option of the table (an integer is a
# number too; the ranges are the table's, checked when the line's settings are merged).
FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str, int),
    "prompt": (str,),
    "system": (str,),
    "max_tokens": (int,),
    "stop": (str, list),
    **{o.name: (int,) if o.kind is int else (int, float) for o in OPTIONS},
    "json_schema": (dict, str),
    "grammar": (str,),
    "format": (str,),
}
_CONSTRAINT_FIELDS = ("json_schema", "grammar", "format")


@dataclass
class BatchItem:
    """One input line, its settings already merged with the caller's and validated."""

    line: int
    prompt: str
    id: str | int | None
    system: str | None
    sampling: SamplingParams
    options: GenerateOptions
    # What the line itself set, for front ends that merge over other layers themselves (a
    # remote answerer sends only what was set): its sampling options, max_tokens and stop.
    own: Overrides = field(default_factory=Overrides)
    own_max_tokens: int | None = None
    own_stop: tuple[str, ...] | None = None


def parse_batch(
    text: str, sampling: SamplingParams, options: GenerateOptions, *, name: str, suffix: str = ""
) -> list[BatchItem]:
    """The prompts of a batch file's `text`; `name` is what errors call the file. JSON Lines
    when `suffix` (the file name's, e.g. ".jsonl") is .jsonl/.ndjson, plain text for .txt,
    otherwise JSON Lines when the first non-blank line starts with "{". Blank lines are skipped;
    line numbers count them. Each item's sampling and options are `sampling` and `options` with
    its own fields in place of theirs, validated. Raises BatchFileError naming the line."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise BatchFileError(name, None, "no prompts")
    suffix = suffix.lower()
    jsonl = suffix in (".jsonl", ".ndjson") or (suffix != ".txt" and first.lstrip()[:1] == "{")
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = _json_fields(name, number, line) if jsonl else {"prompt": line}
        items.append(_item(name, number, fields, sampling, options))
    return items


def _json_fields(name: str, number: int, line: str) -> dict[str, Any]:
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        raise BatchFileError(name, number, f"not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:  # [[[[...]]]] deeper than Python's stack
        raise BatchFileError(name, number, "not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer past Python's 4300-digit limit
        reason = "not valid JSON (a number with too many digits)"
        raise BatchFileError(name, number, reason) from None
    if not isinstance(fields, dict):
        raise BatchFileError(name, number, 'expected a JSON object with a "prompt"')
    for key, value in fields.items():
        if key not in FIELDS:
            reason = f"unknown field '{key}' (known: {', '.join(FIELDS)})"
            raise BatchFileError(name, number, reason)
        ok = value is None or (isinstance(value, FIELDS[key]) and not isinstance(value, bool))
        if key == "stop" and isinstance(value, list):
            ok = all(isinstance(s, str) for s in value)
        if not ok:
            reason = f"'{key}' has the wrong type ({type(value).__name__})"
            raise BatchFileError(name, number, reason)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                _check_unicode(text, name, number, key)
    return {key: value for key, value in fields.items() if value is not None}


def _check_unicode(text: str, name: str, number: int, key: str) -> None:
    """JSON may escape a lone surrogate ("\\ud800"): text that no encoding can write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        reason = (
            f"'{key}' is not valid Unicode (a lone surrogate, {text[e.start]!r}, at character "
            f"{e.start})"
        )
        raise BatchFileError(name, number, reason) from None


def _item(
    name: str, number: int, fields: dict[str, Any], sampling: SamplingParams, base: GenerateOptions
) -> BatchItem:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BatchFileError(name, number, '"prompt" is missing or empty')
    stop = fields.get("stop", base.stop)
    try:
        line = Overrides.of({k: v for k, v in fields.items() if k in BY_NAME})
        line_sampling = line.over(sampling).validate()
        if any(k in fields for k in _CONSTRAINT_FIELDS):
            line_sampling.grammar = _constraint(fields)
            line_sampling.grammar_triggers = ()  # the caller's were its grammar's
        options = replace(
            base,
            max_tokens=fields.get("max_tokens", base.max_tokens),
            stop=[stop] if isinstance(stop, str) else list(stop),
        ).validate()
    except UsageError as e:  # names the line's field as the line does: 'top_p'
        raise BatchFileError(name, number, e.worded(lambda field: f"'{field}'")) from None
    own_stop = None if "stop" not in fields else tuple(options.stop)
    return BatchItem(
        number,
        prompt,
        fields.get("id"),
        fields.get("system"),
        line_sampling,
        options,
        own=line,
        own_max_tokens=fields.get("max_tokens"),
        own_stop=own_stop,
    )


def _constraint(fields: dict[str, Any]) -> str:
    """The line's own grammar from its json_schema, grammar or format field (checked)."""
    from ..llama.grammar import constraint

    return constraint(
        json_schema=fields.get("json_schema"),
        grammar=fields.get("grammar"),
        format=fields.get("format"),
        names=("json_schema", "grammar", "format"),
    )
