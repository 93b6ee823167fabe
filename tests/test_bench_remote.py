"""`infer bench MODEL --remote URL`: against a real `infer serve smollm2` on loopback (with an API
key, so every happy path also proves the key is sent), the request a measurement sends and the
figures' arithmetic against the stand-in server of test_remote.py and a scripted `ask`, and
every refusal and failure as one line. Timings are never asserted, only that they exist."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infer.runtime.tools.bench import history_path
from infer.runtime.tools.bench_remote import public_url, run_remote_bench, synthetic_prompt

from .conftest import INFER, run_infer
from .test_bench import RESULT_KEYS, SPREAD_KEYS
from .test_remote import StandIn, one_line_error
from .test_remote import standin as standin  # the fixture, shared
from .test_serve import Server, free_port

KEY = "bench-s3cret-key"
SMALL = ("-p", "32", "-n", "16", "-r", "2")
REMOTE_KEYS = {"remote", "prompt_tokens", "generated_tokens"}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bench-remote-home")
    s = Server(
        "smollm2", "--parallel", "1", "--ctx-size", "2048", home=home, env={"INFER_API_KEY": KEY}
    )
    s.wait_ready()
    yield s
    assert s.stop() == 0


def bench(url: str, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[bytes]:
    env = {"INFER_API_KEY": key} if key else {}
    return run_infer("bench", "smollm2", "--remote", url, *args, env=env, timeout=300)


def busy_slots(url: str) -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    match = re.search(r"^infer_busy_slots (\d+)", text, re.M)
    assert match, text
    return int(match.group(1))


# --- against infer serve ------------------------------------------------------------------
def test_table_has_the_local_columns(serve: Server, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    result = bench(serve.url, *SMALL, "--api-key-file", str(key_file), key=None)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert lines[0] == f"model: smollm2 · backend: remote {serve.url}"
    assert re.fullmatch(
        r"\| threads \| gpu layers \| ctx \| batch \| load s \| pp(3\d) tok/s \| TTFT ms "
        r"\| tg16 tok/s \|",
        lines[1],
    ), lines[1]
    number = r"\d+(\.\d+)? ± \d+(\.\d+)?"
    assert re.fullmatch(
        rf"\| - \| - \| - \| - \| - \| {number} \| {number} \| {number} \|", lines[3]
    )
    assert len(lines) == 4


def test_json_fields_counts_and_the_history(serve: Server, infer_home: Path) -> None:
    result = run_infer(
        "bench", "smollm2", *SMALL, "--json", timeout=300,
        env={"INFER_REMOTE": serve.url, "INFER_API_KEY": KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert set(record) == RESULT_KEYS | REMOTE_KEYS
    assert record["model"] == "smollm2" and record["remote"] == serve.url
    assert record["backend"] == f"remote {serve.url}"
    for key in ("model_path", "model_size_bytes", "gpu_offload_supported", "threads",
                "gpu_layers", "layers_total", "ctx_size", "batch_size", "load_s"):  # fmt: skip
        assert record[key] is None, key
    assert (record["n_prompt"], record["n_gen"], record["repetitions"]) == (32, 16, 2)
    assert all(abs(n - 32) <= 3 for n in record["prompt_tokens"]), record["prompt_tokens"]
    assert record["generated_tokens"] == [16, 16]  # ignore_eos: exactly -n
    for key in ("prompt_tokens_per_s", "ttft_s", "generate_tokens_per_s"):
        spread = record[key]
        assert set(spread) == SPREAD_KEYS, key
        assert len(spread["samples"]) == 2 and all(s > 0 for s in spread["samples"]), key

    text = history_path().read_text()
    assert KEY not in text
    (recorded,) = [json.loads(line) for line in text.splitlines()]
    assert recorded == record
    shown = run_infer("bench", "--history")
    assert shown.returncode == 0
    row = shown.stdout.decode().splitlines()[2]
    assert f"| smollm2 | remote {serve.url} | 32/16 | - | - | - | - | - |" in row


def test_skipped_tests_are_null(serve: Server) -> None:
    result = bench(serve.url, "-p", "0", "-n", "1", "-r", "1", "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["prompt_tokens_per_s"] is None and record["ttft_s"] is None
    assert record["generate_tokens_per_s"] is None  # one token: no decode step to time
    assert record["generated_tokens"] == [1]


def test_401_without_the_key_and_with_a_wrong_one(serve: Server) -> None:
    missing = bench(serve.url, *SMALL, key=None)
    assert missing.returncode == 1 and missing.stdout == b""
    assert "401" in one_line_error(missing) and "needs an API key" in missing.stderr.decode()
    wrong = bench(serve.url, *SMALL, "--api-key", "wrong", key=None)
    assert wrong.returncode == 1 and "API key was refused" in one_line_error(wrong)


def test_unknown_model_lists_what_the_remote_has(serve: Server) -> None:
    result = run_infer("bench", "gamma", "--remote", serve.url, env={"INFER_API_KEY": KEY})
    assert result.returncode == 1 and result.stdout == b""
    assert "model 'gamma' not found; the remote has: smollm2" in one_line_error(result)


def test_ctrl_c_closes_the_request_and_exits_130(serve: Server) -> None:
    assert INFER and busy_slots(serve.url) == 0
    proc = subprocess.Popen(
        [INFER, "bench", "smollm2", "--remote", serve.url, "-p", "8", "-n", "1500", "-r", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**_environ(), "INFER_API_KEY": KEY},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while busy_slots(serve.url) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_slots(serve.url) == 1  # the warm-up is generating
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == b""
    # Within 10 s: had the request stayed open, the slot would go on for the rest of the 1500.
    deadline = time.monotonic() + 10
    while busy_slots(serve.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_slots(serve.url) == 0


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


# --- the request, refusals and failures, against the stand-in ------------------------------
def test_each_repetition_is_one_greedy_streamed_completion(standin: str) -> None:
    result = run_infer("bench", "alpha", "--remote", standin, "-p", "40", "-n", "9", "-r", "3")
    assert result.returncode == 0, result.stderr
    assert len(StandIn.seen) == 4  # the warm-up, then -r
    bodies = [seen["body"] for seen in StandIn.seen]
    assert {seen["path"] for seen in StandIn.seen} == {"/v1/completions"}
    for body in bodies:
        assert body["model"] == "alpha" and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (body["temperature"], body["max_tokens"], body["ignore_eos"]) == (0, 9, True)
    firsts = [body["prompt"].split()[0] for body in bodies]
    assert len(set(firsts)) == 4  # no prompt shares a cached prefix with another
    # The stand-in says every prompt is 7 tokens: the timed ones are scaled to come out at 40.
    assert len(bodies[0]["prompt"].split()) == 40
    assert all(len(body["prompt"].split()) == round(40 * 40 / 7) for body in bodies[1:])
    # It generates 2 tokens of the 9 asked for: said, and the header has the real count.
    assert "generated 2 of the 9 tokens" in result.stderr.decode()
    assert "| tg2 tok/s |" in result.stdout.decode()


@pytest.mark.parametrize(
    "flag",
    [("--threads", "2"), ("-ngl", "0"), ("--ctx-size", "512"), ("-b", "8"),
     ("--rpc", "127.0.0.1:50052"), ("-v",)],
)  # fmt: skip
def test_local_only_flags_are_refused(standin: str, flag: tuple[str, ...]) -> None:
    result = run_infer("bench", "alpha", "--remote", standin, *flag)
    assert result.returncode == 2 and result.stdout == b""
    long = {"-ngl": "--gpu-layers", "-b": "--batch-size", "-v": "--verbose"}.get(flag[0], flag[0])
    assert f"{long} does not apply to a remote engine" in one_line_error(result)
    assert StandIn.seen == []


def test_refused_flags_are_named_together(standin: str) -> None:
    result = run_infer("bench", "alpha", "--remote", standin, "-t", "2", "-c", "512")
    assert result.returncode == 2
    assert "--threads, --ctx-size do not apply" in one_line_error(result)


def test_local_only_env_vars_are_ignored(standin: str) -> None:
    # The same settings as flags are refused (above); from the environment, where they may be
    # set for local runs, they are left out: the run goes to the remote, none of them recorded.
    env = {"INFER_THREADS": "3", "INFER_CTX_SIZE": "512", "INFER_REMOTE": standin}
    result = run_infer("bench", "alpha", "-r", "1", "-p", "4", "-n", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["remote"] == standin and record["backend"] == f"remote {standin}"
    assert record["threads"] is None and record["ctx_size"] is None
    assert len(StandIn.seen) == 2  # the warm-up and the one repetition, both to the remote
    assert all(seen["body"]["model"] == "alpha" for seen in StandIn.seen)
    assert "does not apply" not in result.stderr.decode()


def test_remote_flags_need_a_remote() -> None:
    result = run_infer("bench", "smollm2", "--timeout", "3", "--api-key", "k")
    assert result.returncode == 2
    assert "--api-key, --timeout need --remote URL" in one_line_error(result)


def test_unreachable_url_is_one_line() -> None:
    result = run_infer("bench", "alpha", "--remote", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and result.stdout == b""
    assert "connection refused" in one_line_error(result)


def test_timeout(standin: str) -> None:
    StandIn.script = ["slow"]
    result = run_infer("bench", "alpha", "--remote", standin, "--timeout", "0.5")
    assert result.returncode == 1 and "no response within 0.5 s" in one_line_error(result)


def test_bad_counts_are_refused_before_a_request(standin: str) -> None:
    result = run_infer("bench", "alpha", "--remote", standin, "-p", "0", "-n", "0")
    assert result.returncode == 2 and "nothing to measure" in one_line_error(result)
    assert StandIn.seen == []


# --- the runtime, without the CLI or HTTP ---------------------------------------------------
@dataclass
class Answer:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    prompt_tps: float
    generate_tps: float


def test_runtime_api_with_a_scripted_ask() -> None:
    asked: list[tuple[str, int]] = []

    def ask(prompt: str, max_tokens: int) -> Answer:
        asked.append((prompt, max_tokens))
        tokens = len(prompt.split()) + 1  # a BOS
        return Answer(tokens, max_tokens, 0.1 * len(asked), tokens / 0.1, 50.0)

    result = run_remote_bench(ask, "https://user:pw@gpu-box:8000/v1?key=x", "m", 64, 8, 2)
    record = result.as_dict()
    assert record["remote"] == "https://gpu-box:8000/v1" and "pw" not in json.dumps(record)
    assert [n for _, n in asked] == [8, 8, 8]
    assert record["prompt_tokens"] == [64, 64]  # calibrated by the warm-up's 65
    assert record["ttft_s"]["samples"] == pytest.approx([0.2, 0.3])
    assert record["generate_tokens_per_s"]["median"] == 50.0


def test_synthetic_prompts_are_deterministic_and_differ_per_repetition() -> None:
    assert synthetic_prompt(20, 3) == synthetic_prompt(20, 3)
    prompts = [synthetic_prompt(20, rep) for rep in range(-1, 50)]
    assert len({p.split()[0] for p in prompts}) == len(prompts)
    assert all(len(p.split()) == 20 for p in prompts)


def test_public_url_drops_credentials() -> None:
    assert public_url("http://u:p@host:8080/") == "http://host:8080"
    assert public_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
