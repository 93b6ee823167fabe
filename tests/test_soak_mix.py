"""benchmarks/soak_mix.py against a real `infer serve smollm2`: each streamed kind's text, read
the way the soak reads it, equals the same door's whole answer at temperature 0 (so the soak's
stream parsers read every door's format, and its same-answer check compares like with like);
each invalid request of the soak is a 4xx in its door; a whole answer of each kind has the
shape the soak checks. The soak's report renders (benchmarks/bench_tables_added.py)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .test_serve import Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_tables_added  # noqa: F401  (registers the renderers)
import soak
import soak_mix
from bench_tables import RENDERERS

TOKENS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("soak-mix-home")
    s = Server("smollm2", "--parallel", "1", "--ctx-size", "512", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def _whole(s: Server, kind: str) -> Any:
    req = soak_mix.build(kind, "smollm2", "Say hi", TOKENS, random.Random(0))
    r = httpx.post(s.url + req.path, json=req.body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _streamed(s: Server, kind: str) -> str:
    req = soak_mix.build(kind, "smollm2", "Say hi", TOKENS, random.Random(0))
    assert req.stream
    text = ""
    with httpx.stream("POST", s.url + req.path, json=req.body, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            text += soak_mix.stream_piece(kind, line)
    return text


@pytest.mark.parametrize(
    ("streamed", "whole"),
    [
        ("chat_stream", "chat"),
        ("completion_stream", "completion"),
        ("anthropic_stream", "anthropic"),
        ("responses_stream", "responses"),
    ],
)
def test_a_streamed_kind_reads_as_its_whole_answer(
    server: Server, streamed: str, whole: str
) -> None:
    text = soak_mix.answer_text(whole, _whole(server, whole))
    assert text  # a real answer to compare, not two empty strings
    assert _streamed(server, streamed) == text


def test_ollamas_streamed_generate_reads_as_its_whole_answer(server: Server) -> None:
    body = {"model": "smollm2", "prompt": "Say hi", "stream": False,
            "options": {"temperature": 0, "num_predict": TOKENS}}  # fmt: skip
    r = httpx.post(server.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200 and r.json()["response"]
    assert _streamed(server, "ollama_stream") == r.json()["response"]


@pytest.mark.parametrize("kind", ["json_schema", "tools", "embeddings", "ollama"])
def test_a_whole_answer_has_the_shape_the_soak_checks(server: Server, kind: str) -> None:
    data = _whole(server, kind)
    assert soak_mix.problem(kind, data) is None
    if kind != "embeddings":
        assert soak_mix.answer_text(kind, data)


def test_a_wrong_shape_is_a_problem() -> None:
    cut = {"choices": [{"finish_reason": "stop", "message": {"content": '{"answer": 3}'}}]}
    assert soak_mix.problem("json_schema", cut)
    none = {"choices": [{"finish_reason": "stop", "message": {"content": "hi"}}]}
    assert soak_mix.problem("tools", none)


@pytest.mark.parametrize("index", range(len(soak_mix.invalid_requests("smollm2"))))
def test_each_invalid_request_of_the_soak_is_a_4xx(server: Server, index: int) -> None:
    path, body = soak_mix.invalid_requests("smollm2")[index]
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        r = httpx.post(server.url + path, content=body, headers=headers, timeout=300)
    else:
        r = httpx.post(server.url + path, json=body, timeout=300)
    assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
    json.loads(r.text)  # in the door's own error shape, JSON


def test_the_soak_report_renders() -> None:
    tally = soak.Soak("http://x", ["smollm2"], TOKENS)
    tally.statuses["chat"]["200"] = 3
    tally.statuses["invalid"]["400"] = 1
    tally.codes = Counter({"200": 3, "400": 1})
    tally.total["chat"] = [0.5, 0.7, 0.9]
    tally.ttft["chat_stream"] = [0.1]
    tally.same = 2
    tally.note_problem("tools: no tool call under tool_choice required (stop)")
    args = argparse.Namespace(clients=2, models=None)
    point = {"s": 60, "rss_mb": 500.0, "open_files": 10, "threads": 8}
    end = {"s": 119, "rss_mb": 510.0, "open_files": 10, "threads": 8}
    run = {"elapsed": 120.0, "checkpoint": point, "end": end, "series": [point, end]}
    idle = {"rss_mb": 505.0, "open_files": 4, "threads": 8}
    log = Path(__file__)  # any readable file stands for the server log
    result = soak.report(
        args, tally, run, {"200": 1}, {"200": 6, "400": 1}, 1, {}, idle, True, str(log)
    )
    assert result["metrics_vs_client"]["match"]  # 3 + the first /metrics read + 1 settle read
    assert result["growth_pct"] == {"rss_mb": 2.0, "open_files": 0.0, "threads": 0.0}
    record = {"script": "soak.py", "date": "2026-12-07T10:00:00Z", "settings": {},
              "smoke": True, "results": result}  # fmt: skip
    text = RENDERERS["soak"](record)
    assert "| growth to the end, %: RSS / open files / threads | 2.0 / 0.0 / 0.0 |" in text
    assert "tools: **1**" in text


def test_cancels_and_slow_readers_go_through_every_streamed_door() -> None:
    rng = random.Random(0)
    for kind in ("cancel", "slow_reader"):
        built = [soak_mix.build(kind, "m", "Say hi", TOKENS, rng) for _ in range(200)]
        assert all(r.kind == kind and r.stream for r in built)
        assert {r.reads_as for r in built} == set(soak_mix.STREAMS)
