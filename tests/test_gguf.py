"""The bounded GGUF header reader: real files parse; anything truncated or corrupt is a
ModelFileError (never another exception, never a hang) before llama.cpp's loader sees it."""

from __future__ import annotations

import os
import random
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from infer.runtime.errors import ModelFileError
from infer.runtime.models.gguf import ArraySummary, GGUFHeader, read_header

from .tiny_gguf import CONTROL, N_CTX, N_EMBD, N_FF, N_LAYER, TEMPLATE

# --- a GGUF encoder written with struct, so that files the gguf writer refuses can be made ---

T_U32, T_STRING, T_ARRAY = 4, 8, 9
F32, F16, Q4_0 = 0, 1, 2


def s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv_str(key: bytes, value: bytes) -> bytes:
    return s(key) + struct.pack("<I", T_STRING) + s(value)


def kv_u32(key: bytes, value: int) -> bytes:
    return s(key) + struct.pack("<I", T_U32) + struct.pack("<I", value)


def tensor_info(name: bytes, shape: tuple[int, ...], ttype: int, offset: int) -> bytes:
    dims = struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
    return s(name) + dims + struct.pack("<IQ", ttype, offset)


def gguf_bytes(
    kvs: list[bytes],
    tensors: list[bytes],
    data: bytes,
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    n_kv = len(kvs) if n_kv is None else n_kv
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % alignment) + data


# A valid crafted file: two F32 tensors, [8] at offset 0 and [4, 8] at offset 32 (aligned).
BASE_KVS = [kv_str(b"general.architecture", b"llama"), kv_u32(b"llama.context_length", 64)]
BASE_TENSORS = [tensor_info(b"a", (8,), F32, 0), tensor_info(b"b", (8, 4), F32, 32)]
BASE_DATA = b"\0" * (32 + 8 * 4 * 4)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_bad(path: Path, *words: str) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        read_header(path)
    message = str(info.value)
    assert info.value.path == path
    assert any(w in message for w in words), message
    return info.value


def test_crafted_encoder_makes_a_valid_file(tmp_path: Path) -> None:
    """The baseline every corruption below differs from by one field: it must parse, and the
    reference reader from the gguf package must agree with it."""
    import gguf

    path = write(tmp_path / "ok.gguf", gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA))
    header = read_header(path)
    assert header.architecture == "llama"
    assert header.context_length == 64
    assert [(t.name, t.shape, t.nbytes) for t in header.tensors] == [
        ("a", (8,), 32),
        ("b", (8, 4), 128),
    ]
    reference = gguf.GGUFReader(path)
    assert [t.name for t in reference.tensors] == ["a", "b"]
    assert reference.data_offset == header.data_offset


# --- a real generated file ---


def test_tiny_model_header(tiny_model: Path) -> None:
    header = read_header(tiny_model)
    assert isinstance(header, GGUFHeader)
    assert header.version == 3
    assert header.architecture == "llama"
    assert header.context_length == N_CTX
    assert header.chat_template == TEMPLATE
    assert header.quantization == "F32"  # general.file_type 0
    n_vocab = len(CONTROL) + 256
    per_layer = 2 * N_EMBD + 4 * N_EMBD * N_EMBD + 3 * N_FF * N_EMBD
    assert header.parameter_count == 2 * n_vocab * N_EMBD + N_EMBD + N_LAYER * per_layer
    assert len(header.tensors) == 3 + 9 * N_LAYER
    assert all(t.nbytes == 4 * int(np.prod(t.shape)) for t in header.tensors)
    assert header.data_offset % 32 == 0
    assert header.file_size == tiny_model.stat().st_size
    last = max(header.tensors, key=lambda t: t.offset)
    assert header.data_offset + last.offset + last.nbytes == header.file_size
    # The 260-token vocabulary is summarised, not kept.
    assert header.metadata["tokenizer.ggml.tokens"] == ArraySummary(T_STRING, n_vocab)
    assert header.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert header.split_count == 1


def test_header_without_template(tiny_model_no_template: Path) -> None:
    assert read_header(tiny_model_no_template).chat_template is None


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "mixed.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("general.tags", ["a", "b"])
    w.add_tensor("small", np.zeros(32, dtype=np.float32))  # 128 bytes of F32
    w.add_tensor("big", np.zeros((4, 64), dtype=np.float16))  # 512 bytes of F16
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    header = read_header(path)
    assert "general.file_type" not in header.metadata
    assert header.quantization == "F16"
    assert header.metadata["general.tags"] == ["a", "b"]  # short arrays are kept
    assert header.context_length is None
    assert header.parameter_count == 32 + 256


# --- not a GGUF file at all ---


def test_bad_magic(tmp_path: Path) -> None:
    data = gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA)
    path = write(tmp_path / "x.gguf", b"GGML" + data[4:])
    assert_bad(path, "not a GGUF file (bad magic")


def test_text_file(tmp_path: Path) -> None:
    assert_bad(write(tmp_path / "x.gguf", b"<html>404 Not Found</html>\n"), "bad magic")


