"""llama-server's monitoring surface on the real `infer serve` with the bundled SmolLM2: the
`llamacpp:*` series on /metrics (read with prometheus_client's own parser, names, types and
help lines compared with llama-server's on the same model), what they count against what the
requests' `timings` say, and GET /slots in llama-server's shape while an answer streams and
once its client went away."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .llama_server import LlamaServer, llama_server_binary
from .test_serve import Server

PROMPT = "I believe the meaning of life is"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("monitor-home")
    s = Server("smollm2", "--parallel", "2", "--ctx-size", "512", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def scrape(url: str) -> tuple[dict[str, tuple[str, str]], dict[str, float], httpx.Response]:
    """/metrics, read by prometheus_client's parser (which refuses what Prometheus would):
    each llamacpp:* family's (type, help); and each unlabelled llamacpp:* sample's value under
    the name the text gives it (the parser renames a counter without `_total`)."""
    r = httpx.get(url + "/metrics", timeout=60)
    assert r.status_code == 200
    families = {
        f.name: (f.type, f.documentation)
        for f in text_string_to_metric_families(r.text)
        if f.name.startswith("llamacpp:")
    }
    values = {}
    for line in r.text.splitlines():
        if line.startswith("llamacpp:") and "{" not in line:
            name, value = line.split(" ")
            values[name] = float(value)
    return families, values, r


def complete(url: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(url + "/completion", json={"prompt": PROMPT, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_llamacpp_series_are_llama_servers(server: Server, bundled_model: Path) -> None:
    llama = LlamaServer(llama_server_binary(), bundled_model, "-c", "512", "--metrics")
    try:
        complete(llama.url, n_predict=4)
        theirs, _, _ = scrape(llama.url)
    finally:
        llama.stop()
    complete(server.url, n_predict=4)
    ours, _, r = scrape(server.url)
    assert ours == theirs  # the same names, types and help lines: dashboards read both
    assert len(ours) == 15
    started = int(r.headers["Process-Start-Time-Unix"])
    assert time.time() - 3600 < started <= time.time()
    assert "infer_requests_total" in r.text  # infer's own series stay beside them


def test_the_counts_are_what_the_requests_did(server: Server) -> None:
    prompt = "Zebra crossings in Lisbon are painted"  # no other test's: its own slot
    _, before, _ = scrape(server.url)
    first = complete(server.url, prompt=prompt, n_predict=8, temperature=0)
    _, between, _ = scrape(server.url)
    second = complete(server.url, prompt=prompt, n_predict=8, temperature=0)
    _, after, _ = scrape(server.url)

    def grew(name: str, since: dict[str, float] = before) -> float:
        return after[f"llamacpp:{name}"] - since[f"llamacpp:{name}"]

    answers = [first["timings"], second["timings"]]
    predicted = sum(a["predicted_n"] for a in answers)
    assert grew("tokens_predicted_total") == predicted
    # every prompt token was either decoded or found in a slot's cells ...
    prompts = sum(a["prompt_n"] for a in answers)
    assert grew("prompt_tokens_total") + grew("prompt_tokens_cached_total") == prompts
    # ... and the second, the same prompt, found all of it but the last token in its slot
    assert grew("prompt_tokens_cached_total", between) == answers[1]["prompt_n"] - 1
    assert grew("prompt_tokens_total", between) == 1
    assert grew("n_decode_total") >= predicted  # a prompt decode, then one per later token
    assert grew("prompt_seconds_total") > 0 and grew("tokens_predicted_seconds_total") > 0
    assert after["llamacpp:predicted_tokens_seconds"] > 0  # generation since the last scrape
    assert after["llamacpp:prompt_tokens_seconds"] > 0
    assert after["llamacpp:n_busy_slots_per_decode"] >= 1
    assert after["llamacpp:requests_processing"] == 0
    assert after["llamacpp:requests_deferred"] == 0
    longest = answers[0]["prompt_n"] + answers[0]["predicted_n"]
    assert after["llamacpp:n_tokens_max"] >= longest
    _, idle, _ = scrape(server.url)  # nothing generated since the last scrape
    assert idle["llamacpp:predicted_tokens_seconds"] == 0
    assert idle["llamacpp:tokens_predicted_total"] == after["llamacpp:tokens_predicted_total"]


def test_the_generation_rate_leaves_out_the_first_token(server: Server) -> None:
    one = complete(server.url, n_predict=1)["timings"]
    assert one["predicted_n"] == 1
    assert one["predicted_per_second"] == 0.0 and one["predicted_per_token_ms"] == 0.0
    many = complete(server.url, n_predict=16, ignore_eos=True)["timings"]
    assert many["predicted_n"] == 16
    assert many["predicted_per_second"] == pytest.approx(1e3 / many["predicted_ms"] * 15)
    assert many["predicted_per_token_ms"] == pytest.approx(many["predicted_ms"] / 15)


def slots(url: str, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(url + "/slots", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return list(r.json())


def test_slots_show_a_running_answer_then_free_the_slot_its_client_left(server: Server) -> None:
    body = {"prompt": PROMPT, "n_predict": 400, "ignore_eos": True, "stream": True,
            "temperature": 0.5, "top_k": 7}  # fmt: skip
    with httpx.stream("POST", server.url + "/completion", json=body, timeout=300) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["content"] is not None
        [running] = [s for s in slots(server.url) if s["is_processing"]]
        assert set(running) == {
            "id",
            "n_ctx",
            "speculative",
            "is_processing",
            "id_task",
            "n_prompt_tokens",
            "n_prompt_tokens_processed",
            "n_prompt_tokens_cache",
            "params",
            "next_token",
        }  # fmt: skip  (no "prompt" or "generated": other clients' text stays theirs)
        assert running["n_ctx"] == 512 and running["speculative"] is False
        prompt = running["n_prompt_tokens"]
        assert running["n_prompt_tokens_processed"] + running["n_prompt_tokens_cache"] == prompt
        params = running["params"]
        assert params["temperature"] == 0.5 and params["top_k"] == 7
        assert params["n_predict"] == 400 and params["ignore_eos"] is True
        [next_token] = running["next_token"]
        assert next_token["has_next_token"] is True
        assert next_token["n_decoded"] >= 1
        assert next_token["n_remain"] + next_token["n_decoded"] == 400
    # the client went away mid-answer: its slot is freed (llama.cpp's test_cancel_request)
    deadline = time.monotonic() + 60
    while any(s["is_processing"] for s in slots(server.url)):
        assert time.monotonic() < deadline, "the slot stayed busy after its client left"
        time.sleep(0.1)
    for slot in slots(server.url):
        assert set(slot) == {"id", "n_ctx", "speculative", "is_processing"}


def test_slots_of_a_model_that_is_not_loaded_is_a_404(server: Server) -> None:
    r = httpx.get(server.url + "/slots", params={"model": "nope"}, timeout=60)
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "model"
    assert len(slots(server.url, model="smollm2")) == 2


def test_no_slots_turns_the_monitor_off(tmp_path: Path) -> None:
    s = Server("--no-slots", home=tmp_path).wait_ready()
    try:
        r = httpx.get(s.url + "/slots", timeout=60)
        assert r.status_code == 501
        assert "--no-slots" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0


# --- return_progress, timings_per_token: llama-server's streaming telemetry -----------------
def events(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream's data frames, parsed (`[DONE]` left out)."""
    out = []
    with httpx.stream("POST", url + path, json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def progress_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["prompt_progress"] for f in frames if "prompt_progress" in f]


