"""Fill-in-the-middle: `POST /infill`, Ollama's `suffix` and `infer run --suffix` answer
token for token as llama.cpp's own llama-server answers /infill at temperature 0, on tiny
random-weight FIM models (tests/tiny_fim.py): with repo-level tokens (extra files as
[FIM_REP]/[FIM_SEP]) and without (extra files after a snippet line), prefix and suffix cut to
llama-server's budget; and a model without FIM tokens is a 400 naming the field / exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from .conftest import run_infer
from .llama_server import LlamaServer, llama_server_binary
from .test_serve import Server
from .tiny_fim import write_tiny_fim_gguf
from .tiny_gguf import write_tiny_gguf

# The server's context per sequence and batch size, the same on both: llama-server's budget
# for extra context is what the context holds beyond a batch.
CTX, BATCH = "512", "64"

CASES: dict[str, dict[str, Any]] = {
    "extra files": {
        "input_prefix": "def add(a, b):\n    ",
        "input_suffix": "\n    return c\n",
        "input_extra": [
            {"filename": "util.py", "text": "x = 1\n"},
            {"text": "def sub(a, b):\n    return a - b\n"},  # filename: llama-server's "tmp"
        ],
        "prompt": "c",
    },
    # Longer than the batch allows: the prefix keeps its last 48 tokens, the suffix its first
    # 14 (llama-server's 3:1 split of a 64-token batch).
    "prefix and suffix cut": {
        "input_prefix": "import os\n" * 20,
        "input_suffix": "print(1)\n" * 20,
        "input_extra": [{"filename": "f.py", "text": "y = 1\n"}],
    },
    # More extra context than the context holds beyond a batch: its last tokens are kept.
    "extra cut": {
        "input_prefix": "x = ",
        "input_suffix": "\n",
        "input_extra": [{"filename": f"f{i}.py", "text": f"y = {i}\n" * 8} for i in range(8)],
    },
    "no extra": {"input_prefix": "for i in range(", "input_suffix": "):\n    pass\n"},
}


@pytest.fixture(scope="module", params=["repo-level", "plain"])
def fim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fim")
    return write_tiny_fim_gguf(folder / "fim.gguf", repo_level=request.param == "repo-level")


@pytest.fixture(scope="module")
def servers(fim: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    reference = LlamaServer(
        llama_server_binary(), fim, "-c", CTX, "-np", "1", "-b", BATCH, "-ub", BATCH
    )
    home = tmp_path_factory.mktemp("home")
    ours = Server(str(fim), "--parallel", "2", "-c", CTX, "-b", BATCH, home=home).wait_ready()
    try:
        yield reference, ours
    finally:
        reference.stop()
        assert ours.stop() == 0


def _streamed(url: str, body: dict) -> tuple[str, dict]:
    """The content of llama.cpp's native event stream, and its last event."""
    text, last = "", {}
    with httpx.stream("POST", url + "/infill", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
                text += last["content"]
    assert last.get("stop") is True
    return text, last


@pytest.mark.parametrize("case", CASES)
def test_infill_answers_as_llama_server(servers: tuple, case: str) -> None:
    reference, ours = servers
    body = {**CASES[case], "n_predict": 24, "temperature": 0}
    want = reference.post("/infill", body).json()
    got = httpx.post(ours.url + "/infill", json=body, timeout=120).json()
    assert got["content"] == want["content"] and want["tokens_predicted"] == 24
    assert got["tokens_evaluated"] == want["tokens_evaluated"]  # the same prompt, token count
    assert got["tokens_predicted"] == 24 and got["stop_type"] == "limit"
    # llama-server's native object, as /completion answers it: timings and settings included
    assert set(want["timings"]) <= set(got["timings"]) and got["timings"]["predicted_n"] == 24
    assert got["generation_settings"]["n_predict"] == 24 and got["stopping_word"] == ""
    text, last = _streamed(ours.url, body)
    assert text == want["content"]
    assert last["tokens_predicted"] == 24 and last["stop_type"] == "limit"
    assert set(want["timings"]) <= set(last["timings"]) and last["timings"]["predicted_n"] == 24


def test_infill_logit_bias_and_n_probs_as_llama_server(servers: tuple) -> None:
    """/infill reads /completion's logit_bias and n_probs (llama-server's one parser for
    both): the first token banned, the same answer as llama-server's, and each generated
    token's probabilities (the values before sampling: the ban does not change them)."""
    reference, ours = servers
    body = {**CASES["no extra"], "n_predict": 6, "temperature": 0, "n_probs": 3}
    plain = httpx.post(ours.url + "/infill", json=body, timeout=120).json()
    first = plain["completion_probabilities"][0]
    body["logit_bias"] = [[first["id"], False]]
    want = reference.post("/infill", body).json()
    got = httpx.post(ours.url + "/infill", json=body, timeout=120).json()
    assert got["content"] == want["content"] != plain["content"]
    assert got["generation_settings"]["logit_bias"] == [{"bias": None, "token": first["id"]}]
    # (llama-server leaves out tokens that end inside a UTF-8 character, which this random
    # model writes often; infer lists every token, docs/serve.md: compared with itself here)
    probs = got["completion_probabilities"]
    assert len(probs) == got["tokens_predicted"]
    # (an answer cut inside a character ends with U+FFFD that no token's text holds)
    assert got["content"].startswith("".join(e["token"] for e in probs))
    assert all(e["id"] != first["id"] for e in probs)
    before, after = first["top_logprobs"], probs[0]["top_logprobs"]
    assert [t["id"] for t in after] == [t["id"] for t in before]
    assert all(abs(a["logprob"] - b["logprob"]) < 1e-4 for a, b in zip(after, before, strict=True))


def test_ollama_suffix_fills_in_the_middle(servers: tuple, fim: Path) -> None:
    reference, ours = servers
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    want = reference.post(
        "/infill",
        {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 16, "temperature": 0},
    ).json()["content"]
    client = ollama.Client(host=ours.url, timeout=120)
    options = {"temperature": 0, "num_predict": 16}
    assert "insert" in (client.show(str(fim)).capabilities or [])  # Ollama's mark of a FIM model
    got = client.generate(model=str(fim), prompt=prefix, suffix=suffix, options=options)
    assert got.response == want
    pieces = client.generate(
        model=str(fim), prompt=prefix, suffix=suffix, options=options, stream=True
    )
    assert "".join(str(p.response) for p in pieces) == want


def test_infer_run_suffix_answers_as_llama_server(fim: Path) -> None:
    """`infer run` fills in the middle through the same builder, with its own context and
    batch (here 256 and 512): llama-server started with the same answers the same."""
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    reference = LlamaServer(llama_server_binary(), fim, "-c", "256", "-np", "1", "-b", "512")
    try:
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 20, "temperature": 0}
        want = reference.post("/infill", body).json()["content"]
    finally:
        reference.stop()
    result = run_infer(
        "run", str(fim), prefix, "--suffix", suffix, "--temperature", "0", "--max-tokens", "20",
        "--ctx-size", "256", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["text"] == want
    # The prefix may come on stdin, as a prompt does.
    piped = run_infer(
        "run", str(fim), "--suffix", suffix, "--temperature", "0", "--max-tokens", "20",
        "--ctx-size", "256", "--json", input=prefix,
    )  # fmt: skip
    assert json.loads(piped.stdout)["text"] == want


def test_a_model_without_fim_tokens_is_refused(tmp_path: Path) -> None:
    plain = write_tiny_gguf(tmp_path / "plain.gguf", template=None)
    result = run_infer("run", str(plain), "x = ", "--suffix", "\n")
    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert "--suffix" in line and "fill-in-the-middle" in line
    for flags in (["--system", "s"], ["--batch", "-"]):
        bad = run_infer("run", str(plain), "x", "--suffix", "y", *flags)
        assert bad.returncode == 2 and "--suffix does not combine" in bad.stderr.decode()
    s = Server(str(plain), "-c", "256", home=tmp_path / "home").wait_ready()
    try:
        r = httpx.post(s.url + "/infill", json={"input_prefix": "a", "input_suffix": "b"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_suffix"
        assert "fill-in-the-middle" in r.json()["error"]["message"]
        assert "insert" not in (ollama.Client(host=s.url).show(str(plain)).capabilities or [])
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=s.url).generate(model=str(plain), prompt="a", suffix="b")
        assert refused.value.status_code == 400 and "suffix" in refused.value.error
        for body, field in [
            ({"input_suffix": "b"}, "input_prefix"),
            ({"input_prefix": "a", "input_suffix": 3}, "input_suffix"),
            (
                {"input_prefix": "a", "input_suffix": "b", "input_extra": [{"x": 1}]},
                "input_extra[0]",
            ),
            ({"input_prefix": "a", "input_suffix": "b", "n_predict": "9"}, "n_predict"),
            ({"input_prefix": "a", "input_suffix": "b", "temperature": -1}, "temperature"),
            ({"input_prefix": "a", "input_suffix": "b", "stop": [1]}, "stop"),
            ({"input_prefix": "a", "input_suffix": "b", "stop": ["x"] * 17}, "stop"),
            ({"input_prefix": "a", "input_suffix": "b", "stream": "yes"}, "stream"),
        ]:
            r = httpx.post(s.url + "/infill", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    finally:
        assert s.stop() == 0