def test_just_the_magic(tmp_path: Path) -> None:
    """Ollama CVE-2024-39720: a 4-byte "GGUF" file crashed the server."""
    assert_bad(write(tmp_path / "x.gguf", b"GGUF"), "truncated")


@pytest.mark.parametrize("data", [b"", b"G", b"GGU"], ids=["empty", "1-byte", "3-bytes"])
def test_too_small(tmp_path: Path, data: bytes) -> None:
    assert_bad(write(tmp_path / "x.gguf", data), "too small")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.gguf").mkdir()
    assert_bad(tmp_path / "d.gguf", "is a directory")


def test_missing_file(tmp_path: Path) -> None:
    assert_bad(tmp_path / "nope.gguf", "no such file")


def test_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    assert_bad(loop, "cannot read")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    outcome: list[BaseException | GGUFHeader] = []

    def attempt() -> None:
        try:
            outcome.append(read_header(fifo))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_header blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], ModelFileError)
    assert "not a regular file" in str(outcome[0])


# --- truncation anywhere in a real file ---


def _regions(raw: bytes, header: GGUFHeader) -> dict[str, tuple[int, int]]:
    first_tensor = s(header.tensors[0].name.encode())
    tensors_start = raw.index(first_tensor, 24)
    return {
        "header": (4, 24),
        "metadata": (24, tensors_start),
        "tensor-infos": (tensors_start, header.data_offset),
        "data": (header.data_offset, header.file_size),
    }


CUTS = [
    ("header", 0.0),
    ("header", 0.1),
    ("header", 0.3),
    ("header", 0.6),
    ("header", 0.95),
    ("metadata", 0.0),
    ("metadata", 0.01),
    ("metadata", 0.1),
    ("metadata", 0.3),
    ("metadata", 0.5),
    ("metadata", 0.8),
    ("metadata", 0.999),
    ("tensor-infos", 0.0),
    ("tensor-infos", 0.2),
    ("tensor-infos", 0.5),
    ("tensor-infos", 0.99),
    ("data", 0.0),
    ("data", 0.3),
    ("data", 0.9),
    ("data", 0.9999),
]


@pytest.fixture(scope="module")
def tiny_bytes(tiny_model: Path) -> tuple[bytes, dict[str, tuple[int, int]]]:
    raw = tiny_model.read_bytes()
    return raw, _regions(raw, read_header(tiny_model))


@pytest.mark.parametrize(("region", "fraction"), CUTS, ids=[f"{r}-{f}" for r, f in CUTS])
def test_truncated_anywhere(
    tmp_path: Path,
    tiny_bytes: tuple[bytes, dict[str, tuple[int, int]]],
    region: str,
    fraction: float,
) -> None:
    raw, regions = tiny_bytes
    start, end = regions[region]
    cut = start + int((end - start) * fraction)
    assert start <= cut < end
    path = write(tmp_path / "cut.gguf", raw[:cut])
    assert_bad(path, "truncated")


def test_truncated_at_every_byte_of_the_header_and_tables(
    tmp_path: Path, tiny_bytes: tuple[bytes, dict[str, tuple[int, int]]]
) -> None:
    raw, regions = tiny_bytes
    path = tmp_path / "cut.gguf"
    for cut in range(4, regions["tensor-infos"][1], 3):
        path.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            read_header(path)


# --- crafted corruption: each differs from the valid baseline in one field ---


def test_absurd_metadata_count(tmp_path: Path) -> None:
    data = gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA, n_kv=2**60)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF: implausible counts")


def test_absurd_tensor_count(tmp_path: Path) -> None:
    data = gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA, n_tensors=2**63)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF: implausible counts")


def test_more_entries_than_present_is_truncation(tmp_path: Path) -> None:
    data = gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA, n_tensors=3)
    assert_bad(write(tmp_path / "x.gguf", data), "truncated", "corrupt")


def test_huge_string_length(tmp_path: Path) -> None:
    bad_key = struct.pack("<Q", 2**62) + b"general.architecture"
    kvs = [bad_key + struct.pack("<I", T_STRING) + s(b"llama")]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF")


def test_string_length_past_end_of_file(tmp_path: Path) -> None:
    value = struct.pack("<Q", 10_000) + b"llama"  # under the string cap, beyond the file
    kvs = [s(b"general.architecture") + struct.pack("<I", T_STRING) + value]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "truncated")


def test_tensor_extends_past_the_file(tmp_path: Path) -> None:
    tensors = [BASE_TENSORS[0], tensor_info(b"b", (8, 4), F32, 64)]  # 64 + 128 > 160 bytes
    data = gguf_bytes(BASE_KVS, tensors, BASE_DATA)
    err = assert_bad(write(tmp_path / "x.gguf", data), "truncated")
    assert "tensor 'b' extends past the end of the file" in str(err)


def test_tensor_with_a_huge_offset(tmp_path: Path) -> None:
    tensors = [BASE_TENSORS[0], tensor_info(b"b", (8, 4), F32, 2**63)]
    data = gguf_bytes(BASE_KVS, tensors, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "truncated")


