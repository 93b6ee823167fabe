"""Short property-based runs of tests/fuzz_targets.py (bounded max_examples, derandomized so a
run is repeatable); benchmarks/fuzz.py runs the same targets with a longer budget. Each
finding fixed became a seed (fuzz_targets.CVE_SEEDS) or a regression test here."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import fuzz_targets as ft

SHORT = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


@pytest.mark.parametrize("seed", sorted(ft.CVE_SEEDS))
def test_gguf_cve_shapes_are_refused_or_read_safely(seed: str) -> None:
    ft.check_gguf(ft.CVE_SEEDS[seed])


@SHORT
@given(ft.gguf_bytes())
def test_gguf_reader(raw: bytes) -> None:
    ft.check_gguf(raw)


@settings(SHORT, max_examples=60)
@given(ft.templates, ft.contents)
def test_template_sandbox(template: str, content: str) -> None:
    ft.check_template(template, content)


@SHORT
@given(ft.schemas)
def test_schema_to_grammar(schema: Any) -> None:
    ft.check_schema(schema)


@SHORT
@given(ft.call_texts, st.sampled_from(["hermes", "llama3", "mistral", "generic"]))
def test_tool_call_parsers(text: str, kind: str) -> None:
    ft.check_tool_calls(text, kind)


@SHORT
@given(ft.sse_texts, st.booleans())
def test_remote_sse_reader(text: str, chat: bool) -> None:
    ft.check_sse(text, chat)


# -- findings, kept as regression tests ------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": {"a": 1}},
        {"type": [{"a": 1}]},
        {"type": [["string"]]},
        {"prefixItems": None},
        {"type": "array", "prefixItems": [None]},
        {"format": []},
        {"type": "string", "format": {"a": 1}},
    ],
)
def test_found_malformed_schemas_are_a_usage_error(schema: Any) -> None:
    """Fuzzing found {"type": {...}} and {"format": []} raising TypeError (unhashable) and
    {"prefixItems": null} an AttributeError in the converter, where a 400 belongs."""
    from infer.runtime.errors import UsageError
    from infer.runtime.llama.grammar import schema_dict_grammar

    with pytest.raises(UsageError, match="response_format"):
        schema_dict_grammar(schema, "response_format")


@pytest.mark.parametrize(
    ("seed", "reason"),
    [
        ("overlapping_tensors", "overlaps the data of another tensor"),
        ("duplicate_tensor_names", "tensor 'a' appears twice"),
        ("duplicate_keys", "'general.architecture' appears twice"),
    ],
)
def test_found_gguf_shapes_are_refused_naming_the_problem(
    seed: str, reason: str, tmp_path: Any
) -> None:
    """The reader accepted tensors sharing names or bytes, and repeated keys (llama.cpp refuses
    them; Ollama's CVE list has the overlapping shape)."""
    from infer.runtime.errors import ModelFileError
    from infer.runtime.models.gguf import read_header

    path = tmp_path / "crafted.gguf"
    path.write_bytes(ft.CVE_SEEDS[seed])
    with pytest.raises(ModelFileError, match=reason):
        read_header(path)


@SHORT
@given(ft.bodies)
def test_door_parsers(body: Any) -> None:
    ft.check_parsers(body)
