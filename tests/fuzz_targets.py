"""Property-based fuzz targets (hypothesis) over the parsers that read untrusted input: the GGUF
header reader, the chat-template sandbox, the JSON-schema → grammar converter, the tool-call
parsers and the remote client's SSE reader. Each target's property: the input is accepted or
refused with the module's own typed error — never another exception, a hang or a crash.

tests/test_fuzz.py runs each briefly (bounded max_examples); benchmarks/fuzz.py runs them with
a fixed budget and writes what it found as JSON. Seeds are Ollama's GGUF CVE shapes: huge
counts, offsets past the end, overlapping tensor data, traversal in names, a 4-byte file.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import httpx
from hypothesis import strategies as st

from infer.runtime.errors import ModelFileError, RemoteError, TemplateError, UsageError

# -- GGUF --------------------------------------------------------------------------------------


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", vtype) + payload


def _tensor(name: bytes, shape: list[int], ttype: int, offset: int) -> bytes:
    dims = b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in shape)
    return _string(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", ttype, offset)


def gguf_file(
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    alignment: int = 32,
) -> bytes:
    """A GGUF file's bytes, whose counts may lie about what follows."""
    kvs = kvs if kvs is not None else [_kv(b"general.architecture", 8, _string(b"llama"))]
    tensors = tensors if tensors is not None else []
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        n_tensors if n_tensors is not None else len(tensors),
        n_kv if n_kv is not None else len(kvs),
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % alignment
    return body + b"\0" * pad + data


F32 = 0
CVE_SEEDS: dict[str, bytes] = {
    "four_bytes": b"GGUF",
    "huge_tensor_count": gguf_file(n_tensors=2**63),
    "huge_kv_count": gguf_file(n_kv=2**64 - 1),
    "huge_string": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"k",
    "huge_array": gguf_file(kvs=[_kv(b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**60))]),
    "nested_arrays": gguf_file(
        kvs=[_kv(b"a", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) * 200)]
    ),
    "offset_past_end": gguf_file(tensors=[_tensor(b"w", [8], F32, 1 << 40)], data=b"\0" * 32),
    "offset_wraps": gguf_file(tensors=[_tensor(b"w", [8], F32, 2**64 - 32)], data=b"\0" * 32),
    "overlapping_tensors": gguf_file(
        tensors=[_tensor(b"a", [8], F32, 0), _tensor(b"b", [8], F32, 0)], data=b"\0" * 32
    ),
    "duplicate_tensor_names": gguf_file(
        tensors=[_tensor(b"a", [8], F32, 0), _tensor(b"a", [8], F32, 32)], data=b"\0" * 64
    ),
    "duplicate_keys": gguf_file(kvs=[_kv(b"general.architecture", 8, _string(b"llama"))] * 2),
    "traversal_in_names": gguf_file(
        kvs=[_kv(b"split.path", 8, _string(b"../../../../etc/passwd"))],
        tensors=[_tensor(b"../../etc/passwd", [8], F32, 0)],
        data=b"\0" * 32,
    ),
    "zero_dimension": gguf_file(tensors=[_tensor(b"w", [0], F32, 0)]),
    "huge_dimensions": gguf_file(tensors=[_tensor(b"w", [2**40, 2**40, 2**40, 2**40], F32, 0)]),
    "too_many_dims": gguf_file(tensors=[_tensor(b"w", [1] * 9, F32, 0)]),
    "bad_alignment": gguf_file(kvs=[_kv(b"general.alignment", 4, struct.pack("<I", 3))]),
    "zero_alignment": gguf_file(kvs=[_kv(b"general.alignment", 4, struct.pack("<I", 0))]),
    "bad_utf8_key": gguf_file(kvs=[_kv(b"\xff\xfe", 4, struct.pack("<I", 1))]),
    "unknown_value_type": gguf_file(kvs=[_kv(b"k", 99, b"")]),
    "unknown_tensor_type": gguf_file(tensors=[_tensor(b"w", [8], 99, 0)], data=b"\0" * 64),
}


