"""`infer serve` end to end: the real command in a subprocess on a loopback port, the bundled
SmolLM2, real sockets, the real `openai` client. (The HTTP rules against a scripted backend are
in tests/test_serve_http.py; the decode thread on the scripted engine in test_server_worker.py.)

Two model processes on 2 cores slow each other down badly (see the README's notes on
concurrency), so the timeouts here are generous and no test asserts a speed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import INFER, run_infer
from .fake_hub import FakeHub, tiny_gguf

CAPITAL = "Which city is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`infer serve ARGS` on a free port; its stderr is collected in `lines`. `command`
    replaces the `infer` script (a Python that patches infer first, for a fault test);
    `preexec` runs in the child before it starts (resource limits)."""

    def __init__(
        self,
        *args: str,
        home: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        assert INFER
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "INFER_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*(command or [INFER]), "serve", *args, "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
            preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_ready(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(f"on {self.url}" in line for line in self.lines):
                return self
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"infer serve exited {self.proc.returncode}: {self.lines}")
            time.sleep(0.05)
        pytest.fail(f"infer serve did not say it was ready: {self.lines}")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=300)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("smollm2", "--parallel", "4", "--ctx-size", "1024", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def stream_raw(url: str, body: dict[str, object]) -> list[str]:
    with (
        httpx.Client(timeout=300) as client,
        client.stream("POST", url, json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def test_chat_answers_as_infer_run_does(server: Server, home: Path) -> None:
    answer = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": CAPITAL}], temperature=0
    )
    text = answer.choices[0].message.content or ""
    assert "Paris" in text
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage and answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    run = run_infer("run", "smollm2", CAPITAL, "--temperature", "0", env={"INFER_HOME": str(home)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == text.strip()


def test_streamed_chat_framing(server: Server) -> None:
    lines = stream_raw(
        server.url + "/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": CAPITAL}],
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
    )
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content)
    assert "Paris" in text
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1


def test_completions_with_the_openai_client(server: Server) -> None:
    client = server.client()
    done = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert done.choices[0].finish_reason == "length"
    assert done.usage and done.usage.completion_tokens == 5
    streamed = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0,
        stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text


def test_n_choices_and_seeds(server: Server) -> None:
    answer = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Tell me a story."}],
        n=3, max_tokens=12, temperature=1.0, seed=7,
    )  # fmt: skip
    assert sorted(c.index for c in answer.choices) == [0, 1, 2]
    assert len({c.message.content for c in answer.choices}) > 1
    assert answer.usage and answer.usage.completion_tokens == 36


def test_concurrent_streams_are_batched_not_queued(server: Server) -> None:
    """Four clients: every one has received tokens before any of them has finished."""
    first_token: dict[int, float] = {}
    finished: dict[int, float] = {}

    def client(i: int) -> None:
        stream = server.client().chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Count from {i} to 100."}],
            max_tokens=48, temperature=0, stream=True, extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and i not in first_token:
                first_token[i] = time.monotonic()
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(first_token) == len(finished) == 4
    assert max(first_token.values()) < min(finished.values())


def test_a_client_that_disconnects_frees_its_slot(home: Path) -> None:
    """One slot: a stream that would run for minutes is dropped after a few tokens; the next
    request gets the slot at once (it would otherwise wait for 4000 tokens)."""
    s = Server("smollm2", "--parallel", "1", "--queue", "1", "--ctx-size", "4096", home=home)
    s.wait_ready()
    try:
        body = {
            "model": "smollm2", "prompt": "Once upon a time", "max_tokens": 4000,
            "ignore_eos": True, "stream": True,
        }  # fmt: skip
        with httpx.Client(timeout=300) as client:
            with client.stream("POST", s.url + "/v1/completions", json=body) as response:
                for n, _ in enumerate(response.iter_lines()):
                    if n >= 6:
                        break
            started = time.monotonic()
            after = s.client().completions.create(
                model="smollm2", prompt="Hello", max_tokens=3, temperature=0
            )
            assert after.choices[0].finish_reason == "length"
            assert time.monotonic() - started < 60  # 4000 tokens would take minutes here
    finally:
        assert s.stop() == 0


def test_queue_overflow_is_503_and_sigterm_finishes_the_answer(home: Path) -> None:
    s = Server("smollm2", "--parallel", "1", "--queue", "1", home=home).wait_ready()
    results: dict[str, object] = {}

    def long_answer() -> None:
        lines = stream_raw(
            s.url + "/v1/completions",
            {"model": "smollm2", "prompt": "Once", "max_tokens": 300, "ignore_eos": True},
        )
        results["long"] = lines

    def queued() -> None:
        with httpx.Client(timeout=300) as client:
            r = client.post(
                s.url + "/v1/completions",
                json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
            )
            results["queued"] = r.status_code

    try:
        t1 = threading.Thread(target=long_answer)
        t1.start()
        _wait_for(lambda: _metric(s, "infer_busy_slots") >= 1)
        t2 = threading.Thread(target=queued)
        t2.start()
        _wait_for(lambda: _metric(s, "infer_queue_depth") >= 1)
        with httpx.Client(timeout=30) as client:
            r = client.post(
                s.url + "/v1/completions", json={"model": "smollm2", "prompt": "x", "max_tokens": 1}
            )
        assert r.status_code == 503
        assert "Retry-After" in r.headers
        assert r.json()["error"]["message"]
        s.proc.send_signal(signal.SIGTERM)  # both answers in flight complete or end cleanly
        t1.join(300)
        t2.join(300)
        lines = results["long"]
        assert isinstance(lines, list) and lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][6:])
        assert last["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        assert s.stop() == 0


def test_models_load_on_demand_and_unload_least_recently_used(
    tmp_path: Path, home: Path, bundled_model: Path
) -> None:
    with FakeHub() as hub:
        hub.add_repo("me/tiny-GGUF", {"tiny-Q8_0.gguf": tiny_gguf(0)})
        pulled = run_infer(
            "pull", "me/tiny-GGUF",
            env={"INFER_HOME": str(tmp_path / "h"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
    s = Server("--max-models", "1", "--ctx-size", "256", home=tmp_path / "h").wait_ready()
    try:
        client = s.client()
        listed = {m.id for m in client.models.list()}
        assert {"me/tiny-GGUF:Q8_0", "smollm2"} <= listed  # cached, none loaded yet
        tiny = client.completions.create(model="me/tiny-GGUF", prompt="hello", max_tokens=2)
        assert tiny.model == "me/tiny-GGUF:Q8_0" and tiny.usage
        assert tiny.usage.completion_tokens <= 2
        small = client.completions.create(model="smollm2", prompt="Hello", max_tokens=2)
        assert small.usage and small.usage.completion_tokens == 2
        assert any("unloaded me/tiny-GGUF" in line for line in s.lines)
        with pytest.raises(openai.NotFoundError) as missing:
            client.completions.create(model="me/not-pulled-GGUF", prompt="x", max_tokens=1)
        assert "infer pull" in str(missing.value)
        with pytest.raises(openai.NotFoundError):  # files only when named at start
            client.completions.create(model=str(bundled_model), prompt="x", max_tokens=1)
    finally:
        assert s.stop() == 0


def test_a_prompt_over_the_context_is_400_with_both_counts(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="smollm2", prompt="word " * 2000, max_tokens=1)
    message = str(e.value)
    assert "1024" in message
    assert re.search(r"the prompt is 2\d\d\d tokens", message), message


def _metric(s: Server, name: str) -> float:
    text = httpx.get(s.url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail("timed out")
