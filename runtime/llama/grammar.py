"""Constrained decoding: the GBNF text a sampler chain's grammar sampler runs (llama.cpp's
`llama_sampler_init_grammar`), from `--grammar`, `--json-schema` or `--format json`, checked
before a model loads.

A JSON schema becomes GBNF through llama-cpp-python's port of llama.cpp's converter
(`llama_cpp/llama_grammar.py`, pure Python). That port silently ignores keywords it does not
implement (`minimum`, `format: email`, `oneOf` exclusivity...), which would give an answer that
does not validate; so the schema is walked first and anything the converter would not enforce is
refused, naming the keyword. Its string rules also allow raw control characters, which JSON
forbids inside strings: those rules are replaced by JSON-correct ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import threading
from functools import lru_cache
from typing import Any

from ..errors import UsageError
from .constrained import constrained_chain

__all__ = ["constrained_chain"]  # the sampler lives in constrained.py; engines import it here

MAX_GRAMMAR_BYTES = 10 * 1024 * 1024  # grammar or schema text; llama.cpp parses it per sampler
# llama.cpp parses nested groups, checks for left recursion and expands a grammar's stacks by
# recursion on the C stack, one level per rule (each group and repetition is a rule of its own):
# 30,000 nested groups or a chain of 100,000 rules crashed its parser (SIGSEGV) on an 8 MB stack,
# and a thread's stack may be 2 MB. At most this many rules, so no request can overflow it.
MAX_GRAMMAR_RULES = 5000
# What is not grammar structure: literals, character classes and comments.
_NOT_STRUCTURE = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\r\n]*')

# Keywords that only describe (never constrain): accepted anywhere, ignored.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "examples",
        "default",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$anchor",
    }
)
# Keywords the converter enforces (each only in the combinations _check_node allows).
SUPPORTED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "pattern",
        "format",
        "minLength",
        "maxLength",
    }
)
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4"})
FORMATS |= {"uuid5"}
_FORMATS_SHOWN = "date, time, date-time, uuid"

# A JSON string's character (RFC 8259: no raw control characters, quote or backslash).
_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
_JSON_DOT = r'[^"\\\x7F\x00-\x1F]'


FLAGS = ("--json-schema", "--grammar", "--format")


def constraint(
    *,
    json_schema: str | dict[str, Any] | None = None,
    grammar: str | None = None,
    format: str | None = None,
    names: tuple[str, str, str] = FLAGS,
) -> str:
    """The GBNF for at most one of a JSON schema (text or parsed), a grammar or a format
    ("json"; "off"/"text": none), checked; "" for none. `names` are what errors call the three
    (flags, batch-file fields). UsageError for two at once or anything llama.cpp cannot run."""
    given = [n for n, v in zip(names, (json_schema, grammar, format), strict=True) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} cannot be used together")
    if json_schema is not None:
        if isinstance(json_schema, str):
            return check_grammar(schema_grammar(json_schema, names[0]), names[0])
        return check_grammar(schema_dict_grammar(json_schema, names[0]), names[0])
    if grammar is not None:
        return check_grammar(grammar, names[1])
    if format is None or format in ("off", "text"):
        return ""
    if format == "json":
        return json_grammar()
    raise UsageError(f"{names[2]} must be json or off (got {format!r})")


def json_grammar() -> str:
    """llama.cpp's JSON grammar (grammars/json.gbnf): any JSON object."""
    return _port().JSON_GBNF


def schema_grammar(schema_text: str, what: str = "--json-schema") -> str:
    """GBNF for a JSON schema given as text; UsageError (naming `what`) for text that is not a
    JSON object, or a schema with a keyword the converter would not enforce."""
    _check_size(schema_text, what)
    try:
        schema = json.loads(schema_text)
    except ValueError as e:
        raise UsageError(f"{what}: not valid JSON ({e})") from None
    return schema_dict_grammar(schema, what)