def test_a_chat_stream_reports_the_prompts_reading(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": "This is a test. " * 40}],
            "max_tokens": 4, "stream": True, "return_progress": True}  # fmt: skip
    first = progress_of(events(server.url, "/v1/chat/completions", body))
    assert first[0]["cache"] == first[0]["processed"]  # before any decode
    assert first[-1]["processed"] == first[-1]["total"] > first[0]["processed"]
    assert all(p["total"] == first[0]["total"] and p["cache"] == first[0]["cache"] for p in first)
    done = [p["processed"] for p in first]
    assert done == sorted(set(done))  # only when it moved on
    # the same prompt again: its slot holds all of it but the last token
    again = progress_of(events(server.url, "/chat/completions", body))
    assert [(p["cache"], p["processed"]) for p in again] == [
        (first[0]["total"] - 1, first[0]["total"] - 1),
        (first[0]["total"] - 1, first[0]["total"]),
    ]
    plain = events(server.url, "/v1/chat/completions", {**body, "return_progress": False})
    assert progress_of(plain) == []


def test_completion_progress_carries_the_prompts_timings(server: Server) -> None:
    body = {"prompt": "the quick brown fox jumps over the lazy dog " * 8, "n_predict": 4,
            "stream": True, "timings_per_token": True, "return_progress": True}  # fmt: skip
    frames = events(server.url, "/completion", body)
    progress = [f for f in frames if "prompt_progress" in f]
    assert progress[0]["timings"]["prompt_n"] == 0 and progress[0]["timings"]["prompt_ms"] == 0
    last = progress[-1]
    assert (
        last["timings"]["prompt_n"]
        == last["prompt_progress"]["processed"] - last["prompt_progress"]["cache"]
    )
    assert last["timings"]["prompt_ms"] > 0 and last["timings"]["predicted_n"] == 0
    texts = [f for f in frames if f.get("content") and not f["stop"]]
    assert texts and all("timings" in f for f in texts)  # timings_per_token
    counts = [f["timings"]["predicted_n"] for f in texts]
    assert counts == sorted(counts) and counts[-1] >= 1


def test_a_responses_stream_carries_progress_and_timings(server: Server) -> None:
    body = {"input": "This is a test" * 10, "max_output_tokens": 8, "stream": True,
            "timings_per_token": True, "return_progress": True}  # fmt: skip
    frames = events(server.url, "/v1/responses", body)
    progress = [f for f in frames if "prompt_progress" in f]
    assert progress and all(f["type"] == "response.in_progress" for f in progress)
    deltas = [f for f in frames if f["type"] == "response.output_text.delta"]
    assert deltas and all("predicted_per_second" in f["timings"] for f in deltas)
    [completed] = [f for f in frames if f["type"] in ("response.completed", "response.incomplete")]
    assert completed["timings"]["predicted_n"] == completed["response"]["usage"]["output_tokens"]


def test_verbose_shows_the_prompt_the_template_made(server: Server) -> None:
    messages = [{"role": "system", "content": "Book"},
                {"role": "user", "content": "What is the best book"}]  # fmt: skip
    body = {"messages": messages, "max_tokens": 2}
    url = server.url + "/v1/chat/completions"
    answer = httpx.post(url, json={**body, "verbose": True}, timeout=300).json()
    rendered = httpx.post(server.url + "/apply-template", json=body, timeout=60).json()["prompt"]
    shown = answer["__verbose"]
    assert shown["prompt"] == rendered and "Book" in shown["prompt"]
    assert shown["content"] == answer["choices"][0]["message"]["content"]
    assert shown["tokens_predicted"] == answer["usage"]["completion_tokens"]
    assert "__verbose" not in httpx.post(url, json=body, timeout=300).json()
    refused = httpx.post(url, json={**body, "verbose": "yes"}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "verbose"
