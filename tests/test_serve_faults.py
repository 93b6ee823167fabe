"""One bad request stays one bad request (issue 25, item 4), against the real `infer serve`:
a cached model whose file llama.cpp aborts on, asked for while another client's answer streams;
request values thrown at every door by hypothesis (token ids, lengths, counts); a decode that
llama.cpp refuses; the disk filling during a prompt-cache save; and the line an abort that no
check foresaw still prints. Each time the failing request gets its door's error and everyone
else gets their answer from the same process.

The decode error and the unforeseen abort need a fault infer guards against: the server runs
under a Python that removes one check first (`PATCHED`), as a missed check would."""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import run_infer
from .fake_hub import FakeHub, tiny_gguf
from .test_probe import duplicated_vocabulary
from .test_serve import Server

PROMPT = "Once upon a time, in a land far away, there lived"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding two pulled models: a good one and one llama.cpp asserts on."""
    home = tmp_path_factory.mktemp("faults-home")
    bad = duplicated_vocabulary(tmp_path_factory.mktemp("dup") / "dup.gguf").read_bytes()
    with FakeHub() as hub:
        hub.add_repo("me/dup-GGUF", {"dup-Q8_0.gguf": bad})
        hub.add_repo("me/tiny-GGUF", {"tiny-Q8_0.gguf": tiny_gguf(0)})
        env = {"INFER_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        for repo in ("me/dup-GGUF", "me/tiny-GGUF"):
            pulled = run_infer("pull", repo, env=env)
            assert pulled.returncode == 0, pulled.stderr
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("smollm2", "--parallel", "2", "--ctx-size", "512", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def streamed(client: openai.OpenAI, max_tokens: int) -> Iterator[Any]:
    return iter(
        client.completions.create(
            model="smollm2", prompt=PROMPT, max_tokens=max_tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )
    )  # fmt: skip


def finish(chunks: Iterator[Any], first: Any) -> tuple[str, str | None]:
    """The streamed text (from `first` on) and its finish reason."""
    got = [first, *chunks]
    text = "".join(c.choices[0].text for c in got if c.choices)
    return text, next((c.choices[0].finish_reason for c in reversed(got) if c.choices), None)


def test_a_model_llama_cpp_aborts_on_fails_alone_while_others_stream(server: Server) -> None:
    client = server.client()
    chunks = streamed(client, 40)
    first = next(chunks)  # another client's answer is under way
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="me/dup-GGUF", prompt="hi", max_tokens=2)
    message = str(e.value)
    assert "me/dup-GGUF" in message and "GGML_ASSERT" in message, message
    assert "may be damaged" in message, message
    text, reason = finish(chunks, first)
    assert reason == "length"
    alone = client.completions.create(
        model="smollm2", prompt=PROMPT, max_tokens=40, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert text == alone.choices[0].text  # undisturbed
    # Ollama's door: its own error shape (the verdict was kept: tests/test_probe.py).
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": "me/dup-GGUF", "prompt": "hi", "stream": False},
        timeout=120,
    )
    assert r.status_code == 500 and "GGML_ASSERT" in r.json()["error"], r.text
    assert any("me/dup-GGUF" in ln and "was not loaded" in ln for ln in server.lines)
    # A good model loads on demand as before.
    tiny = client.completions.create(model="me/tiny-GGUF", prompt="hello", max_tokens=2)
    assert tiny.usage is not None and tiny.usage.completion_tokens <= 2
    assert server.proc.poll() is None


# -- request values that could reach an assert or a C++ exception ---------------------------------

IDS = st.lists(
    st.one_of(st.integers(0, 49151), st.integers(-(2**40), 2**40), st.sampled_from([-1, 49152])),
    max_size=6,
)
# Lengths to generate: around 0 and past every bound, never unlimited (-1, absent), so that
# each example answers in a few tokens.
SMALL = st.one_of(st.integers(-3, 4).filter(lambda n: n != -1), st.integers(2**31 - 2, 2**63))
COUNTS = st.one_of(st.integers(-3, 30), st.integers(2**31 - 2, 2**40), st.none())
WINDOW = st.one_of(st.integers(-3, 600), st.integers(2**31 - 2, 2**63))


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A path and a body whose values are drawn around every bound llama.cpp has."""
    kind = draw(st.sampled_from(["completion", "v1", "detok", "tok", "embed", "chat", "infill"]))
    if kind == "completion":
        return "/completion", {"prompt": draw(IDS), "n_predict": draw(SMALL)}
    if kind == "v1":
        prompt = draw(st.one_of(IDS, st.lists(IDS, max_size=3)))
        body = {"prompt": prompt, "max_tokens": draw(SMALL), "logprobs": draw(COUNTS)}
        return "/v1/completions", {"model": "smollm2", **body}
    if kind == "detok":
        return "/detokenize", {"tokens": draw(IDS)}
    if kind == "tok":
        return "/tokenize", {"content": draw(st.text(max_size=20)), "with_pieces": True}
    if kind == "embed":
        return "/v1/embeddings", {"model": "smollm2", "input": [draw(IDS)]}
    if kind == "chat":
        top = draw(COUNTS)
        return "/v1/chat/completions", {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": draw(SMALL),
            "logprobs": top is not None,
            "top_logprobs": top,
            "top_k": draw(COUNTS),
            "repeat_last_n": draw(WINDOW),
            "repeat_penalty": draw(st.floats(0.5, 2)),
            "n": draw(st.integers(-1, 3)),
            "lora": [{"id": draw(st.integers(-2, 2**40)), "scale": draw(st.floats(-2, 2))}],
        }
    extra = st.fixed_dictionaries({"filename": st.text(max_size=5), "text": st.text(max_size=20)})
    return "/infill", {
        "input_prefix": "def f(",
        "input_suffix": ")",
        "input_extra": draw(st.lists(extra, max_size=2)),
        "n_predict": draw(SMALL),
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_request_values_never_reach_an_abort(server: Server, request: Any) -> None:
    path, body = request
    r = httpx.post(server.url + path, json=_drop_none(body), timeout=120)
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert "error" in r.json(), r.text  # the door's own shape
    assert server.proc.poll() is None, server.lines[-5:]


def test_values_llama_cpp_would_crash_or_allocate_on_are_bounded_first(server: Server) -> None:
    """A grammar nested past llama.cpp's recursion (it crashed on 30,000 groups) is a 400
    naming the field; a penalty window of 2**31 - 1 tokens, which llama.cpp would allocate
    (8 GB), is the sequence's context."""
    deep = "root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000
    r = httpx.post(server.url + "/completion", json={"prompt": "x", "grammar": deep}, timeout=60)
    assert r.status_code == 400 and "grammar" in r.text and "at most" in r.text, r.text
    body = {
        "model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
        "repeat_last_n": 2**31 - 1, "repeat_penalty": 1.1,
    }  # fmt: skip
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    assert server.proc.poll() is None


# -- a decode llama.cpp refuses, and an abort no check foresaw ------------------------------------

PATCHED = """
import runpy, sys
import infer.runtime.server.pool as pool
import infer.runtime.server.worker as worker

pool.check_ids = lambda *a: None  # a missed check: llama_decode refuses the token itself
step = worker.ModelWorker._step

def _step(self):
    if any("ABORT-HERE" in job.options.stop for job in self._running):
        from infer.runtime.llama.bindings import bindings
        bindings()._lib.ggml_abort(b"planted.cpp", 1, b"GGML_ASSERT(%s) failed", b"planted")
    step(self)

worker.ModelWorker._step = _step
sys.argv = ["infer", *sys.argv[1:]]
runpy.run_module("infer", run_name="__main__")
"""


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("patched-home")
    s = Server(
        "smollm2", "--parallel", "2", "--ctx-size", "512", home=home,
        command=[sys.executable, "-c", PATCHED],
    ).wait_ready()  # fmt: skip
    yield s
    s.stop()


def test_a_decode_llama_cpp_refuses_fails_that_request_only(patched: Server) -> None:
    client = patched.client()
    chunks = streamed(client, 40)
    first = next(chunks)
    ids = httpx.post(patched.url + "/tokenize", json={"content": "Hello"}, timeout=60).json()
    bad = {"prompt": [*ids["tokens"], 10**6], "n_predict": 4}
    r = httpx.post(patched.url + "/completion", json=bad, timeout=120)
    assert r.status_code == 500, r.text
    assert "could not decode this request" in r.json()["error"]["message"], r.text
    text, reason = finish(chunks, first)
    assert reason == "length" and text
    again = client.completions.create(model="smollm2", prompt="Hello", max_tokens=3)
    assert again.usage is not None and again.usage.completion_tokens == 3
    assert patched.proc.poll() is None


def test_an_unforeseen_abort_names_the_request_and_model(patched: Server) -> None:
    """Last in the module: this one ends the server, as llama.cpp's abort must."""
    r: list[httpx.Response] = []

    def ask() -> None:
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 4, "stop": ["ABORT-HERE"]}
        with contextlib.suppress(httpx.HTTPError):
            r.append(httpx.post(patched.url + "/v1/completions", json=body, timeout=120))

    asker = threading.Thread(target=ask)
    asker.start()
    assert patched.proc.wait(120) == 1
    asker.join(60)
    assert not r  # no answer: the process is gone
    patched._reader.join(5)
    last = patched.lines[-1]
    assert last.startswith("infer: error: llama.cpp failed while decoding requests req_"), last
    assert "of smollm2: GGML_ASSERT(planted) failed" in last, last


