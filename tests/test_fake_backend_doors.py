"""The llama.cpp doors that FakeBackend's tokenize, pieces, render and rerank stand behind, over
real HTTP on loopback: each door passes the body's fields to the backend (recorded) and shapes
its answer. In addition to the real-model tests (tests/test_llamacpp_serve.py, the rerank
tests), which check the answers themselves against llama-server's."""

from __future__ import annotations

import httpx

from .fake_backend import BOS, MODEL, FakeBackend
from .test_serve_http import serving


def test_tokenize_and_detokenize_reach_the_backend() -> None:
    backend = FakeBackend()
    with serving(backend) as s:
        r = httpx.post(s.url + "/tokenize", json={"content": "hi", "add_special": True})
        assert r.status_code == 200 and r.json() == {"tokens": [BOS, ord("h"), ord("i")]}
        assert backend.tokenized == [("", "hi", True, True)]  # parse_special: llama's default
        r = httpx.post(s.url + "/detokenize", json={"tokens": [ord("o"), ord("k")]})
        assert r.status_code == 200 and r.json() == {"content": "ok"}
        r = httpx.post(s.url + "/detokenize", json={"tokens": [999]})
        assert r.status_code == 400 and "999" in r.json()["error"]["message"]


def test_apply_template_renders_with_the_backend() -> None:
    backend = FakeBackend()
    with serving(backend) as s:
        body: dict[str, object] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
        }
        r = httpx.post(s.url + "/apply-template", json=body)
        assert r.status_code == 200 and r.json() == {"prompt": "user: Hello\nassistant:"}
        body["add_generation_prompt"] = False  # the conversation alone, no answer turn opened
        r = httpx.post(s.url + "/apply-template", json=body)
        assert r.status_code == 200 and r.json() == {"prompt": "user: Hello\n"}
        [(model, request), _] = backend.rendered
        assert model == MODEL and request.messages and request.messages[0].text == "Hello"


def test_rerank_orders_by_the_backends_scores() -> None:
    backend = FakeBackend()
    with serving(backend) as s:
        documents = ["a cat", "the capital of France", "France"]
        body = {"model": MODEL, "query": "capital of France", "documents": documents}
        r = httpx.post(s.url + "/v1/rerank", json=body)
        assert r.status_code == 200, r.text
        assert [x["index"] for x in r.json()["results"]] == [1, 2, 0]  # 3, 1 and 0 words shared
        assert backend.reranked == [(MODEL, "capital of France", documents)]
        unknown = httpx.post(s.url + "/v1/rerank", json={**body, "model": "nope"})
        assert unknown.status_code == 404