@pytest.mark.parametrize("ttype", [4, 5, 31, 99, 2**32 - 1])
def test_unknown_tensor_type(tmp_path: Path, ttype: int) -> None:
    tensors = [BASE_TENSORS[0], tensor_info(b"b", (8, 4), ttype, 32)]
    data = gguf_bytes(BASE_KVS, tensors, BASE_DATA)
    err = assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF")
    assert f"unknown type {ttype}" in str(err)


def test_unaligned_tensor_offset(tmp_path: Path) -> None:
    tensors = [BASE_TENSORS[0], tensor_info(b"b", (8, 4), F32, 33)]
    data = gguf_bytes(BASE_KVS, tensors, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF: tensor 'b' is not aligned")


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    kvs = [*BASE_KVS, kv_u32(b"general.alignment", 64)]
    ok = gguf_bytes(kvs, [tensor_info(b"a", (8,), F32, 64)], b"\0" * 96, alignment=64)
    assert read_header(write(tmp_path / "ok.gguf", ok)).data_offset % 64 == 0
    # Offset 32 is aligned for the default of 32 but not for the file's own 64.
    bad = gguf_bytes(kvs, [tensor_info(b"a", (8,), F32, 32)], b"\0" * 96, alignment=64)
    assert_bad(write(tmp_path / "bad.gguf", bad), "not aligned")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_invalid_alignment(tmp_path: Path, alignment: int) -> None:
    kvs = [*BASE_KVS, kv_u32(b"general.alignment", alignment)]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF: invalid alignment")


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    data = gguf_bytes(BASE_KVS, BASE_TENSORS, BASE_DATA, version=version)
    assert_bad(write(tmp_path / "x.gguf", data), f"unsupported GGUF version {version}")


@pytest.mark.parametrize(
    ("shape", "ttype", "reason"),
    [
        ((), F32, "0 dimensions"),
        ((1, 1, 1, 1, 1), F32, "5 dimensions"),
        ((8, 0), F32, "dimension 0"),
        ((2**41,), F32, "dimension"),
        ((2**40, 2**40), F32, "implausibly large"),
        ((31,), Q4_0, "whole number of 32-element blocks"),
    ],
)
def test_bad_tensor_shape(tmp_path: Path, shape: tuple[int, ...], ttype: int, reason: str) -> None:
    tensors = [BASE_TENSORS[0], tensor_info(b"b", shape, ttype, 32)]
    data = gguf_bytes(BASE_KVS, tensors, BASE_DATA)
    err = assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF")
    assert reason in str(err)


def test_unknown_value_type(tmp_path: Path) -> None:
    kvs = [BASE_KVS[0], s(b"x") + struct.pack("<I", 13) + b"\0" * 8]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "unknown value type 13")


def test_array_of_strings_with_an_absurd_count(tmp_path: Path) -> None:
    array = struct.pack("<IQ", T_STRING, 2**61) + s(b"a")
    kvs = [BASE_KVS[0], s(b"tokenizer.ggml.tokens") + struct.pack("<I", T_ARRAY) + array]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "truncated")


def test_array_of_scalars_with_an_absurd_count(tmp_path: Path) -> None:
    array = struct.pack("<IQ", T_U32, 2**62) + b"\0" * 8
    kvs = [BASE_KVS[0], s(b"tokenizer.ggml.scores") + struct.pack("<I", T_ARRAY) + array]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "truncated")


def test_nested_array_is_refused(tmp_path: Path) -> None:
    array = struct.pack("<IQ", T_ARRAY, 1) + struct.pack("<IQ", T_U32, 0)
    kvs = [BASE_KVS[0], s(b"x") + struct.pack("<I", T_ARRAY) + array]
    data = gguf_bytes(kvs, BASE_TENSORS, BASE_DATA)
    assert_bad(write(tmp_path / "x.gguf", data), "corrupt GGUF")


# --- property: random byte flips in the header never escape as another exception ---


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    import gguf

    path = tmp_path_factory.mktemp("fuzz") / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_token_list([b"<s>", b"</s>", b"a", b"b"])
    w.add_token_scores([0.0, 0.5, -1.0, 2.0])
    w.add_file_type(1)
    w.add_tensor("w1", np.zeros((2, 32), dtype=np.float16))
    w.add_tensor("w2", np.zeros(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes(), read_header(path).data_offset


def test_random_header_corruption_is_contained(
    tmp_path: Path, small_gguf: tuple[bytes, int]
) -> None:
    raw, header_end = small_gguf
    rng = random.Random(20240521)
    path = tmp_path / "fuzz.gguf"
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(200):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(4, header_end)
            data[position] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        path.write_bytes(bytes(data))
        try:
            header = read_header(path)
        except ModelFileError as e:
            assert e.path == path
            outcomes["refused"] += 1
        else:
            assert all(
                header.data_offset + t.offset + t.nbytes <= len(data) for t in header.tensors
            )
            outcomes["parsed"] += 1
    # Both outcomes occur, so the loop really exercised the parser's error paths.
    assert outcomes["refused"] > 20 and outcomes["parsed"] > 0, outcomes