@st.composite
def gguf_bytes(draw: Any) -> bytes:
    """A structured GGUF with lying counts and extents, or a seed with bytes flipped/cut."""
    if draw(st.booleans()):
        seed = draw(st.sampled_from(sorted(CVE_SEEDS)))
        raw = bytearray(CVE_SEEDS[seed])
        for _ in range(draw(st.integers(0, 8))):
            if not raw:
                break
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(raw)))
        return bytes(raw[: max(cut, 4)]) if draw(st.booleans()) else bytes(raw)
    big = st.one_of(st.integers(0, 64), st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 - 1]))
    names = st.one_of(
        st.binary(max_size=24), st.sampled_from([b"../x", b"/etc/passwd", b"a\0b", b""])
    )
    kvs = draw(
        st.lists(
            st.builds(
                _kv,
                names,
                st.integers(0, 13),
                st.one_of(st.binary(max_size=24), big.map(lambda n: struct.pack("<Q", n))),
            ),
            max_size=4,
        )
    )
    shape = st.lists(big, min_size=0, max_size=5)
    tensors = draw(
        st.lists(
            st.builds(_tensor, names, shape, st.sampled_from([0, 1, 2, 8, 12, 99]), big),
            max_size=4,
        )
    )
    return gguf_file(
        version=draw(st.sampled_from([1, 2, 3, 4])),
        n_tensors=draw(st.one_of(st.none(), big)),
        n_kv=draw(st.one_of(st.none(), big)),
        kvs=kvs,
        tensors=tensors,
        data=b"\0" * draw(st.integers(0, 256)),
    )


def check_gguf(raw: bytes) -> None:
    """read_header accepts the bytes (and then every tensor lies inside the file, apart from
    the others) or raises ModelFileError; nothing else."""
    from infer.runtime.models.gguf import read_header

    fd, name = tempfile.mkstemp(suffix=".gguf")
    try:
        os.write(fd, raw)
        os.close(fd)
        try:
            header = read_header(name)
        except ModelFileError:
            return
        end = header.data_offset
        for t in sorted(header.tensors, key=lambda t: t.offset):
            assert header.data_offset + t.offset >= end, f"tensor {t.name!r} overlaps another"
            end = header.data_offset + t.offset + t.nbytes
            assert end <= header.file_size
        assert len({t.name for t in header.tensors}) == len(header.tensors)
    finally:
        Path(name).unlink(missing_ok=True)


# -- chat templates ----------------------------------------------------------------------------

_JINJA = [
    "{{ ", " }}", "{% ", " %}", "for m in messages", "endfor", "if ", "endif", "m.content",
    "m['role']", "messages", "range(", "99999999", ")", " * ", " ~ ", "'ab'", "loop.index",
    "set x = ", "x", "namespace(", "raise_exception('no')", "|join", "|tojson", "|length",
    "__class__", "__subclasses__()", ".mro()", "cycler", "joiner", "lipsum", "{{ x }}",
    "[0]", "bos_token", "add_generation_prompt", "macro f() ", "endmacro", "f()", "\n", "%",
]  # fmt: skip
templates = st.lists(st.sampled_from(_JINJA), max_size=24).map("".join)
contents = st.text(max_size=64)


def check_template(template: str, content: str) -> None:
    from infer.runtime.generation.templates import Message, render

    messages = [Message("system", "be brief"), Message("user", content)]
    try:
        out = render(template, messages, bos_token="<s>", eos_token="</s>", timeout=2)
    except TemplateError:
        return
    assert isinstance(out, str)


# -- JSON schema → grammar -------------------------------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
)
_KEYWORDS = [
    "type", "properties", "items", "required", "enum", "const", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "pattern", "format", "anyOf", "oneOf",
    "allOf", "$ref", "$defs", "additionalProperties", "prefixItems", "not", "if", "then",
]  # fmt: skip
_TYPES = ["object", "array", "string", "integer", "number", "boolean", "null", "bogus"]
schemas = st.recursive(
    st.one_of(_leaf, st.sampled_from(_TYPES), st.just({"$ref": "#/$defs/a"})),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(_KEYWORDS), inner, max_size=5),
        st.fixed_dictionaries(
            {"type": st.sampled_from(_TYPES)},
            optional={
                "properties": st.dictionaries(st.text(max_size=6), inner, max_size=3),
                "items": inner,
                "pattern": st.text(max_size=12),
                "minItems": _leaf,
                "maxItems": _leaf,
            },
        ),
    ),
    max_leaves=24,
)


