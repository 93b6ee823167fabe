"""CORS as a browser meets it, through the real `infer serve` (no model needed): the preflight a
browser sends before a cross-origin POST with an API key, and the header it reads on the answer.
The default lets pages on this machine and desktop apps in (as Ollama), `--cors-origin '*'`
every origin (as llama-server), bad values are a one-line usage error. The policy's other
values against the HTTP side alone: tests/test_serve_http.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import INFER
from .test_serve import Server

KEY = "sk-cors-test"
LOCAL = [
    "http://localhost",
    "http://localhost:8080",
    "https://localhost:5173",
    "http://127.0.0.1",
    "http://127.0.0.1:3000",
    "http://[::1]",
    "http://[::1]:3000",
    "http://0.0.0.0:8000",
    "app://obsidian.md",
    "tauri://localhost",
    "vscode-webview://1a2b3c",
]
FOREIGN = [
    "http://web.mydomain.fr",
    "http://evil.com",
    "http://notlocalhost",
    "http://localhost.evil.com",
    "http://127.0.0.1.evil.com",
    "http://localhost:3000.evil.com",
    "https://[::1].evil.com",
    "null",  # a sandboxed iframe's origin
]


def preflight(url: str, origin: str) -> httpx.Response:
    """What a browser sends before `fetch(url, {method: "POST", headers: {Authorization}})`."""
    return httpx.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=30,
    )


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cors-default")
    s = Server("--api-key", KEY, home=home).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def any_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cors-any")
    s = Server("--cors-origin", "*", home=home).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("origin", LOCAL)
def test_a_local_page_may_call_the_server_by_default(default: Server, origin: str) -> None:
    r = preflight(default.url, origin)  # no API key: browsers send none with a preflight
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    assert r.headers["access-control-allow-credentials"] == "true"
    # Authorization named, not "*": a browser never lets a wildcard cover it
    assert r.headers["access-control-allow-headers"] == "authorization,content-type"
    got = httpx.get(
        default.url + "/v1/models",
        headers={"Origin": origin, "Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == origin
    # a refusal is readable by the page too (it can tell the user the key is wrong)
    refused = httpx.get(default.url + "/v1/models", headers={"Origin": origin}, timeout=30)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", FOREIGN)
def test_a_page_from_another_site_gets_no_cors_headers(default: Server, origin: str) -> None:
    assert "access-control-allow-origin" not in preflight(default.url, origin).headers
    got = httpx.get(
        default.url + "/v1/models",
        headers={"Origin": origin, "Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert got.status_code == 200  # answered (curl would read it) but not readable by the page
    assert "access-control-allow-origin" not in got.headers


@pytest.mark.parametrize("origin", ["http://web.mydomain.fr", "localhost", "http://[::1]:3000"])
def test_cors_origin_star_reflects_every_origin_with_credentials(
    any_origin: Server, origin: str
) -> None:
    r = preflight(any_origin.url, origin)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == origin  # reflected, as llama-server
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    got = httpx.get(any_origin.url + "/health", headers={"Origin": origin}, timeout=30)
    assert got.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "values, words",
    [
        (["evil.com"], "'evil.com' is not an origin"),
        (["https://chat.example.com/app"], "is not an origin"),
        (["none", "http://localhost:3000"], "'none' turns CORS off"),
    ],
)
def test_a_bad_cors_origin_is_a_one_line_usage_error(
    values: list[str], words: str, tmp_path: Path
) -> None:
    assert INFER
    args = [a for v in values for a in ("--cors-origin", v)]
    env = {**os.environ, "INFER_HOME": str(tmp_path)}
    done = subprocess.run(
        [INFER, "serve", *args, "--port", "0"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "--cors-origin" in line and words in line


def test_header_names_go_out_as_http_servers_write_them(any_origin: Server) -> None:
    """`Access-Control-Allow-Origin`, not starlette's lowercase: a client that keeps headers in
    a plain dict (llama.cpp's own server tests do) looks them up in this form."""
    names = {k.decode() for k, _ in preflight(any_origin.url, "http://x.example").headers.raw}
    wanted = {"Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
              "Access-Control-Allow-Credentials", "Content-Type", "X-Request-Id"}  # fmt: skip
    assert wanted <= names
    metrics = httpx.get(any_origin.url + "/metrics", timeout=30)
    assert "Process-Start-Time-Unix" in {k.decode() for k, _ in metrics.headers.raw}
