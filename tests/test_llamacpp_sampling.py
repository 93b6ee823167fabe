"""logit_bias, n_probs / post_sampling_probs and tuple-form `items` end to end: `infer serve` on
the bundled SmolLM2 and llama.cpp's own llama-server on the same model (2 slots x 1024 cells
each), asked the same requests at temperature 0 over real sockets, through the `openai` client
where OpenAI's API has the field: the same answers, the same generation_settings.logit_bias,
the same completion_probabilities (values within 1e-3); the 400s that name `logit_bias` for ids
outside the vocabulary and biases that are not numbers. The post-sampling bookkeeping of the
scheduler is checked against tests/fakes.py's scripted engine at the end."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infer.runtime.generation.scheduler import BatchRequest, Scheduler
from infer.runtime.params import GenerateOptions, SamplingParams

from .fakes import FakeModel
from .llama_server import post_json as post
from .llama_server import running_infer_server, running_llama_server
from .test_serve import Server

QUESTION = "Name a famous book."
PROMPT = "I believe the meaning of life is"
TOL = 1e-3
N_VOCAB = 49152  # SmolLM2's


@pytest.fixture(scope="module")
def infer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("sampling-home"))


@pytest.fixture(scope="module")
def llama(bundled_model: Path) -> Iterator[str]:
    yield from running_llama_server(bundled_model, "-c", "2048", "-np", "2", "--jinja")


def chat(url: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    return client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        **{"max_tokens": 16, **extra},
    )


def first_token(url: str) -> int:
    """The id of the first token the model answers QUESTION with, at temperature 0."""
    answer = chat(url, logprobs=True)
    assert answer.choices[0].logprobs and answer.choices[0].logprobs.content
    return int(answer.choices[0].logprobs.content[0].model_extra["id"])  # llama-server's `id`


# --- logit_bias -----------------------------------------------------------------------------
def test_openai_client_logit_bias_bans_and_forces_as_llama_server(
    infer: Server, llama: str
) -> None:
    plain = chat(infer.url).choices[0].message.content
    banned = first_token(infer.url)
    biased = chat(infer.url, logit_bias={str(banned): -100})
    text = biased.choices[0].message.content
    assert text and text != plain  # the ban changed the answer
    assert chat(llama, logit_bias={str(banned): -100}).choices[0].message.content == text
    # +100 makes a token all but certain: every token is it
    forced = post(infer.url, "/tokenize", {"content": " book"})["tokens"]
    assert len(forced) == 1
    ours = chat(infer.url, logit_bias={str(forced[0]): 100}, max_tokens=4)
    theirs = chat(llama, logit_bias={str(forced[0]): 100}, max_tokens=4)
    assert ours.choices[0].message.content == " book" * 4
    assert ours.choices[0].message.content == theirs.choices[0].message.content


def test_completions_logit_bias_as_llama_server(infer: Server, llama: str) -> None:
    body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 12}
    plain = post(infer.url, "/v1/completions", body)["choices"][0]["text"]
    first = post(infer.url, "/tokenize", {"content": plain})["tokens"][0]
    body["logit_bias"] = {str(first): -100}
    ours = post(infer.url, "/v1/completions", body)["choices"][0]["text"]
    assert ours != plain
    assert ours == post(llama, "/v1/completions", body)["choices"][0]["text"]


def by_token(entries: list[dict[str, Any]]) -> list[tuple[int, float | None]]:
    return sorted((e["token"], e["bias"]) for e in entries)


NATIVE_FORMS = ["ids", "texts", "id-object", "text-object", "false"]


@pytest.mark.parametrize("form", NATIVE_FORMS)
def test_native_logit_bias_forms_as_llama_server(infer: Server, llama: str, form: str) -> None:
    """Each of /completion's forms (llama-server's server-schema.cpp): the same answer and the
    same generation_settings.logit_bias (texts tokenized, false a ban shown as null)."""
    body: dict[str, Any] = {"prompt": PROMPT, "temperature": 0, "n_predict": 12}
    plain = post(infer.url, "/completion", body)["content"]
    words = [" to", " the", " a"]  # what the model would say is banned
    ids = [post(infer.url, "/tokenize", {"content": w})["tokens"][0] for w in words]
    bias: Any = {
        "ids": [[t, -100] for t in ids],
        "texts": [[w, -100] for w in words],
        "id-object": {str(t): -100 for t in ids},
        "text-object": {w: -100 for w in words},
        "false": [[t, False] for t in ids],
    }[form]
    ours = post(infer.url, "/completion", {**body, "logit_bias": bias})
    theirs = post(llama, "/completion", {**body, "logit_bias": bias})
    assert ours["content"] == theirs["content"]
    assert ours["content"] != plain
    shown = ours["generation_settings"]["logit_bias"]
    # (llama-server's JSON library lists an object's keys sorted: compare as sets)
    assert by_token(shown) == by_token(theirs["generation_settings"]["logit_bias"])
    assert sorted(e["token"] for e in shown) == sorted(ids)
    assert all(e["bias"] == (None if form == "false" else -100) for e in shown)
    assert post(infer.url, "/completion", body)["generation_settings"]["logit_bias"] == []


BAD_BIAS = [
    ("/v1/chat/completions", {"logit_bias": {str(N_VOCAB): 5}}, "vocabulary"),
    ("/v1/chat/completions", {"logit_bias": {"7": "x"}}, "number"),
    ("/v1/completions", {"logit_bias": {"7": 101}}, "between"),
    ("/completion", {"logit_bias": [[N_VOCAB + 10, 1]]}, "vocabulary"),
    ("/completion", {"logit_bias": {"99999999": False}}, "vocabulary"),
    ("/completion", {"logit_bias": [[7, "x"]]}, "number"),
    ("/completion", {"logit_bias": [[7, True]]}, "number"),
    ("/completion", {"logit_bias": [7, 1]}, "pair"),
    ("/completion", {"logit_bias": "x"}, "array"),
]


@pytest.mark.parametrize(("path", "fields", "words"), BAD_BIAS)
def test_bad_logit_bias_is_a_400_naming_it(
    infer: Server, path: str, fields: dict[str, Any], words: str
) -> None:
    if path == "/v1/chat/completions":
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}
    else:
        body = {"prompt": "Hi", "max_tokens": 2, **fields}
    error = post(infer.url, path, body, status=400)["error"]
    assert error["param"] == "logit_bias"
    assert "logit_bias" in error["message"] and words in error["message"]
    assert post(infer.url, "/completion", {"prompt": "Hi", "n_predict": 1})["content"]


def test_ignore_eos_bans_the_end_of_generation_as_llama_server(infer: Server, llama: str) -> None:
    """ignore_eos: the end-of-generation tokens are never sampled (llama-server adds them to
    logit_bias), so the answer goes on with text where it would have ended."""
    body = {"messages": [{"role": "user", "content": "Say hi."}], "temperature": 0}
    short = post(infer.url, "/v1/chat/completions", {**body, "max_tokens": 40})["choices"][0]
    assert short["finish_reason"] == "stop"  # it ends on its own...
    body.update(max_tokens=len(short["message"]["content"]) + 24, ignore_eos=True)
    ours = post(infer.url, "/v1/chat/completions", body)
    theirs = post(llama, "/v1/chat/completions", body)
    assert ours["choices"][0]["finish_reason"] == "length"  # ... and now goes on, with text
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
    assert ours["usage"]["completion_tokens"] == body["max_tokens"]


# --- n_probs ----------------------------------------------------------------------------------
def assert_same_probs(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> None:
    top = "top_logprobs" if key == "logprob" else "top_probs"
    assert [e["id"] for e in ours] == [e["id"] for e in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b), (a, b)
        assert a["token"] == b["token"] and a["bytes"] == b["bytes"]
        assert abs(a[key] - b[key]) < TOL, (a, b)
        assert [t["id"] for t in a[top]] == [t["id"] for t in b[top]]
        for x, y in zip(a[top], b[top], strict=True):
            assert set(x) == set(y) and x["token"] == y["token"]
            assert abs(x[key] - y[key]) < TOL, (x, y)


def test_n_probs_as_llama_server_whole_and_streamed(infer: Server, llama: str) -> None:
    body = {"prompt": PROMPT, "temperature": 0, "n_predict": 6, "n_probs": 5}
    ours = post(infer.url, "/completion", body)
    theirs = post(llama, "/completion", body)
    assert ours["content"] == theirs["content"]
    probs = ours["completion_probabilities"]
    assert len(probs) == 6 and all(len(e["top_logprobs"]) == 5 for e in probs)
    assert "".join(e["token"] for e in probs) == ours["content"]
    assert_same_probs(probs, theirs["completion_probabilities"], "logprob")
    assert ours["generation_settings"]["n_probs"] == 5
    # streamed: each frame carries its own tokens', together the whole answer's
    frames = []
    with httpx.stream("POST", infer.url + "/completion", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    streamed = [e for f in frames if not f["stop"] for e in f["completion_probabilities"]]
    assert_same_probs(streamed, probs, "logprob")
    assert "completion_probabilities" not in frames[-1]  # as llama-server's last frame


def test_post_sampling_probs_at_temperature_0_as_llama_server(infer: Server, llama: str) -> None:
    body = {"prompt": PROMPT, "temperature": 0, "n_predict": 4, "n_probs": 3,
            "post_sampling_probs": True}  # fmt: skip
    ours = post(infer.url, "/completion", body)
    theirs = post(llama, "/completion", body)
    assert_same_probs(ours["completion_probabilities"], theirs["completion_probabilities"], "prob")
    for entry in ours["completion_probabilities"]:  # greedy: the pick is certain
        assert entry["prob"] == 1.0
        assert [(t["id"], t["prob"]) for t in entry["top_probs"]] == [(entry["id"], 1.0)]


def test_post_sampling_probs_sampled_as_llama_server(infer: Server, llama: str) -> None:
    """Temperature 1 with a seed: the same chain (top-k 40, top-p 0.95, min-p 0.05) and the
    same random draws give the same tokens and the probabilities the chain left."""
    body = {"prompt": "Today was the day. Today I would finally become a", "temperature": 1.0,
            "seed": 42, "n_predict": 5, "n_probs": 10, "post_sampling_probs": True}  # fmt: skip
    ours = post(infer.url, "/completion", body)["completion_probabilities"]
    theirs = post(llama, "/completion", body)["completion_probabilities"]
    assert_same_probs(ours, theirs, "prob")
    assert len(ours[0]["top_probs"]) == 10
    for entry in ours:
        assert all(0 < t["prob"] <= 1 for t in entry["top_probs"])
        if len(entry["top_probs"]) < 10:  # fewer left than asked for: they are all there is
            assert math.isclose(sum(t["prob"] for t in entry["top_probs"]), 1, abs_tol=1e-4)


@pytest.mark.parametrize("value", [-1, 101, 2.5, True, "5"])
def test_bad_n_probs_is_a_400(infer: Server, value: Any) -> None:
    error = post(infer.url, "/completion", {"prompt": "Hi", "n_probs": value}, status=400)
    assert error["error"]["param"] == "n_probs"


# --- tuple items ----------------------------------------------------------------------------
def test_tuple_items_schema_as_llama_server(infer: Server, llama: str) -> None:
    """`"items": [schema, ...]` (the tuple form before prefixItems) holds the answer to exactly
    those items, as llama.cpp's converter reads it."""
    schema = {"items": [{"type": "integer"}, {"type": "string"}]}
    fmt = {"type": "json_object", "schema": schema}
    ours = chat(infer.url, response_format=fmt, max_tokens=24).choices[0].message.content
    value = json.loads(ours)
    assert isinstance(value, list) and len(value) == 2
    assert isinstance(value[0], int) and isinstance(value[1], str)
    theirs = chat(llama, response_format=fmt, max_tokens=24).choices[0].message.content
    assert json.loads(theirs) == value