def check_schema(schema: Any) -> None:
    from infer.runtime.llama.grammar import schema_dict_grammar

    try:
        grammar = schema_dict_grammar(schema, "response_format")
    except UsageError:
        return
    assert isinstance(grammar, str) and grammar


# -- tool calls -----------------------------------------------------------------------------

_CALL_BITS = [
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]",
    '"name"', ":", ",", '"arguments"', '"parameters"', '"f"', "{}", "null", "1e999", '"\\ud800"',
    " ", "\n", "text", '"', "\\",
]  # fmt: skip
call_texts = st.lists(st.one_of(st.sampled_from(_CALL_BITS), st.text(max_size=4)), max_size=30).map(
    "".join
)


def check_tool_calls(text: str, kind: str) -> None:
    from infer.runtime.generation.tool_calls import parse

    parsed = parse(text, kind, None)
    for call in parsed.calls:
        assert isinstance(call.name, str)
        assert isinstance(json.loads(call.arguments), dict)


# -- the remote client's SSE reader ------------------------------------------------------------

_SSE_BITS = [
    "data: ", "data:", "[DONE]", "\n", "\r\n", "\n\n", ": comment", "event: x",
    '{"choices":[]}', '{"error":{"message":"x"}}', '{"error":null}', "[1]", '"s"', "{", "null",
    '{"choices":[{"delta":null}]}',
]  # fmt: skip
sse_texts = st.lists(st.one_of(st.sampled_from(_SSE_BITS), st.text(max_size=6)), max_size=30).map(
    "".join
)


def check_sse(text: str, chat: bool) -> None:
    from infer.runtime import remote

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(200, content=text.encode("utf-8", "surrogatepass"), request=request)
    try:
        for event in remote._events(response):
            if event is not None:
                assert isinstance(remote._piece(event, chat), str)
    except RemoteError:
        return


# -- the HTTP doors' request parsers -------------------------------------------------------------

_FIELDS = [
    "model", "messages", "prompt", "input", "role", "content", "type", "text", "stream",
    "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "stop", "stop_sequences",
    "temperature", "top_p", "top_k", "seed", "tools", "tool_choice", "function", "name",
    "parameters", "arguments", "tool_calls", "tool_call_id", "response_format", "json_schema",
    "schema", "format", "options", "num_predict", "num_ctx", "keep_alive", "system",
    "instructions", "images", "image_url", "url", "source", "data", "encoding_format",
    "dimensions", "stream_options", "include_usage", "logprobs", "ignore_eos", "suffix",
    "previous_response_id", "store", "tool_use_id", "id", "think", "raw", "truncate", "metadata",
]  # fmt: skip
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=8),
    st.sampled_from(["user", "assistant", "system", "tool", "function", "text", "json_object",
                     "json_schema", "auto", "none", "required", "smollm2", "5m", "-1"]),
)  # fmt: skip
bodies = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=6)
    ),
    max_leaves=30,
).map(lambda b: {"model": "smollm2", **b} if isinstance(b, dict) else b)


def check_parsers(body: Any) -> None:
    """Every door's body parser accepts `body` or refuses it with the door's error (a 4xx)."""
    from infer.runtime.server import (
        anthropic_protocol,
        embeddings,
        ollama_protocol,
        openai_requests,
        responses_protocol,
    )
    from infer.runtime.server.ollama_protocol import OllamaError
    from infer.runtime.server.request_fields import ApiError

    parsers = [
        openai_requests.parse_chat, openai_requests.parse_completion, embeddings.parse,
        anthropic_protocol.parse_messages, anthropic_protocol.parse_count,
        ollama_protocol.parse_chat, ollama_protocol.parse_generate,
        lambda b: ollama_protocol.parse_embed(b, False), responses_protocol.parse,
    ]  # fmt: skip
    for parse in parsers:
        try:
            parse(body)
        except ApiError as e:
            assert 400 <= e.status < 500, (parse, e.status, e)
        except OllamaError as e:
            assert 400 <= getattr(e, "status", 400) < 500, (parse, e)
