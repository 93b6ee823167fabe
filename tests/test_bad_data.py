"""Bad data reaches the user as a one-line error that names it (file, line, field, key), never
as "unexpected ValueError": GGUF metadata of the wrong type, an argument that is not UTF-8, a
lone surrogate escaped in a batch file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infer.runtime.errors import ModelFileError
from infer.runtime.models.gguf import GGUFHeader, read_header

from .conftest import run_infer
from .tiny_gguf import write_tiny_gguf


def assert_one_line_error(
    result: subprocess.CompletedProcess[bytes], code: int, *words: str
) -> str:
    err = result.stderr.decode(errors="replace")
    assert result.returncode == code, err
    assert result.stdout == b""
    assert "Traceback" not in err and "unexpected" not in err, err
    assert err.count("\n") == 1 and err.startswith("infer: error: "), err
    for word in words:
        assert word in err, err
    return err


def test_gguf_metadata_of_the_wrong_type_names_the_key(tmp_path: Path) -> None:
    bad = write_tiny_gguf(tmp_path / "bad.gguf", block_count="two")
    result = run_infer("run", str(bad), "hi")
    assert_one_line_error(result, 1, "bad.gguf", "llama.block_count", "str, not an integer")
    # With --ctx-size the KV-cache check reads the same key first.
    result = run_infer("run", str(bad), "hi", "--ctx-size", "64")
    assert_one_line_error(result, 1, "llama.block_count")


def test_arch_int_reads_ints_and_per_layer_arrays(tmp_path: Path) -> None:
    def header(**meta: object) -> GGUFHeader:
        return GGUFHeader(tmp_path / "m.gguf", 3, {"general.architecture": "x", **meta})

    assert header().arch_int("block_count") == 0
    assert header().arch_int("attention.key_length", 16) == 16
    assert header(**{"x.block_count": 30}).arch_int("block_count") == 30
    assert header(**{"x.attention.head_count": [4, 8, 6]}).arch_int("attention.head_count") == 8
    assert header(**{"x.attention.head_count_kv": []}).arch_int("attention.head_count_kv", 3) == 3
    with pytest.raises(ModelFileError, match=r"m.gguf: metadata x.block_count is float"):
        header(**{"x.block_count": 2.5}).arch_int("block_count")
    with pytest.raises(ModelFileError, match="is an array of 2, not an integer"):
        header(**{"x.block_count": ["a", "b"]}).arch_int("block_count")


def test_the_tiny_model_still_reads(tiny_model: Path) -> None:
    assert read_header(tiny_model).arch_int("block_count") == 2


def test_prompt_argument_that_is_not_utf8(tiny_model: Path) -> None:
    prompt = os.fsdecode(b"caf\xe9")  # the bytes a Latin-1 terminal sends
    result = run_infer("run", str(tiny_model), prompt, "-n", "4")
    assert_one_line_error(result, 1, "PROMPT argument is not valid UTF-8", "0xe9", "offset 3")


def test_batch_line_with_a_lone_surrogate_names_the_line(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "broken \\ud800 text"}\n')
    result = run_infer("run", str(tiny_model), "--batch", str(path), "-n", "4")
    assert_one_line_error(result, 1, "p.jsonl, line 2", "'prompt'", "not valid Unicode")


def test_a_file_llama_cpp_asserts_on_is_one_line_not_a_core_dump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tokens with the same text: llama.cpp's vocabulary loader GGML_ASSERTs, which would
    abort() with a gdb backtrace; ggml's abort callback (llama/aborts.py) makes it one line."""
    import gguf

    add_tokens = gguf.GGUFWriter.add_token_list

    def duplicated(self: gguf.GGUFWriter, tokens: list[bytes]) -> None:
        tokens = list(tokens)
        tokens[5] = tokens[6]
        add_tokens(self, tokens)

    monkeypatch.setattr(gguf.GGUFWriter, "add_token_list", duplicated)
    model = write_tiny_gguf(tmp_path / "dup.gguf")
    result = run_infer("run", str(model), "hi", "-n", "2")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("infer: error: llama.cpp failed while loading")
    assert "dup.gguf" in err and "GGML_ASSERT" in err and "may be damaged" in err
    assert result.stdout == b""