# -- the disk filling during a prompt-cache save ---------------------------------------------------


def small_files_only() -> None:
    """In the server's process: files past 1 MB cannot grow (EFBIG, as a full disk's ENOSPC
    fails a write), and the signal the kernel sends for it is ignored, as a server's is not
    killed by a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_prompt_cache_save_the_disk_refuses_still_answers(tmp_path: Path) -> None:
    s = Server(
        "smollm2", "--parallel", "1", "--ctx-size", "512", home=tmp_path,
        env={"INFER_PROMPT_CACHE_MIN_TOKENS": "8"}, preexec=small_files_only,
    ).wait_ready()  # fmt: skip
    try:
        client = s.client()
        cache = tmp_path / "cache" / "prompt-cache"

        def entries() -> list[Path]:
            return sorted(p for p in cache.rglob("*") if p.is_file())

        # ~20 tokens of SmolLM2's KV cells (~23 KB each) fit under the limit: saved.
        short = client.completions.create(
            model="smollm2", prompt=PROMPT + " a king.", max_tokens=3, temperature=0
        )
        assert short.usage is not None and short.usage.completion_tokens == 3
        saved = entries()
        assert len(saved) == 1 and not saved[0].name.startswith("."), saved
        # ~120 tokens do not: the write fails, the answer comes, nothing half-written stays.
        long_prompt = " ".join([PROMPT] * 10)
        answer = client.completions.create(
            model="smollm2", prompt=long_prompt, max_tokens=3, temperature=0
        )
        assert answer.usage is not None and answer.usage.prompt_tokens > 100
        assert answer.usage.completion_tokens == 3 and answer.choices[0].text
        assert entries() == saved
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0


# -- sizes llama.cpp asserts on when it makes a context ---------------------------------------


def test_more_sequences_than_a_batch_holds_is_a_usage_error_not_an_abort(tmp_path: Path) -> None:
    """llama.cpp reserves an output per sequence within a batch's outputs and GGML_ASSERTs
    when a context has more sequences than batch rows (checked: exit 1 with its assert line)."""
    s = Server("smollm2", "--parallel", "32", "--ctx-size", "16", home=tmp_path)
    assert s.proc.wait(120) == 2
    s.stop()
    errors = [ln for ln in s.lines if ln.startswith("infer: error:")]
    assert errors == [
        "infer: error: --parallel must be at most the batch size, 16 tokens here (got 32)"
    ], s.lines


def test_embeddings_with_a_context_under_256_tokens(tmp_path: Path) -> None:
    """The embeddings context packs up to 256 inputs per batch; with fewer tokens per batch
    llama.cpp asserted on the first embeddings request, ending the server."""
    from .tiny_gguf import write_tiny_bert_gguf

    model = write_tiny_bert_gguf(tmp_path / "bert.gguf")
    s = Server(str(model), "--ctx-size", "128", home=tmp_path / "home").wait_ready()
    try:
        r = httpx.post(
            s.url + "/v1/embeddings", json={"input": ["one", "two"], "model": ""}, timeout=120
        )
        assert r.status_code == 200, r.text
        assert [len(d["embedding"]) > 0 for d in r.json()["data"]] == [True, True]
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0