def schema_dict_grammar(schema: Any, what: str = "--json-schema") -> str:
    """GBNF for an already parsed JSON schema (see schema_grammar)."""
    if not isinstance(schema, dict):
        raise UsageError(f"{what}: a JSON schema must be a JSON object (got {_kind(schema)})")
    try:
        _check_schema(schema, what)
    except (TypeError, AttributeError) as e:  # a keyword's value of a kind no check expected
        raise UsageError(f"{what}: unsupported schema ({type(e).__name__}: {e})") from None
    port = _port()
    converter = port.SchemaConverter(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        copy = json.loads(json.dumps(schema))
        _resolve_refs(copy, converter._refs, what)
        resolved = converter.resolve_refs(copy, "input")
        converter.visit(resolved, "")
    # The port assumes well-formed schemas: what _check_schema lets through malformed (fuzzing
    # found {"prefixItems": null}: an AttributeError) is refused here, never a 500.
    except (
        AssertionError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        RecursionError,
    ) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{what}: unsupported schema ({reason[:200]})") from None
    return _json_correct(converter.format_grammar())


def _resolve_refs(root: dict[str, Any], refs: dict[str, Any], what: str) -> None:
    """Every local $ref resolved into the converter's table (its own pass misses refs inside
    the definitions when the root itself is a $ref)."""

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise UsageError(f"{what}: $ref {ref!r} points to nothing")
                target = target[part]
            node["$ref"] = "input" + ref
            refs["input" + ref] = target
        for value in node.values():
            visit(value)

    visit(root)


def check_grammar(text: str, what: str = "--grammar") -> str:
    """`text` if llama.cpp parses it as a grammar with a `root` rule, else a UsageError with
    llama.cpp's reason. Runs before any model loads (no vocabulary: token references such as
    `<[42]>` are refused)."""
    _check_size(text, what)
    _check_rules(text, what)
    if not text.strip():
        raise UsageError(f"{what}: the grammar is empty")
    if "\x00" in text:
        raise UsageError(f"{what}: the grammar contains a NUL character")
    # Remembered for small texts only (a server sees the same schemas again; 10 MB ones would
    # pile up in the cache).
    error = _parse_error_cached(text) if len(text) <= 1 << 16 else _parse_error(text)
    if error is not None:
        raise UsageError(f"{what}: llama.cpp cannot use this grammar: {error}")
    return text


def _check_size(text: str, what: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_GRAMMAR_BYTES:
        raise UsageError(f"{what}: larger than {MAX_GRAMMAR_BYTES // (1024 * 1024)} MB")


def _check_rules(text: str, what: str) -> None:
    """A UsageError when `text` makes more rules than llama.cpp's recursion can safely go
    through (MAX_GRAMMAR_RULES): its rules, groups and repetitions, counted as it makes them."""
    bare = _NOT_STRUCTURE.sub("", text)
    rules = bare.count("::=") + sum(bare.count(c) for c in "(*+?{")
    if rules > MAX_GRAMMAR_RULES:
        raise UsageError(
            f"{what}: the grammar makes {rules} rules (with its groups and repetitions); "
            f"llama.cpp takes at most {MAX_GRAMMAR_RULES} here"
        )


_lock = threading.Lock()


@lru_cache(maxsize=64)
def _parse_error_cached(text: str) -> str | None:
    return _parse_error(text)


def _parse_error(text: str) -> str | None:
    """None if llama.cpp accepts `text`, else its reason. llama.cpp prints parse errors on fd 2
    itself (fprintf, not its log callback): captured here and turned into one line."""
    from .bindings import bindings

    ll = bindings()
    with _lock, tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            sampler = ll.llama_sampler_init_grammar(None, text.encode("utf-8"), b"root")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        log = captured.read(64 * 1024).decode("utf-8", "replace")
    if sampler:
        ll.llama_sampler_free(sampler)
        return None
    return _reason(log, text)


def _reason(log: str, text: str) -> str:
    for line in log.splitlines():
        if "error parsing grammar:" in line:
            return line.split("error parsing grammar:", 1)[1].strip()[:200]
    # Parsed, then refused: llama.cpp says why through its log callback (silenced once a model
    # is loaded), and only these two reasons remain after a successful parse.
    if not re.search(r"^\s*root\s*::=", text, re.MULTILINE):
        return "no 'root' rule"
    return "left recursion (a rule that can start with itself)"


def _json_correct(grammar: str) -> str:
    """The converter's grammar with its string character rules made JSON-correct."""
    out = []
    for line in grammar.splitlines():
        name, sep, _ = line.partition(" ::= ")
        if sep and name == "char":
            line = f"char ::= {_JSON_CHAR}"
        elif sep and name == "dot":
            line = f"dot ::= {_JSON_DOT}"
        out.append(line)
    return "\n".join(out) + "\n"


@lru_cache(maxsize=1)
def _port() -> Any:
    """llama_cpp/llama_grammar.py loaded on its own: `import llama_cpp.llama_grammar` would run
    the package's `__init__` (numpy and the high-level API); the module needs only the stdlib."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - no llama_cpp
        raise UsageError("llama-cpp-python is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "llama_grammar.py")
    module_spec = importlib.util.spec_from_file_location("_infer_llama_grammar", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


# -- which schemas the converter enforces ----------------------------------------------------


def _check_schema(schema: dict[str, Any], what: str) -> None:
    def refuse(path: str, reason: str) -> None:
        raise UsageError(f"{what}: at {path or '/'}: {reason}")

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            if node is True and path.endswith("/additionalProperties"):
                return
            refuse(path, f"a subschema must be an object, not {_kind(node)}")
        _check_node(node, path, refuse)
        for key in ("$defs", "definitions", "properties"):
            children = node.get(key, {})
            if not isinstance(children, dict):
                refuse(f"{path}/{key}", f"'{key}' must be an object")
            for name, child in children.items():
                walk(child, f"{path}/{key}/{name}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}/additionalProperties")
        items = node.get("items")
        if items is not None and not isinstance(items, list):
            walk(items, f"{path}/items")
        # a list of schemas in 'items' is the tuple form before draft 2020-12's 'prefixItems'
        for key in ("items", "prefixItems", "anyOf"):
            members = node.get(key)
            if members is None or (key == "items" and not isinstance(members, list)):
                continue
            if not isinstance(members, list) or not members:
                refuse(f"{path}/{key}", f"'{key}' must be a non-empty array")
            for i, child in enumerate(members):
                walk(child, f"{path}/{key}/{i}")

    walk(schema, "")


def _check_node(node: dict[str, Any], path: str, refuse: Any) -> None:
    for key in node:
        if key not in SUPPORTED and key not in ANNOTATIONS:
            hint = " (use anyOf)" if key == "oneOf" else ""
            refuse(path, f"keyword '{key}' is not supported{hint}")
    constraints = {k for k in node if k in SUPPORTED and k not in ("$defs", "definitions")}
    kind = node.get("type")
    ref = node.get("$ref")
    if ref is not None:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            refuse(path, f"only local $ref ('#/...') is supported (got {ref!r})")
        _alone(constraints, "$ref", path, refuse)
        return
    if "anyOf" in node:
        _alone(constraints, "anyOf", path, refuse)
        return
    if isinstance(kind, list):
        # isinstance first: a dict or list in 'type' is unhashable (a TypeError, found by fuzzing)
        if (
            not kind
            or any(not isinstance(k, str) or k not in TYPES for k in kind)
            or len(set(kind)) != len(kind)
        ):
            refuse(path, f"'type' must list distinct JSON types (got {kind!r})")
        _alone(constraints, "type", path, refuse)
        return
    if kind is not None and (not isinstance(kind, str) or kind not in TYPES):
        refuse(path, f"unknown type {kind!r}")
    for key in ("const", "enum"):
        if key in node:
            if key == "enum" and (not isinstance(node["enum"], list) or not node["enum"]):
                refuse(path, "'enum' must be a non-empty array")
            _alone(constraints - {"type"}, key, path, refuse)
            return
    _check_typed(node, kind, constraints, path, refuse)


def _check_typed(
    node: dict[str, Any], kind: Any, constraints: set[str], path: str, refuse: Any
) -> None:
    objects = {"properties", "required", "additionalProperties"}
    arrays = {"items", "prefixItems", "minItems", "maxItems"}
    strings = {"pattern", "format", "minLength", "maxLength"}
    for group, name in ((objects, "object"), (arrays, "array"), (strings, "string")):
        used = constraints & group
        if used and kind not in (None, name):
            refuse(path, f"'{sorted(used)[0]}' applies to type {name}, not {kind}")
    families = [g for g in (objects, arrays, strings) if constraints & g]
    if len(families) > 1:
        refuse(path, "keywords of several types in one schema (use anyOf)")
    if constraints & objects:
        props = node.get("properties", {})
        required = node.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            refuse(f"{path}/required", "'required' must be an array of names")
        missing = [r for r in required if r not in props]
        if missing:
            refuse(path, f"required property '{missing[0]}' is not in 'properties'")
        if "properties" not in node and node.get("additionalProperties") is True:
            return
    if constraints & arrays:
        # A tuple ('prefixItems', or 'items' as a list: llama.cpp's converter reads both as
        # exactly those items, in order) ignores the counts, so they are refused beside one.
        tuple_form = "prefixItems" in node or isinstance(node.get("items"), list)
        if "prefixItems" in node and constraints & {"items", "minItems", "maxItems"}:
            refuse(path, "'prefixItems' with 'items', 'minItems' or 'maxItems'")
        if tuple_form and constraints & {"minItems", "maxItems"}:
            refuse(path, "'minItems'/'maxItems' with a tuple's 'items' (an array of schemas)")
        if "items" in node and not isinstance(node["items"], (dict, list)):
            refuse(f"{path}/items", "'items' must be a schema object or an array of schemas")
        if constraints & {"minItems", "maxItems"} and "items" not in node:
            refuse(path, "'minItems'/'maxItems' need 'items'")
        _counts(node, ("minItems", "maxItems"), path, refuse)
    if constraints & strings:
        if "pattern" in node:
            _alone(constraints - {"type"}, "pattern", path, refuse)
            pattern = node["pattern"]
            if not isinstance(pattern, str) or not (
                pattern.startswith("^") and pattern.endswith("$")
            ):
                refuse(path, "'pattern' must be anchored: start with ^ and end with $")
        elif "format" in node:
            _alone(constraints - {"type"}, "format", path, refuse)
            if not isinstance(node["format"], str) or node["format"] not in FORMATS:
                refuse(
                    path,
                    f"format {node['format']!r} is not supported (supported: {_FORMATS_SHOWN})",
                )
        else:
            if kind != "string":
                refuse(path, "'minLength'/'maxLength' need \"type\": \"string\"")
            _counts(node, ("minLength", "maxLength"), path, refuse)


def _counts(node: dict[str, Any], keys: tuple[str, str], path: str, refuse: Any) -> None:
    low, high = (node.get(k) for k in keys)
    for key, value in zip(keys, (low, high), strict=True):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            refuse(path, f"'{key}' must be a non-negative integer")
    if low is not None and high is not None and low > high:
        refuse(path, f"'{keys[0]}' is larger than '{keys[1]}'")
    if max(low or 0, high or 0) > 1000:
        refuse(path, f"'{keys[0]}'/'{keys[1]}' above 1000")


def _alone(constraints: set[str], keyword: str, path: str, refuse: Any) -> None:
    others = sorted(constraints - {keyword})
    if others:
        refuse(path, f"'{others[0]}' next to '{keyword}' would be ignored")
