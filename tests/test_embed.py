"""`infer embed`: vectors equal to llama.cpp's own (its llama-server, built from the vendored
source as the benchmarks build their tools) on the bundled SmolLM2 (a decoder, mean pooling)
and on a tiny random-weight BERT encoder; the output formats; similarity; every bad input."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import run_infer
from .llama_server import LlamaServer, llama_server_binary
from .tiny_gguf import write_tiny_bert_gguf

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Ünïcödé téxt wíth áccents",
    "日本語のテキストです。",
    "emoji 🙂 and symbols ∑∫√",
    "Python is a programming language.",
    "The weather is sunny today.",
    "I like to eat apples and bananas.",
    "Machine learning models need data.",
    "The river flows into the sea.",
    "Music makes people happy.",
    "Cats and dogs are common pets.",
    "The train leaves at noon.",
    "Water boils at one hundred degrees.",
    "She wrote a letter to her friend.",
    "Mountains are covered in snow.",
    "The library opens every morning.",
    "Stars shine brightly at night.",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def llama_server() -> Path:
    """llama.cpp's llama-server from the installed llama-cpp-python's sdist: built once and
    cached (~/.cache/infer-bench), as benchmarks/vs_llamacpp.py builds its tools. It is the
    reference rather than llama-embedding, which computes the same vectors (the same batch
    code and common_embd_normalize) but prints them through llama.cpp's logger thread, which
    loses some or all of its output at exit: 4 whole arrays in 20 runs here."""
    return llama_server_binary()


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert_gguf(tmp_path_factory.mktemp("bert") / "bert.gguf")


def reference(
    server: Path,
    model: Path,
    texts: list[str],
    *,
    pooling: str | None = None,
    ctx: int = 256,
    ubatch: int = 256,
) -> list[list[float]]:
    """llama.cpp's vectors for `texts` (L2-normalised, as llama-embedding's default), each
    embedded on its own as llama-server does: compare with `infer embed --parallel 1` (a
    quantized model's numbers depend slightly on how many rows a batch holds: 0.9995 cosine
    for one text of 20 packed together against the same alone)."""
    flags = ["--pooling", pooling] if pooling else []
    args = ["--embeddings", "-c", str(ctx), "-b", str(ctx), "-ub", str(ctx), "-np", "1", *flags]
    reference_server = LlamaServer(server, model, *args)
    try:
        r = reference_server.post("/v1/embeddings", {"input": texts})
        assert r.status_code == 200, r.text[:300]
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]
    finally:
        reference_server.stop()


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def embed_lines(result: subprocess.CompletedProcess[bytes]) -> list[dict]:
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_vectors_equal_llama_cpp_on_the_bundled_model(
    llama_server: Path, bundled_model: Path, tmp_path: Path
) -> None:
    lines = [*TEXTS[:10], "", "  \t ", *TEXTS[10:]]  # two blank lines: skipped and said so
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_infer(
        "embed", "smollm2", "--file", str(docs), "--json", "-c", "2048", "--parallel", "1"
    )
    records = embed_lines(result)
    assert "skipped 2 blank items" in result.stderr.decode()
    assert [r["index"] for r in records] == [*range(10), *range(12, 22)]
    assert [r["text"] for r in records] == TEXTS
    want = reference(llama_server, bundled_model, TEXTS, pooling="mean", ctx=2048)
    assert len(want) == len(records) == 20
    for record, ref in zip(records, want, strict=True):
        assert len(record["embedding"]) == len(ref) == 576
        assert cosine(record["embedding"], ref) >= 0.9999, record["text"]
        assert math.isclose(np.linalg.norm(record["embedding"]), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("pooling", [None, "cls", "last"])
def test_an_encoder_model_as_llama_cpp_computes_it(
    llama_server: Path, bert: Path, pooling: str | None
) -> None:
    texts = ["the cat sat on the mat.", "hello world", "query: the dog", "zebra quilt"]
    flags = ["--pooling", pooling] if pooling else []
    records = embed_lines(run_infer("embed", str(bert), *texts, "--json", "-np", "1", *flags))
    want = reference(llama_server, bert, texts, pooling=pooling)
    for record, ref in zip(records, want, strict=True):
        assert cosine(record["embedding"], ref) >= 0.9999


def test_raw_vectors_with_no_normalize(llama_server: Path, bert: Path) -> None:
    """The raw vector is llama.cpp's before its L2 step: the same direction, not length 1.
    (llama-server's /v1/embeddings always normalises.)"""
    [raw] = embed_lines(run_infer("embed", str(bert), "hello world", "--json", "--no-normalize"))
    [ref] = reference(llama_server, bert, ["hello world"])
    vector = np.asarray(raw["embedding"])
    assert not math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-3)
    assert np.allclose(vector / np.linalg.norm(vector), ref, atol=1e-6)


def test_one_text_is_a_bare_array_and_pooling_none_a_row_per_token(bert: Path) -> None:
    one = run_infer("embed", str(bert), "hello world")
    assert one.returncode == 0, one.stderr
    vector = json.loads(one.stdout)
    assert isinstance(vector, list) and len(vector) == 64 and isinstance(vector[0], float)
    rows = json.loads(run_infer("embed", str(bert), "hello world", "--pooling", "none").stdout)
    assert len(rows) == 4 and all(len(r) == 64 for r in rows)  # [CLS] hello world [SEP]


