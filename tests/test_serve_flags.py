"""`infer serve`'s flags and guards through the real command: --allow-pull (against the loopback
fake Hub), --cors-origin, --insecure, --log-format, the Host guard, /health while the model
loads, and SIGINT/SIGHUP draining an answer on the bundled model. tests/test_serve_http.py
holds the same behaviour to the HTTP side's contract on a scripted backend; this is what a user
meets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import INFER
from .fake_hub import FakeHub, tiny_gguf
from .test_serve import Server, free_port

REPO = "me/tiny-GGUF"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo(REPO, {"tiny-Q8_0.gguf": tiny_gguf(5)})
        yield h


def hub_env(hub: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}


def ask(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=300)


# --- --allow-pull ----------------------------------------------------------------------------
def test_without_allow_pull_an_uncached_model_is_a_404_naming_infer_pull(
    hub: FakeHub, tmp_path: Path
) -> None:
    s = Server("--ctx-size", "256", home=tmp_path, env=hub_env(hub)).wait_ready()
    try:
        r = ask(s.url, REPO)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["param"] == "model" and f"infer pull {REPO}" in error["message"]
        assert hub.count("GET", "/resolve/") == 0  # nothing was downloaded
    finally:
        assert s.stop() == 0


def test_with_allow_pull_a_request_pulls_the_model_and_is_answered(
    hub: FakeHub, tmp_path: Path
) -> None:
    before = hub.count("GET", "/resolve/")
    s = Server("--ctx-size", "256", "--allow-pull", home=tmp_path, env=hub_env(hub)).wait_ready()
    try:
        r = ask(s.url, REPO)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert hub.count("GET", "/resolve/") == before + 1
        ids = [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
        assert any(i.startswith(REPO) for i in ids), ids
    finally:
        assert s.stop() == 0
    # the pulled file is in the cache, as `infer pull` would have left it
    listing = subprocess.run(
        [str(INFER), "list", "--json"], capture_output=True, text=True, check=True,
        env={**os.environ, "INFER_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert [m["name"] for m in json.loads(listing.stdout)["models"]] == [f"{REPO}:Q8_0"]


# --- --cors-origin, the Host guard, --log-format: one server -----------------------------------
ALLOWED = "http://localhost:3000"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with no model: these checks need none."""
    home = tmp_path_factory.mktemp("flags-home")
    s = Server("--cors-origin", ALLOWED, "--log-format", "json", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def test_cors_headers_only_for_the_allowed_origin(plain: Server) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    with httpx.Client(base_url=plain.url, timeout=30) as c:
        r = c.options("/v1/chat/completions", headers={"Origin": ALLOWED, **preflight})
        assert r.status_code in (200, 204), r.text
        assert r.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in r.headers["access-control-allow-methods"]
        got = c.get("/v1/models", headers={"Origin": ALLOWED})
        assert got.headers["access-control-allow-origin"] == ALLOWED
        other = c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        refused = c.options("/v1/chat/completions", headers={"Origin": "http://evil.example",
                                                              **preflight})  # fmt: skip
        assert "access-control-allow-origin" not in refused.headers


def test_the_host_guard_refuses_other_host_names(plain: Server) -> None:
    port = plain.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=plain.url, timeout=30) as c:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            r = c.get("/v1/models", headers={"Host": host})
            assert r.status_code == 403, host  # DNS rebinding: a page on another name


def test_log_format_json_is_one_object_per_request(plain: Server) -> None:
    httpx.get(plain.url + "/v1/models?probe=1", timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("probe=1" in x for x in plain.lines):
        time.sleep(0.05)
    [line] = [x for x in plain.lines if "probe=1" in x or "/v1/models" in x][-1:]
    record = json.loads(line)  # the whole line is one JSON object
    assert record["path"].startswith("/v1/models") and record["status"] == 200
    assert record["method"] == "GET"


def test_log_format_text_by_default(tmp_path: Path) -> None:
    s = Server(home=tmp_path).wait_ready()
    try:
        httpx.get(s.url + "/v1/models", timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("/v1/models" in x for x in s.lines):
            time.sleep(0.05)
        [line] = [x for x in s.lines if "/v1/models" in x]
        assert "GET" in line and "200" in line and not line.lstrip().startswith("{")
    finally:
        assert s.stop() == 0


# --- --insecure --------------------------------------------------------------------------------
def serve_on_all_interfaces(home: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(INFER), "serve", "--host", "0.0.0.0", "--port", str(free_port()), *flags],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "INFER_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


def test_a_public_host_without_a_key_is_refused(tmp_path: Path) -> None:
    proc = serve_on_all_interfaces(tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.count("\n") == 1 and "--insecure" in err and "--api-key" in err, err


def test_insecure_serves_a_public_host_without_a_key(tmp_path: Path) -> None:
    proc = serve_on_all_interfaces(tmp_path, "--insecure")
    try:
        assert proc.stderr is not None
        ready = ""
        deadline = time.monotonic() + 120
        while "on http://" not in ready and time.monotonic() < deadline:
            ready = proc.stderr.readline()
            assert ready or proc.poll() is None, "infer serve exited"
        port = ready.split("on http://", 1)[1].split()[0].rsplit(":", 1)[1]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert r.status_code == 200  # no key asked for
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


# --- /health while the model loads -------------------------------------------------------------
def test_health_says_loading_until_the_model_is_ready(tmp_path: Path) -> None:
    # A large KV cache to allocate and clear, so loading takes a while after the port opens.
    s = Server("smollm2", "--parallel", "8", "--ctx-size", "8192", home=tmp_path)
    statuses: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                r = httpx.get(s.url + "/health", timeout=10)
            except httpx.TransportError:  # not listening yet
                assert s.proc.poll() is None, s.lines
                time.sleep(0.005)
                continue
            status = (r.status_code, r.json()["status"])
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            if r.status_code == 200:
                break
        assert statuses == [(503, "loading"), (200, "ok")]
        assert ask(s.url, "smollm2").status_code == 200
    finally:
        assert s.stop() == 0


# --- SIGINT and SIGHUP: the answer in flight completes, new requests are refused ---------------
def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_drains_the_answer_in_flight(tmp_path: Path, signum: int) -> None:
    s = Server("smollm2", "--parallel", "2", "--ctx-size", "512", "--shutdown-timeout", "120",
               home=tmp_path).wait_ready()  # fmt: skip
    body = {
        "model": "smollm2", "prompt": "Once", "max_tokens": 200, "ignore_eos": True,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    events: list[dict[str, Any]] = []
    started = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(timeout=300) as c,
            c.stream("POST", s.url + "/v1/completions", json=body) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    started.set()

    try:
        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(120)
        s.proc.send_signal(signum)
        # Shutdown begins: the port stops taking connections while the answer still streams.
        port = int(s.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while accepts(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not accepts(port) and reader.is_alive()
        with pytest.raises(httpx.TransportError):
            ask(s.url, "smollm2")
        reader.join(300)
        usage = [e["usage"] for e in events if e.get("usage")]
        assert usage and usage[-1]["completion_tokens"] == 200  # the whole answer, not cut
        reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert reasons == ["length"]
        assert s.proc.wait(120) == 0
    finally:
        s.stop()
