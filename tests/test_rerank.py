"""Reranking: `infer rerank` and the server's /v1/rerank (/rerank, /v1/reranking; Jina/Cohere's
and TEI's shapes) score each (query, document) pair as llama.cpp's own `llama-server
--reranking` does, within 1e-4, on a tiny random-weight reranker (tests/tiny_rerank.py: a BERT
with a classification head and rank pooling); a model that is not a reranker is refused."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import INFER, run_infer
from .llama_server import LlamaServer, llama_server_binary
from .test_serve import Server
from .tiny_gguf import write_tiny_bert_gguf
from .tiny_rerank import write_tiny_rerank_gguf

QUERY = "the cat"
DOCS = [
    "the cat sat on the mat",
    "hello world",
    "dog",
    "query: the dog sat.",
    "a cat and a dog on a mat",
]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_rerank_gguf(tmp_path_factory.mktemp("rerank") / "rerank.gguf")


@pytest.fixture(scope="module")
def want(reranker: Path) -> dict[int, float]:
    """llama-server's score for each document, by index."""
    server = LlamaServer(
        llama_server_binary(), reranker, "--reranking", "-c", "256", "-b", "256", "-ub", "256"
    )
    try:
        r = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        return {d["index"]: d["relevance_score"] for d in r.json()["results"]}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(reranker: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bert = write_tiny_bert_gguf(tmp_path_factory.mktemp("bert") / "bert.gguf")
    home = tmp_path_factory.mktemp("home")
    s = Server(str(reranker), str(bert), "-c", "256", home=home).wait_ready()
    s.bert = bert  # type: ignore[attr-defined]
    yield s
    assert s.stop() == 0


def test_the_scores_differ_so_the_comparison_can_fail(want: dict[int, float]) -> None:
    assert len({round(v, 3) for v in want.values()}) == len(DOCS)


def test_infer_rerank_scores_as_llama_server(reranker: Path, want: dict[int, float]) -> None:
    result = run_infer("rerank", str(reranker), QUERY, *DOCS, "--json")
    assert result.returncode == 0, result.stderr.decode()
    got = json.loads(result.stdout)
    assert [d["index"] for d in got] == sorted(want, key=lambda i: -want[i])  # best first
    for d in got:
        assert d["relevance_score"] == pytest.approx(want[d["index"]], abs=1e-4)
        assert d["document"] == DOCS[d["index"]]
    top = json.loads(run_infer("rerank", str(reranker), QUERY, *DOCS, "--json", "-n", "2").stdout)
    assert top == got[:2]


def test_documents_from_a_file_or_stdin_and_plain_lines(
    reranker: Path, want: dict[int, float], tmp_path: Path
) -> None:
    text = "\n".join(DOCS[:2]) + "\n\n" + "\n".join(DOCS[2:]) + "\n"  # a blank line: skipped
    lines = run_infer("rerank", str(reranker), QUERY, "--file", "-", input=text)
    assert lines.returncode == 0, lines.stderr.decode()
    rows = [line.split("\t") for line in lines.stdout.decode().splitlines()]
    positions = [int(r[1]) for r in rows]  # a line's number minus one, the blank one counted
    assert sorted(positions) == [0, 1, 3, 4, 5]
    for score, position, document in rows:
        index = DOCS.index(document)
        assert position == str(index if index < 2 else index + 1)
        assert float(score) == pytest.approx(want[index], abs=1e-4)
    (tmp_path / "docs.txt").write_text(text)
    again = run_infer("rerank", str(reranker), QUERY, "-f", str(tmp_path / "docs.txt"))
    assert again.stdout == lines.stdout


def test_a_table_on_a_terminal(reranker: Path) -> None:
    assert INFER
    leader, follower = pty.openpty()
    proc = subprocess.run(
        [INFER, "rerank", str(reranker), QUERY, *DOCS[:3]],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, timeout=120,
    )  # fmt: skip
    os.close(follower)
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.decode()
    header, *rows = shown.splitlines()
    assert header.split() == ["SCORE", "INDEX", "DOCUMENT"] and len(rows) == 3


def test_bad_input_is_one_line_and_exit_2(reranker: Path, tmp_path: Path) -> None:
    bert = write_tiny_bert_gguf(tmp_path / "bert.gguf")
    for args, words in [
        ((str(bert), QUERY, "doc"), "not a reranker"),
        ((str(reranker), QUERY, "doc", "--top-n", "0"), "--top-n"),
        ((str(reranker), QUERY, "doc", "--file", "x.txt"), "not both"),
        ((str(reranker), QUERY, "  "), "blank"),
    ]:
        result = run_infer("rerank", *args)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.decode().splitlines()
        assert words in line


def test_the_server_reranks_as_llama_server(
    served: Server, reranker: Path, want: dict[int, float]
) -> None:
    for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking", "/v2/rerank"):
        r = httpx.post(
            served.url + path,
            json={"model": str(reranker), "query": QUERY, "documents": DOCS},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        order = [d["index"] for d in body["results"]]
        assert order == sorted(want, key=lambda i: -want[i])
        for d in body["results"]:
            assert d["relevance_score"] == pytest.approx(want[d["index"]], abs=1e-4)
            assert "document" not in d
        assert body["usage"]["prompt_tokens"] > 0 and body["object"] == "list"


def test_cohere_and_tei_shapes(served: Server, want: dict[int, float]) -> None:
    """Cohere's documents as {"text"} objects, top_n and return_documents; no model: the
    server's first; TEI's `texts` answered with a bare list."""
    cohere = httpx.post(
        served.url + "/v1/rerank",
        json={
            "query": QUERY,
            "documents": [{"text": d} for d in DOCS],
            "top_n": 2,
            "return_documents": True,
        },
        timeout=120,
    ).json()
    best = sorted(want, key=lambda i: -want[i])[:2]
    assert [d["index"] for d in cohere["results"]] == best
    assert [d["document"]["text"] for d in cohere["results"]] == [DOCS[i] for i in best]
    tei = httpx.post(
        served.url + "/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}
    ).json()
    assert isinstance(tei, list) and [d["index"] for d in tei] == sorted(
        want, key=lambda i: -want[i]
    )
    assert tei[0]["score"] == pytest.approx(want[tei[0]["index"]], abs=1e-4)
    assert tei[0]["text"] == DOCS[tei[0]["index"]]


def test_the_server_refuses_bad_requests(served: Server, reranker: Path) -> None:
    bert = str(served.bert)  # type: ignore[attr-defined]
    r = httpx.post(served.url + "/v1/embeddings", json={"model": str(reranker), "input": "x"})
    assert r.status_code == 400 and "/v1/rerank" in r.json()["error"]["message"]
    for body, field in [
        ({"model": bert, "query": QUERY, "documents": DOCS}, "model"),
        ({"documents": DOCS}, "query"),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["a", 3]}, "documents"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
    ]:
        r = httpx.post(served.url + "/v1/rerank", json=body, timeout=120)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == field, r.text
