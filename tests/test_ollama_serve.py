"""Ollama's native API end to end: the real `infer serve` in a subprocess with the bundled
SmolLM2 (loaded on demand, so keep_alive may unload it) and a fake Hub (for /api/pull), driven
with the official `ollama` client. No test depends on one model answer: the Ollama door's text
is compared with /v1/chat/completions' for the same conversation."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import ollama
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .fake_hub import FakeHub, tiny_gguf
from .test_serve import Server

QUESTION = [{"role": "user", "content": "Name three colours."}]
TINY = tiny_gguf(3)


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo("me/tiny-GGUF", {"tiny-Q8_0.gguf": TINY})
        yield h


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("ollama-home")
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    s = Server(
        "--ctx-size", "1024", "--allow-pull", "--allow-delete", home=home, env=env
    ).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=300)


def openai_text(server: Server, messages: list[dict[str, str]], n: int) -> str:
    # The same plain dicts the Ollama client is given, as a user would pass them.
    typed = cast("list[ChatCompletionMessageParam]", messages)
    answer = server.client().chat.completions.create(
        model="smollm2", messages=typed, temperature=0, max_tokens=n
    )
    text = answer.choices[0].message.content or ""
    assert text.strip()  # a comparison with nothing would prove nothing
    return text


def test_chat_and_generate_say_what_openai_chat_says(server: Server, client: ollama.Client) -> None:
    options = {"temperature": 0, "num_predict": 12}
    want = openai_text(server, QUESTION, 12)
    whole = client.chat(model="smollm2:latest", messages=QUESTION, options=options)
    assert whole.message.content == want
    assert (
        whole.done and whole.done_reason in ("stop", "length") and whole.model == "smollm2:latest"
    )
    assert whole.eval_count and 0 < whole.eval_count <= 12 and whole.prompt_eval_count
    assert whole.total_duration and whole.total_duration >= (whole.eval_duration or 0) > 0
    parts = list(client.chat(model="smollm2", messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == want
    assert [p.done for p in parts][-1] is True and parts[-1].eval_count == whole.eval_count
    generated = client.generate(model="smollm2", prompt=QUESTION[0]["content"], options=options)
    assert generated.response == want


def test_generate_with_a_system_prompt_and_a_schema(server: Server, client: ollama.Client) -> None:
    system = "Answer in one word."
    messages = [{"role": "system", "content": system}, *QUESTION]
    want = openai_text(server, messages, 8)
    options = {"temperature": 0, "num_predict": 8}
    got = client.generate(
        model="smollm2", prompt=QUESTION[0]["content"], system=system, options=options
    )
    assert got.response == want
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    held = client.generate(
        model="smollm2", prompt="A number?", format=schema, options={"num_predict": 24}
    )
    assert (held.response or "").lstrip().startswith("{")


def test_tools_are_offered_and_answered(client: ollama.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat(model="smollm2", messages=ask, tools=[tool], options={"num_predict": 40})
    for call in answer.message.tool_calls or []:  # the model may or may not call
        assert call.function.name == "weather" and isinstance(call.function.arguments, dict)
    sent = {"function": {"name": "weather", "arguments": {"city": "Paris"}}}
    turns: list[dict[str, Any]] = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [sent]},
        {"role": "tool", "content": "sunny, 21 C", "tool_name": "weather"},
    ]
    after = client.chat(model="smollm2", messages=turns, tools=[tool], options={"num_predict": 8})
    assert after.done


def test_embed_as_v1_embeddings_does(server: Server, client: ollama.Client) -> None:
    texts = ["the cat sat", "hello world"]
    got = client.embed(model="smollm2", input=texts)
    assert len(got.embeddings) == 2 and got.prompt_eval_count
    want = server.client().embeddings.create(model="smollm2", input=texts)
    for mine, theirs in zip(got.embeddings, want.data, strict=True):
        assert mine == pytest.approx(theirs.embedding, abs=1e-5)
    legacy = client.embeddings(model="smollm2", prompt="hello world")
    assert list(legacy.embedding) == pytest.approx(list(got.embeddings[1]), abs=1e-5)


def test_tags_show_and_ps_have_the_fields_clients_need(
    server: Server, client: ollama.Client, bundled_model: Path
) -> None:
    raw = httpx.get(server.url + "/api/tags", timeout=60).json()["models"]
    smol = next(m for m in raw if m["name"] == "smollm2:latest")
    for key in ("name", "model", "modified_at", "digest"):  # Zed: required strings
        assert isinstance(smol[key], str) and smol[key]
    for key in ("format", "family", "parameter_size", "quantization_level"):
        assert isinstance(smol["details"][key], str) and smol["details"][key]
    assert smol["size"] == bundled_model.stat().st_size
    assert smol["digest"] == hashlib.sha256(bundled_model.read_bytes()).hexdigest()
    assert smol["details"]["family"] == "llama" and smol["details"]["parameter_size"] == "135M"
    assert "smollm2:latest" in {m.model for m in client.list().models}
    shown = client.show("smollm2:latest")  # Copilot's reads
    assert shown.modelinfo and shown.modelinfo["llama.context_length"] == 8192
    assert shown.capabilities and {"completion", "tools"} <= set(shown.capabilities)
    client.generate(model="smollm2", prompt="hi", options={"num_predict": 1})
    (loaded,) = [m for m in client.ps().models if m.model == "smollm2:latest"]
    assert loaded.context_length == 1024 and loaded.expires_at is not None
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nothing-here")
    assert e.value.status_code == 404


def test_an_ollama_chat_and_an_openai_chat_together(server: Server, client: ollama.Client) -> None:
    """Both doors on one batch: each answers as it does alone."""
    want = openai_text(server, QUESTION, 16)
    got: dict[str, str] = {}

    def ollama_side() -> None:
        options = {"temperature": 0, "num_predict": 16}
        got["ollama"] = (
            client.chat(model="smollm2", messages=QUESTION, options=options).message.content or ""
        )

    thread = threading.Thread(target=ollama_side)
    thread.start()
    got["openai"] = openai_text(server, QUESTION, 16)
    thread.join(300)
    assert got == {"ollama": want, "openai": want}


def test_pull_list_and_delete(server: Server, client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull("hf.co/me/tiny-GGUF:Q8_0", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    tiny = next(m for m in client.list().models if m.model == "me/tiny-GGUF:Q8_0")
    assert tiny.digest == hashlib.sha256(TINY).hexdigest() and tiny.size == len(TINY)
    assert client.delete("me/tiny-GGUF:Q8_0").status == "success"
    assert "me/tiny-GGUF:Q8_0" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("me/tiny-GGUF:Q8_0")
    assert e.value.status_code == 404


def test_keep_alive_zero_unloads(server: Server, client: ollama.Client) -> None:
    client.generate(model="smollm2", prompt="hi", options={"num_predict": 1}, keep_alive="10m")
    assert any(m.model == "smollm2:latest" for m in client.ps().models)
    assert client.generate(model="smollm2", keep_alive=0).done_reason == "unload"
    deadline = time.monotonic() + 60
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.ps().models
    assert any("unloaded smollm2" in line for line in server.lines)
    assert client.generate(model="smollm2").done_reason == "load"  # loads again
    assert any(m.model == "smollm2:latest" for m in client.ps().models)