def test_json_lines_without_text_and_binary_float32(bert: Path, tmp_path: Path) -> None:
    piped = run_infer("embed", str(bert), "--json", "--no-text", input="hello\n\nworld\n")
    records = embed_lines(piped)
    assert [sorted(r) for r in records] == [["embedding", "index"]] * 2
    assert [r["index"] for r in records] == [0, 2]
    binary = run_infer("embed", str(bert), "--format", "binary", input="hello\nworld\n")
    assert binary.returncode == 0, binary.stderr
    out = tmp_path / "v.f32"
    out.write_bytes(binary.stdout)
    matrix = np.fromfile(out, dtype="<f4").reshape(2, 64)
    assert np.allclose(matrix[0], records[0]["embedding"], atol=1e-6)
    assert np.allclose(matrix[1], records[1]["embedding"], atol=1e-6)


def test_paragraphs_from_stdin(bert: Path) -> None:
    text = "the cat\nsat on the mat.\n\nhello world\n\n\nthe dog\n"
    records = embed_lines(run_infer("embed", str(bert), "--split", "paragraph", input=text))
    assert [r["text"] for r in records] == ["the cat\nsat on the mat.", "hello world", "the dog"]


def test_similar_ranks_lines_by_cosine(bundled_model: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    result = run_infer(
        "embed", "smollm2", "--similar", "Paris is the capital of France.", "--file",
        str(docs), "-k", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t", 1) for line in result.stdout.decode().splitlines()]
    assert len(rows) == 3
    assert rows[0][1] == "Paris is the capital of France." and float(rows[0][0]) > 0.9999
    scores = [float(s) for s, _ in rows]
    assert scores == sorted(scores, reverse=True)


def test_too_long_is_an_error_naming_the_counts_unless_truncate(bert: Path) -> None:
    long_text = "the cat " * 200  # 400 words: more than the 256-token context
    result = run_infer("embed", str(bert), long_text)
    assert result.returncode == 2 and result.stdout == b""
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1 and "402 tokens" in message and "256" in message
    cut = run_infer("embed", str(bert), long_text, "--truncate")
    assert cut.returncode == 0, cut.stderr
    assert "cut 1 text(s) to 256 tokens" in cut.stderr.decode()
    assert len(json.loads(cut.stdout)) == 64


@pytest.mark.parametrize(
    ("args", "stdin", "code", "needle"),
    [
        (["--pooling", "max"], None, 2, "--pooling must be one of"),
        (["--split", "word"], "a\n", 2, "--split must be one of"),
        (["-k", "0", "--similar", "x"], "a\n", 2, "-k must be >= 1"),
        (["--format", "yaml", "x"], None, 2, "--format must be json or binary"),
        ([], "  \n\n", 2, "every item is blank"),
        (["x", "--file", "f.txt"], None, 2, "not both"),
    ],
)
def test_bad_input_is_one_line(
    bert: Path, args: list[str], stdin: str | None, code: int, needle: str
) -> None:
    result = run_infer("embed", str(bert), *args, input=stdin)
    assert result.returncode == code, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert result.stdout == b""


def test_a_file_that_is_not_utf8_names_the_line(bert: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"hello\nworld\ncaf\xe9\n")
    result = run_infer("embed", str(bert), "--file", str(bad))
    assert result.returncode == 1
    assert "line 3" in result.stderr.decode() and "not valid UTF-8" in result.stderr.decode()


def test_the_server_embeds_like_infer_embed(bert: Path, tmp_path: Path) -> None:
    """/v1/embeddings through the openai client: floats and base64, batched with each other;
    a chat request to an embedding model and unsupported dimensions are 400s."""
    import base64
    import threading

    import openai

    from .test_serve import Server

    texts = ["the cat sat on the mat.", "hello world", "query: the dog"]
    local = embed_lines(run_infer("embed", "smollm2", *texts, "--json"))
    per_token = write_tiny_bert_gguf(tmp_path / "per-token.gguf", pooling=0)  # pooling none
    s = Server(
        "smollm2", str(bert), str(per_token), "--ctx-size", "512", home=tmp_path / "h"
    ).wait_ready()
    try:
        client = s.client()
        answer = client.embeddings.create(model="smollm2", input=texts)
        assert [d.index for d in answer.data] == [0, 1, 2]
        for d, record in zip(answer.data, local, strict=True):
            assert cosine(d.embedding, record["embedding"]) >= 0.9999
        assert answer.usage.prompt_tokens > 0 and answer.model == "smollm2"
        raw = client.with_raw_response.embeddings.create(
            model=str(bert), input="hello world", encoding_format="base64"
        ).http_response.json()
        vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
        [want] = embed_lines(run_infer("embed", str(bert), "hello world", "--json"))
        assert cosine(vector.tolist(), want["embedding"]) >= 0.9999
        tokens = client.embeddings.create(model=str(bert), input=[[2, 12, 13, 3]])
        assert len(tokens.data[0].embedding) == 64
        results: list[int] = []

        def many() -> None:
            got = client.embeddings.create(model="smollm2", input=[f"text {i}" for i in range(40)])
            results.append(len(got.data))

        threads = [threading.Thread(target=many) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert results == [40, 40, 40]
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            client.chat.completions.create(
                model=str(bert), messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(model=str(bert), input="x", dimensions=8)
        with pytest.raises(openai.BadRequestError, match="pooling is 'none'"):
            client.embeddings.create(model=str(per_token), input="x")
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model="smollm2", input=[])
        assert bad.value.body["param"] == "input"  # type: ignore[index]
    finally:
        assert s.stop() == 0
