"""`infer run --logprobs N`: the tokens' log-probabilities in the `--json` object (and in each
`--batch` line), through real pipes on the bundled model; the usage errors (exit 2, one line)."""

from __future__ import annotations

import json

import pytest

from .conftest import run_infer

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
        (("--json", "--logprobs", "1", "--remote", "http://127.0.0.1:9"), "--logprobs"),
    ],
)
def test_bad_uses_are_usage_errors(flags: tuple[str, ...], message: str) -> None:
    result = run_infer("run", "smollm2", "hi", *flags)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert result.stdout == b""
