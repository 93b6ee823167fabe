"""Abusive connections against `infer serve` (docs/serve.md, "Limits"): hundreds of idle
keep-alive connections, more connections than --max-connections, slowloris headers and bodies,
a megabyte of headers, a client that never reads its answer. Real sockets against the real
command and the bundled SmolLM2; the stalled stream also against a scripted backend under the
same uvicorn protocol, where the cancel of the answer can be seen. No timed assertions: the
bounds waited for are many times the limits under test."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from infer.runtime.server.app import HttpSettings, create_app
from infer.runtime.server.connections import ConnectionLimits, uvicorn_options
from infer.runtime.server.runner import bind

from .conftest import run_infer
from .fake_backend import MODEL, FakeBackend, Script
from .test_serve import Server

LIMITS = ["--max-connections", "600", "--header-timeout", "1", "--write-timeout", "1"]
LIMITS += ["--keep-alive", "60", "--max-header-size", "16384"]
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of Linux's struct tcp_info


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("connections-home")
    s = Server("smollm2", "--parallel", "2", "--ctx-size", "512", *LIMITS, home=home)
    s.wait_ready()
    yield s
    assert s.stop() == 0


def _connect(s: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", s.port), timeout=120)


def _request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` while the client sends `trickle` a byte at a time
    (0.1 s apart) and then waits; False if it is still open after all that and 30 s more."""
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        time.sleep(0.1)
    sock.settimeout(30)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _chat(s: Server) -> str:
    r = httpx.post(
        s.url + "/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text
    return text


def test_500_idle_keep_alive_connections_leave_requests_answered(server: Server) -> None:
    before = _chat(server)
    idle = [_connect(server) for _ in range(500)]
    try:
        for sock in idle:  # each has had a request answered and stays open (keep-alive)
            sock.sendall(_request("GET", "/health"))
        for sock in idle:
            assert _response(sock)[0] == 200
        assert _chat(server) == before  # temperature 0: the same answer, idle crowd or not
        idle[0].sendall(_request("GET", "/v1/models"))  # still open and usable
        assert _response(idle[0])[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_over_the_limit_is_503_with_retry_after_in_its_doors_shape(
    server: Server,
) -> None:
    held = [_connect(server) for _ in range(600)]
    try:
        for sock in held:
            sock.sendall(_request("GET", "/health"))
        for sock in held:
            _response(sock)
        body = json.dumps({"model": "smollm2", "messages": []}).encode()
        for path, shape in [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]:
            extra = _connect(server)
            extra.sendall(_request("POST", path, body))
            status, headers, raw = _response(extra)
            assert status == 503
            assert int(headers["retry-after"]) >= 1
            assert headers["connection"] == "close"
            answer = json.loads(raw)
            if shape == "openai":
                assert answer["error"]["code"] == "overloaded"
            else:
                assert answer["type"] == "error" and answer["error"]["message"]
            assert _closed_by_server(extra)
            extra.close()
    finally:
        for sock in held:
            sock.close()
    for _ in range(100):  # the server notices the closed connections as it reads them
        if httpx.get(server.url + "/health", timeout=60).status_code == 200:
            break
        time.sleep(0.1)
    _chat(server)
    assert any('"POST /v1/messages" 503' in line for line in server.lines)  # logged and counted


def test_slowloris_headers_and_bodies_are_cut(server: Server) -> None:
    silent = _connect(server)
    assert _closed_by_server(silent)  # connected, sent nothing
    trickled = _connect(server)
    headers = _request("GET", "/v1/models", extra="X-Slow: " + "a" * 290 + "\r\n")
    assert _closed_by_server(trickled, headers)  # 30 s of trickling; the limit is 1 s
    stalled_body = _connect(server)
    body = json.dumps({"model": "smollm2", "prompt": "Hello there", "max_tokens": 1}).encode()
    stalled_body.sendall(_request("POST", "/v1/completions", body)[:-5])
    assert _closed_by_server(stalled_body)
    for sock in (silent, trickled, stalled_body):
        sock.close()
    _chat(server)


def test_a_megabyte_of_headers_is_431_naming_the_flag(server: Server) -> None:
    sock = _connect(server)
    with contextlib.suppress(OSError):  # the server may answer and close before all is sent
        sock.sendall(_request("GET", "/v1/models", extra="X-Big: " + "a" * 1_000_000 + "\r\n"))
    status, _, raw = _response(sock)
    assert status == 431
    assert "--max-header-size" in json.loads(raw)["error"]["message"]
    sock.close()
    _chat(server)


def _reset_by_server(sock: socket.socket) -> bool:
    """Whether the server resets `sock` within 300 s, seen in the socket's TCP state (Linux's
    TCP_INFO) without reading from it: a read would make the client one that reads."""
    for _ in range(3000):
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != TCP_ESTABLISHED:
            return True
        time.sleep(0.1)
    return False


def test_a_client_that_never_reads_is_disconnected(server: Server) -> None:
    """A large answer (about 1.5 MB of embeddings, written to the transport in one piece) that
    the client never reads: the server resets the connection after --write-timeout instead of
    holding it and its buffers, however long the answer took to compute."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    inputs = [f"sentence number {i} about nothing in particular" for i in range(128)]
    sock.sendall(
        _request(
            "POST", "/v1/embeddings", json.dumps({"model": "smollm2", "input": inputs}).encode()
        )
    )
    assert _reset_by_server(sock), "the server still holds the unread answer"
    received = b""
    sock.settimeout(60)
    with contextlib.suppress(OSError):  # the reset; what the client's kernel held may come first
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lengths = [v for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
               if k.lower() == b"content-length"]  # fmt: skip
    assert not lengths or len(body) < int(lengths[0])  # cut, not delivered late
    sock.close()
    _chat(server)  # the answer's log line was written before the reset: it is there by now
    assert any('"POST /v1/embeddings" 200' in line for line in server.lines)


@contextmanager
def _guarded(backend: FakeBackend, limits: ConnectionLimits) -> Iterator[int]:
    """The HTTP side under infer serve's uvicorn options, over a scripted backend."""
    sock = bind("127.0.0.1", 0)
    app = create_app(backend, HttpSettings(log=lambda line: None, limits=limits))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(limits))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not (server.started and backend.started):
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_an_unread_stream_is_cancelled_and_its_slot_freed() -> None:
    backend = FakeBackend()
    backend.script = Script(pieces=["x" * 4000] * 5000, delay_s=0.001)
    with _guarded(backend, ConnectionLimits(write_timeout=0.5)) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        body = json.dumps(
            {"model": MODEL, "prompt": "x", "stream": True, "max_tokens": 5000}
        ).encode()
        sock.sendall(_request("POST", "/v1/completions", body))
        for _ in range(3000):  # the job is cancelled once the stall outlasts write_timeout
            if backend.cancels:
                break
            time.sleep(0.01)
        assert backend.cancels, "the stalled stream was never cancelled"
        job = backend.cancels[0]
        assert job.generated < 5000  # cut long before its end
        sock.close()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-connections", "0"),
        ("--header-timeout", "0"),
        ("--write-timeout", "-1"),
        ("--keep-alive", "0"),
        ("--max-header-size", "100"),
    ],
)
def test_a_limit_out_of_range_is_one_line_and_exit_2(flag: str, value: str) -> None:
    result = run_infer("serve", flag, value, "--port", "0")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err