def test_tuple_items_with_counts_is_a_400(infer: Server) -> None:
    fmt = {"type": "json_object", "schema": {"items": [{"type": "integer"}], "maxItems": 3}}
    with pytest.raises(openai.BadRequestError) as e:
        chat(infer.url, response_format=fmt)
    assert "maxItems" in str(e.value)


# --- the scheduler's post-sampling bookkeeping (scripted engine) ----------------------------
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_scheduler_keeps_the_chains_probabilities(temperature: float) -> None:
    model = FakeModel()
    s = Scheduler(model, model.new_context(2, 64, 16))
    options = GenerateOptions(max_tokens=3, logprobs=2, post_sampling_probs=True)
    s.join(BatchRequest(0, list(b"hi"), SamplingParams(temperature=temperature, seed=1), options))
    done = []
    while s.running():
        done.extend(s.step()[0])
    [result] = done
    assert result.logprobs is not None and len(result.logprobs) == 3
    for entry in result.logprobs:
        if temperature == 0:
            assert entry.logprob == 0.0 and [(a.token, a.logprob) for a in entry.top] == [
                (entry.token, 0.0)
            ]
        else:  # the fake's chain: the predicted token and the next, equally likely
            assert math.isclose(entry.logprob, math.log(0.5))
            assert entry.token in [a.token for a in entry.top] and len(entry.top) == 2
