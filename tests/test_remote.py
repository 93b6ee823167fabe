"""`--remote URL`: `infer run`, `infer chat`, `--batch` and `infer list` against real servers on
loopback — `infer serve smollm2` and llama.cpp's own llama-server with the bundled model — and
every failure against a stand-in HTTP server in this process that misbehaves on purpose.
Everything runs the real `infer` command in a subprocess, over real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pexpect
import pytest

from .conftest import INFER, run_infer
from .llama_server import running_infer_server, running_llama_server
from .test_serve import CAPITAL, Server, free_port


def busy_slots(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=30).text
    match = re.search(r"^infer_busy_slots (\d+)", text, re.M)
    assert match, text
    return int(match.group(1))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from running_infer_server(tmp_path_factory.mktemp("remote-home"))


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("infer: error: "), err
    return err


# --- against infer serve ------------------------------------------------------------------
def test_run_prints_what_a_local_run_prints(serve: Server) -> None:
    local = run_infer("run", "smollm2", CAPITAL, "--temperature", "0", "-n", "24", timeout=300)
    remote = run_infer(
        "run", "smollm2", CAPITAL, "--temperature", "0", "-n", "24", "--remote", serve.url
    )
    assert remote.returncode == 0, remote.stderr
    assert remote.stderr == b""
    assert "Paris" in remote.stdout.decode()
    assert remote.stdout == local.stdout


def test_infer_remote_env_and_stdin(serve: Server) -> None:
    result = run_infer(
        "run", "smollm2", "--temperature", "0", "-n", "24", input=CAPITAL,
        env={"INFER_REMOTE": serve.url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout.decode()


def test_json_has_the_local_shape_and_stats_go_to_stderr(serve: Server) -> None:
    args = ("run", "smollm2", "Say hi", "-n", "5", "--temperature", "0", "--json")
    local = json.loads(run_infer(*args, timeout=300).stdout)
    result = run_infer(*args, "--stats", "--remote", serve.url)
    assert result.returncode == 0, result.stderr
    remote = json.loads(result.stdout)
    assert remote.keys() == local.keys()
    assert remote["stats"].keys() == local["stats"].keys()
    assert remote["text"] == local["text"] and remote["finish_reason"] == "length"
    assert remote["stats"]["generated_tokens"] == 5
    assert remote["stats"]["prompt_tokens"] == local["stats"]["prompt_tokens"]
    stats = result.stderr.decode()
    assert re.search(r"remote .* first token \d+ ms · generated 5 tok, [\d.]+ tok/s", stats)


def test_batch_in_parallel_in_input_order(serve: Server, tmp_path: Path) -> None:
    batch = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "Say hi", "id": "a"},
        {"prompt": "Say bye", "max_tokens": 2},
        {"prompt": "1"},
    ]
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_infer(
        "run", "smollm2", "--batch", str(batch), "--parallel", "2", "-n", "4", "--temperature",
        "0", "--remote", serve.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0]["id"] == "a" and records[1]["generated_tokens"] == 2
    assert records[0]["generated_tokens"] == 4
    assert set(records[2]) == {
        "index", "prompt", "text", "finish_reason", "prompt_tokens", "generated_tokens",
    }  # fmt: skip


def test_chat_through_a_terminal(serve: Server) -> None:
    assert INFER
    child = pexpect.spawn(
        INFER, ["chat", "smollm2", "--remote", serve.url, "--temperature", "0", "-n", "24"],
        encoding="utf-8", timeout=120, dimensions=(50, 200), env=dict(os.environ),
    )  # fmt: skip
    try:
        child.expect_exact(">>> ")
        child.sendline(CAPITAL)
        child.expect_exact(">>> ")
        assert "Paris" in (child.before or "")
        child.sendline("/show")
        child.expect_exact(">>> ")
        assert serve.url in (child.before or "") and "temperature" in (child.before or "")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_list_remote(serve: Server) -> None:
    result = run_infer("list", "--remote", serve.url)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^smollm2\s", result.stdout.decode(), re.M)
    listed = json.loads(run_infer("list", "--json", env={"INFER_REMOTE": serve.url}).stdout)
    assert [m["id"] for m in listed["models"]] == ["smollm2"]


def test_ctrl_c_closes_the_request_and_the_slot_frees(serve: Server) -> None:
    assert INFER and busy_slots(serve.url) == 0
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "Write a long story about a dragon.", "--remote", serve.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout
    first = proc.stdout.read(1)  # the answer has begun: the slot is busy
    assert first and busy_slots(serve.url) == 1
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    deadline = time.monotonic() + 30
    while busy_slots(serve.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_slots(serve.url) == 0


# --- against llama.cpp's llama-server -----------------------------------------------------
@pytest.fixture(scope="module")
def llama_server(bundled_model: Path) -> Iterator[str]:
    yield from running_llama_server(bundled_model, "-c", "1024", "-np", "1", "--jinja")


def test_run_against_llama_server(llama_server: str, bundled_model: Path) -> None:
    args = ("run", str(bundled_model), CAPITAL, "--temperature", "0", "-n", "24")
    local = run_infer(*args, timeout=300)
    remote = run_infer(*args, "--remote", llama_server, "--json", "--stats")
    assert remote.returncode == 0, remote.stderr
    record = json.loads(remote.stdout)
    assert "Paris" in record["text"]
    assert record["text"] + "\n" == local.stdout.decode()
    assert record["stats"]["prompt_tokens"] > 10 and record["stats"]["generated_tokens"] > 3
    listed = run_infer("list", "--remote", llama_server)
    assert listed.returncode == 0 and bundled_model.name in listed.stdout.decode()


# --- a stand-in server for every failure --------------------------------------------------
class StandIn(BaseHTTPRequestHandler):
    """Answers as `script` says: a list of steps, one per request, the last repeated."""

    script: ClassVar[list[str]] = []
    seen: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "alpha"}, {"id": "beta"}]})
        else:
            self._json(404, {"error": {"message": "no such path"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.seen.append(
            {"path": self.path, "body": body, "auth": self.headers["Authorization"]}
        )
        step = StandIn.script[min(len(StandIn.seen) - 1, len(StandIn.script) - 1)]
        if step == "ok":
            self._stream(["Hello", " world"], done=True)
        elif step == "cut":
            self._stream(["Hello", " wor"], done=False)
        elif step == "slow":
            time.sleep(3)
            self._stream(["late"], done=True)
        elif step == "404":
            self._json(404, {"error": {"message": "model not found", "code": "model_not_found"}})
        else:
            status, _, retry_after = step.partition("/")
            headers = {"Retry-After": retry_after} if retry_after else {}
            self._json(int(status), {"error": {"message": f"status {status}"}}, headers)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _stream(self, pieces: list[str], *, done: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        for piece in pieces:
            event = {"choices": [{"index": 0, "delta": {"content": piece}, "text": piece}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        if done:
            last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture()
def standin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    StandIn.script, StandIn.seen = ["ok"], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def remote_run(url: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return run_infer("run", "alpha", "hi", "--remote", url, *args, **kwargs)


def test_every_sampling_flag_is_a_request_field(standin: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    result = remote_run(
        standin, "--temperature", "0.5", "--top-p", "0.9", "--top-k", "20", "--min-p", "0.1",
        "--repeat-penalty", "1.1", "--seed", "7", "-n", "30", "--stop", "END", "--system", "Be",
        "--api-key-file", str(key),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello world\n"
    sent = StandIn.seen[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer s3cret"
    body = sent["body"]
    assert body["model"] == "alpha" and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Be"}, {"role": "user", "content": "hi"},
    ]  # fmt: skip
    expected = {"temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.1,
                "repeat_penalty": 1.1, "seed": 7, "max_tokens": 30, "stop": ["END"]}  # fmt: skip
    assert {k: body[k] for k in expected} == expected


def test_unset_flags_leave_the_remote_defaults_and_raw_is_a_completion(standin: str) -> None:
    result = remote_run(standin, "--raw", env={"INFER_API_KEY": "k"})
    assert result.returncode == 0, result.stderr
    sent = StandIn.seen[0]
    assert sent["path"] == "/v1/completions" and sent["body"]["prompt"] == "hi"
    assert sent["auth"] == "Bearer k"
    assert "temperature" not in sent["body"] and "max_tokens" not in sent["body"]


@pytest.mark.parametrize(
    "flag", [("--ctx-size", "512"), ("--gpu-layers", "0"), ("--threads", "2"),
             ("--draft", "lookup"), ("--no-prompt-cache",), ("--batch-size", "8")],
)  # fmt: skip
def test_a_flag_the_remote_cannot_honour_is_refused(standin: str, flag: tuple[str, ...]) -> None:
    result = remote_run(standin, *flag)
    assert result.returncode == 2
    assert flag[0] in one_line_error(result)
    assert StandIn.seen == []


def test_remote_flags_need_a_remote() -> None:
    result = run_infer("run", "smollm2", "hi", "--timeout", "3")
    assert result.returncode == 2 and "--timeout needs --remote" in one_line_error(result)


def test_stream_cut_mid_answer_keeps_the_partial_answer(standin: str) -> None:
    StandIn.script = ["cut"]
    result = remote_run(standin)
    assert result.returncode == 1
    assert result.stdout == b"Hello wor\n"
    assert "ended before [DONE]" in one_line_error(result)


def test_503_then_200_is_retried_as_retry_after_says(standin: str) -> None:
    StandIn.script = ["503/1", "ok"]
    result = remote_run(standin)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello world\n" and len(StandIn.seen) == 2


def test_429_retries_are_bounded(standin: str) -> None:
    StandIn.script = ["429/0"]
    result = remote_run(standin)
    assert result.returncode == 1
    assert "429" in one_line_error(result) and "5 attempts" in result.stderr.decode()
    assert len(StandIn.seen) == 5


def test_401_says_the_key_is_missing_or_wrong(standin: str) -> None:
    StandIn.script = ["401"]
    missing = remote_run(standin)
    assert missing.returncode == 1 and "needs an API key" in one_line_error(missing)
    wrong = remote_run(standin, env={"INFER_API_KEY": "bad"})
    assert wrong.returncode == 1 and "API key was refused" in one_line_error(wrong)
    StandIn.script = ["403"]
    forbidden = remote_run(standin, "--api-key", "bad")
    assert "403" in one_line_error(forbidden) and "refused" in forbidden.stderr.decode()


def test_404_model_lists_what_the_remote_has(standin: str) -> None:
    StandIn.script = ["404"]
    result = run_infer("run", "gamma", "hi", "--remote", standin)
    assert result.returncode == 1
    assert "model 'gamma' not found; the remote has: alpha, beta" in one_line_error(result)


def test_5xx(standin: str) -> None:
    StandIn.script = ["500"]
    result = remote_run(standin)
    assert result.returncode == 1
    assert "server failed: 500" in one_line_error(result)


def test_timeout(standin: str) -> None:
    StandIn.script = ["slow"]
    result = remote_run(standin, "--timeout", "0.5")
    assert result.returncode == 1 and "no response within 0.5 s" in one_line_error(result)


def test_connection_refused_dns_and_tls(standin: str) -> None:
    refused = remote_run(f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 1 and "connection refused" in one_line_error(refused)
    dns = remote_run("http://no-such-host.invalid:8080")
    assert dns.returncode == 1 and "cannot resolve the host name" in one_line_error(dns)
    tls = remote_run(standin.replace("http://", "https://"))
    assert tls.returncode == 1 and "TLS failed" in one_line_error(tls)


def test_ctrl_c_in_a_batch_writes_what_came_and_frees_the_slots(
    serve: Server, tmp_path: Path
) -> None:
    assert INFER
    batch = tmp_path / "long.txt"
    batch.write_text("Write a long story about a dragon.\nWrite a long poem about the sea.\nhi\n")
    proc = subprocess.Popen(
        [INFER, "run", "smollm2", "--batch", str(batch), "--parallel", "2", "--remote", serve.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while busy_slots(serve.url) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    assert {r["finish_reason"] for r in records} == {"interrupted"}
    deadline = time.monotonic() + 30
    while busy_slots(serve.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy_slots(serve.url) == 0
