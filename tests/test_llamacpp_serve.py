"""llama-server's own API on `infer serve`, end to end: the real command on a loopback port,
the bundled SmolLM2, real HTTP. /tokenize, /detokenize, /apply-template and the native
/completion are compared with llama.cpp's llama-server on the same model (temperature 0 for
the text); a request that names no model gets the first model named at start on every door
that allows it (Ollama's API requires one, as Ollama does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .llama_server import post_json as post
from .llama_server import running_infer_server, running_llama_server
from .test_serve import Server

GREEDY = {"temperature": 0}
PROMPT = "I believe the meaning of life is"
TEXTS = [
    "What is the capital of France ?",
    "This is a test string with unicode 媽 and emoji 🤗",
    "  spaces\tand\nnew lines  ",
    "<|im_start|>user\nmarkup<|im_end|>",
]
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is today?"}],
    [
        {"role": "system", "content": "You are a geography teacher."},
        {"role": "user", "content": "Name a large river."},
        {"role": "assistant", "content": "The Nile."},
        {"role": "user", "content": "Where does it flow?"},
    ],
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("llamacpp-home"))


@pytest.fixture(scope="module")
def llama_server(bundled_model: Path) -> Iterator[str]:
    yield from running_llama_server(bundled_model, "-c", "1024", "-np", "1", "--jinja")


# --- tokens, compared with llama-server -----------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_as_llama_server(server: Server, llama_server: str, text: str) -> None:
    for flags in ({}, {"add_special": True}, {"with_pieces": True}, {"parse_special": False}):
        body = {"content": text, **flags}
        ours = post(server.url, "/tokenize", body)
        assert ours == post(llama_server, "/tokenize", body), flags
        assert ours["tokens"]
    ids = post(server.url, "/tokenize", {"content": text})["tokens"]
    back = post(server.url, "/detokenize", {"tokens": ids})
    assert back == post(llama_server, "/detokenize", {"tokens": ids})
    assert back["content"] == text


def test_a_partial_character_piece_is_its_bytes(server: Server, llama_server: str) -> None:
    body = {"content": "emoji 🤗 媽", "with_pieces": True}
    ours = post(server.url, "/tokenize", body)
    assert ours == post(llama_server, "/tokenize", body)


def test_token_errors_are_400s_naming_the_field(server: Server) -> None:
    error = post(server.url, "/detokenize", {"tokens": [10**9]}, 400)["error"]
    assert "outside the vocabulary" in error["message"]
    assert post(server.url, "/detokenize", {"tokens": "12"}, 400)["error"]["param"] == "tokens"
    assert post(server.url, "/tokenize", {"content": 5}, 400)["error"]["param"] == "content"
    assert post(server.url, "/tokenize", {}) == {"tokens": []}  # as llama-server answers


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_apply_template_as_llama_server(
    server: Server, llama_server: str, messages: list[dict[str, str]]
) -> None:
    ours = post(server.url, "/apply-template", {"messages": messages})
    assert ours == post(llama_server, "/apply-template", {"messages": messages})
    assert ours["prompt"].endswith("<|im_start|>assistant\n")
    bare = {"messages": messages, "add_generation_prompt": False}
    plain = post(server.url, "/apply-template", bare)
    assert plain == post(llama_server, "/apply-template", bare)
    assert plain["prompt"] + "<|im_start|>assistant\n" == ours["prompt"]
    error = post(server.url, "/apply-template", {"messages": "hi"}, 400)["error"]
    assert error["param"] == "messages"


# --- /completion ----------------------------------------------------------------------------
def test_completion_as_llama_server(server: Server, llama_server: str) -> None:
    body = {"prompt": PROMPT, "n_predict": 16, **GREEDY}
    ours = post(server.url, "/completion", body)
    theirs = post(llama_server, "/completion", body)
    assert ours["content"] == theirs["content"] and ours["content"]
    for key in ("stop", "stop_type", "tokens_predicted", "tokens_evaluated", "has_new_line"):
        assert ours[key] == theirs[key], key
    assert set(theirs["timings"]) >= set(ours["timings"]) - {"cache_n"}
    assert ours["timings"]["predicted_n"] == 16
    assert ours["timings"]["prompt_n"] == ours["tokens_evaluated"]
    assert ours["generation_settings"]["n_predict"] == 16
    # The same through /completions (llama-server's native route too) and /v1/completions.
    assert post(server.url, "/completions", body)["content"] == ours["content"]
    v1 = post(server.url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, **GREEDY})
    assert v1["choices"][0]["text"] == ours["content"]


def test_completion_stream(server: Server) -> None:
    body = {"prompt": PROMPT, "n_predict": 12, "stream": True, **GREEDY}
    frames = []
    with httpx.stream("POST", server.url + "/completion", json=body, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    *pieces, last = frames
    assert pieces and all(f["stop"] is False for f in pieces)
    assert last["stop"] is True and last["stop_type"] == "limit"
    assert last["timings"]["predicted_n"] == 12
    whole = post(server.url, "/completion", {**body, "stream": False})
    assert "".join(f["content"] for f in pieces) == whole["content"]


def test_token_prompts_and_stop_types(server: Server) -> None:
    text = post(server.url, "/completion", {"prompt": PROMPT, "n_predict": 10, **GREEDY})
    ids = post(server.url, "/tokenize", {"content": PROMPT, "add_special": True})["tokens"]
    by_ids = post(server.url, "/completion", {"prompt": ids, "n_predict": 10, **GREEDY})
    assert by_ids["content"] == text["content"]
    split = len(PROMPT) // 2
    head = post(server.url, "/tokenize", {"content": PROMPT[:split]})["tokens"]
    mixed = [*head, PROMPT[split:]]  # ids then text: tokenized apart, as llama.cpp does
    assert post(server.url, "/completion", {"prompt": mixed, "n_predict": 2})["stop"] is True
    word = text["content"].split()[1]
    stopped = post(
        server.url, "/completion", {"prompt": PROMPT, "n_predict": 10, "stop": [word], **GREEDY}
    )
    assert stopped["stop_type"] == "word" and stopped["stopping_word"] == word
    assert word not in stopped["content"]
    several = post(server.url, "/completion", {"prompt": [PROMPT, "Once"], "n_predict": 3})
    assert [r["index"] for r in several] == [0, 1]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1, {"x": 1}]}, "prompt"),
        ({"prompt": "x", "n_predict": -2}, "n_predict"),
        ({"prompt": "x", "n_predict": "8"}, "n_predict"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "model": 3}, "model"),
        ({"prompt": [10**9]}, ""),
    ],
)
def test_completion_errors_are_400s(server: Server, fields: dict[str, Any], param: str) -> None:
    error = post(server.url, "/completion", fields, 400)["error"]
    if param:
        assert error["param"] == param
    else:
        assert "outside the vocabulary" in error["message"]


# --- the served model by default, the paths without /v1 -------------------------------------
def test_a_request_without_a_model_gets_the_one_named_at_start(server: Server) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    for path in ("/v1/chat/completions", "/chat/completions"):
        answer = post(server.url, path, chat)
        assert answer["model"] == "smollm2" and answer["choices"][0]["message"]["content"]
        assert answer["timings"]["predicted_n"] == answer["usage"]["completion_tokens"]
    answer = post(server.url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
    assert answer["model"] == "smollm2"
    answer = post(server.url, "/v1/responses", {"input": "Hi", "max_output_tokens": 16})
    assert answer["model"] == "smollm2" and answer["status"] in ("completed", "incomplete")
    answer = post(server.url, "/v1/messages", {"max_tokens": 4, "messages": chat["messages"]})
    assert answer["model"] == "smollm2" and answer["content"]
    # A name the server does not know stays a 404 unless --any-model-name.
    missing = post(server.url, "/v1/chat/completions", {**chat, "model": "gpt-3.5-turbo"}, 404)
    assert missing["error"]["param"] == "model"
    # Ollama's API requires a model, as Ollama does.
    r = httpx.post(server.url + "/api/chat", json={"messages": chat["messages"]}, timeout=60)
    assert r.status_code == 400 and "model" in r.json()["error"]


def test_paths_without_v1(server: Server) -> None:
    assert httpx.get(server.url + "/v1/health").json() == {"status": "ok"}
    listed = httpx.get(server.url + "/models").json()
    assert listed == httpx.get(server.url + "/v1/models").json()
    assert "smollm2" in [m["id"] for m in listed["data"]]
    props = httpx.get(server.url + "/props").json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 1024


def test_any_model_name_answers_unknown_names(tmp_path: Path) -> None:
    s = Server("smollm2", "--parallel", "1", "--ctx-size", "512", "--any-model-name",
               home=tmp_path).wait_ready()  # fmt: skip
    try:
        chat = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}]}
        answer = post(s.url, "/v1/chat/completions", {**chat, "max_tokens": 3})
        assert answer["model"] == "smollm2"
        assert s.client().completions.create(model="davinci-002", prompt=PROMPT, max_tokens=3)
    finally:
        assert s.stop() == 0


# --- llama.cpp's extensions on the OpenAI doors ---------------------------------------------
def test_grammar_json_schema_and_token_count_on_chat(server: Server) -> None:
    chat = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8}
    fives = post(server.url, "/chat/completions", {**chat, "grammar": 'root ::= "a"{5,5}'})
    assert fives["choices"][0]["message"]["content"] == "aaaaa"
    bad = post(server.url, "/chat/completions", {**chat, "grammar": "root ::= (oops"}, 400)
    assert bad["error"]["param"] == "grammar"
    fmt = {"type": "json_object", "schema": {"const": "42"}}
    held = post(server.url, "/v1/chat/completions", {**chat, "response_format": fmt})
    assert held["choices"][0]["message"]["content"] == '"42"'
    schema = post(server.url, "/v1/chat/completions", {**chat, "json_schema": {"const": "7"}})
    assert schema["choices"][0]["message"]["content"] == '"7"'
    counted = post(server.url, "/chat/completions/input_tokens", chat)
    assert counted == {"input_tokens": fives["usage"]["prompt_tokens"]}


def test_streamed_chat_role_chunk_and_timings(server: Server) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all(c["choices"][0]["delta"].get("content") != "" for c in chunks if c["choices"])
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["timings"]["predicted_n"] == 4


def test_completion_prompt_object_response_fields_and_responses_path(server: Server) -> None:
    body = {"prompt": {"prompt_string": PROMPT}, "n_predict": 4, **GREEDY}
    plain = post(server.url, "/completion", {**body, "prompt": PROMPT})
    assert post(server.url, "/completion", body)["content"] == plain["content"]
    fields = ["content", "generation_settings/n_predict", "timings/predicted_n"]
    picked = post(server.url, "/completion", {**body, "response_fields": fields})
    assert picked == {
        "content": plain["content"],
        "generation_settings/n_predict": 4,
        "timings/predicted_n": 4,
    }
    media = {"prompt_string": "x", "multimodal_data": ["aGk="]}
    assert post(server.url, "/completion", {"prompt": media}, 400)["error"]["param"] == "prompt"
    answer = post(server.url, "/responses", {"input": "Hi", "max_output_tokens": 16})
    assert answer["object"] == "response"


def test_v1_completions_take_token_ids(server: Server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 6, **GREEDY}
    text = post(server.url, "/v1/completions", body)["choices"][0]["text"]
    ids = post(server.url, "/tokenize", {"content": PROMPT, "add_special": True})["tokens"]
    one = post(server.url, "/v1/completions", {**body, "prompt": ids})
    assert one["choices"][0]["text"] == text
    two = post(server.url, "/v1/completions", {**body, "prompt": [ids, ids]})
    assert [c["text"] for c in two["choices"]] == [text, text]
