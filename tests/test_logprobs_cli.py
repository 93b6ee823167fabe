"""`infer run --logprobs N`: the tokens' log-probabilities in the `--json` object (and in each
`--batch` line), through real pipes on the bundled model; the usage errors (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_infer
from .test_serve import Server

QUESTION = "What is the capital of France?"
FLAGS = ("--temperature", "0", "--max-tokens", "8")


def test_run_json_carries_the_tokens_logprobs() -> None:
    result = run_infer("run", "smollm2", QUESTION, *FLAGS, "--json", "--logprobs", "3")
    assert result.returncode == 0, result.stderr.decode()
    answer = json.loads(result.stdout)
    tokens = answer["logprobs"]
    assert len(tokens) == answer["stats"]["generated_tokens"] == 8
    assert "".join(t["token"] for t in tokens) == answer["text"]
    assert bytes(b for t in tokens for b in t["bytes"]).decode() == answer["text"]
    for t in tokens:
        assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 3
        assert t["top_logprobs"][0]["id"] == t["id"]  # greedy: the most likely one
    # the batch scheduler (the server's) gives the same values for the same prompt
    batch = run_infer("run", "smollm2", "--batch", "-", *FLAGS, "--logprobs", "3", input=QUESTION)
    assert batch.returncode == 0, batch.stderr.decode()
    [line] = [json.loads(x) for x in batch.stdout.decode().splitlines()]
    assert line["text"] == answer["text"]
    assert [t["id"] for t in line["logprobs"]] == [t["id"] for t in tokens]
    assert [t["logprob"] for t in line["logprobs"]] == pytest.approx(
        [t["logprob"] for t in tokens], abs=1e-4
    )
    plain = json.loads(run_infer("run", "smollm2", QUESTION, *FLAGS, "--json").stdout)
    assert "logprobs" not in plain and plain["text"] == answer["text"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--logprobs", "2"), "--logprobs goes into the JSON output"),
        (("--json", "--logprobs", "21"), "--logprobs"),
        (("--json", "--logprobs", "-1"), "--logprobs"),
        (("--json", "--logprobs", "1", "--draft", "lookup"), "--draft"),
        (("--json", "--logprobs", "1", "--tool", '{"name": "f"}'), "--tool"),
        (("--logprobs", "1", "--remote", "http://127.0.0.1:9"), "--json"),
    ],
)
def test_bad_uses_are_usage_errors(flags: tuple[str, ...], message: str) -> None:
    result = run_infer("run", "smollm2", "hi", *flags)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert result.stdout == b""


def test_a_remote_batch_is_refused() -> None:
    flags = ("--json", "--logprobs", "1", "--remote", "http://127.0.0.1:9", "--batch", "-")
    result = run_infer("run", "smollm2", *flags, input="hi\n")
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "infer: error: --logprobs with --remote answers one prompt: not with --batch\n"
    )


def test_a_remote_gives_its_logprobs(tmp_path: Path) -> None:
    """`--remote` asks the server (infer serve here) for them: the same tokens and values as
    the local run, in the same JSON; a raw completion through /v1/completions too."""
    server = Server("smollm2", "--parallel", "1", "--ctx-size", "1024", home=tmp_path)
    try:
        server.wait_ready()
        for extra in ((), ("--raw",)):
            args = ("run", "smollm2", QUESTION, *FLAGS, "--json", "--logprobs", "2", *extra)
            local = run_infer(*args)
            remote = run_infer(*args, "--remote", server.url)
            assert local.returncode == 0 and remote.returncode == 0, remote.stderr.decode()
            mine, theirs = json.loads(local.stdout), json.loads(remote.stdout)
            assert theirs["text"] == mine["text"]
            assert [t["token"] for t in theirs["logprobs"]] == [
                t["token"] for t in mine["logprobs"]
            ]
            assert [t["logprob"] for t in theirs["logprobs"]] == pytest.approx(
                [t["logprob"] for t in mine["logprobs"]], abs=1e-4
            )
            assert all(len(t["top_logprobs"]) == 2 for t in theirs["logprobs"])
    finally:
        assert server.stop() == 0
