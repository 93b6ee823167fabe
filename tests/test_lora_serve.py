"""LoRA adapters in `infer serve`, as llama-server's users drive them: `--lora` at start,
per-request `lora: [{id, scale}]`, `GET/POST /lora-adapters`; each answer compared with
`infer run --lora` at the same scales (itself token-exact with llama-completion:
tests/test_lora.py), concurrent requests with different adapters included. The real command in
a subprocess, real sockets, the `openai` client."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import run_infer
from .test_serve import Server
from .tiny_lora import write_text_model, write_tiny_lora

PROMPT = "hello"
N = 24
# The prompt cache on for prompts this short: a state saved with one set of adapters must
# never be restored for another (the server shares the cache with `infer run`).
ENV = {"INFER_PROMPT_CACHE_MIN_TOKENS": "2"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora-serve")
    return {
        "model": write_text_model(d / "text.gguf"),
        "a": write_tiny_lora(d / "a.gguf", seed=1),
        "b": write_tiny_lora(d / "b.gguf", seed=5),
        "home": d / "home",
    }


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[Server]:
    s = Server(
        str(files["model"]), "--lora", str(files["a"]), "--lora", f"{files['b']}:0",
        "--parallel", "4", "--ctx-size", "256", "-t", "1",
        home=files["home"], env=ENV,
    ).wait_ready()  # fmt: skip
    s.model = str(files["model"])  # type: ignore[attr-defined]  # a file is served by its path
    yield s
    assert s.stop() == 0


def run(files: dict[str, Path], a: float, b: float, *, chat: bool = False) -> str:
    """`infer run` with adapter a at scale `a` and b at `b` (0: not given)."""
    flags = [
        f for path, s in ((files["a"], a), (files["b"], b)) if s for f in ("--lora", f"{path}:{s}")
    ]
    raw = [] if chat else ["--raw"]
    result = run_infer(
        "run", str(files["model"]), PROMPT, *raw, "--temperature", "0", "-n", str(N), "-t", "1",
        *flags, env={"INFER_HOME": str(files["home"]), **ENV},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().removesuffix("\n")


def complete(server: Server, lora: list[dict[str, float]] | None, *, chat: bool = False) -> str:
    body: dict[str, object] = {"model": server.model, "temperature": 0, "max_tokens": N}  # type: ignore[attr-defined]
    extra = {} if lora is None else {"lora": lora}
    client = server.client()
    if chat:
        messages = [{"role": "user", "content": PROMPT}]
        answer = client.chat.completions.create(messages=messages, extra_body=extra, **body)  # type: ignore[call-overload]
        return answer.choices[0].message.content or ""
    return client.completions.create(prompt=PROMPT, extra_body=extra, **body).choices[0].text  # type: ignore[call-overload]


def test_adapters_listed_and_requests_take_their_own_scales(
    server: Server, files: dict[str, Path]
) -> None:
    listed = httpx.get(server.url + "/lora-adapters").json()
    assert listed == [
        {"id": 0, "path": str(files["a"]), "scale": 1.0},
        {"id": 1, "path": str(files["b"]), "scale": 0.0},
    ]
    plain, with_a = run(files, 0, 0), run(files, 1.0, 0)
    assert plain != with_a
    assert complete(server, None) == with_a  # the scales given at start
    assert complete(server, [{"id": 0, "scale": 0.5}]) == run(files, 0.5, 0)
    assert complete(server, [{"id": 1, "scale": 1.0}]) == run(files, 0, 1.0)  # a: left out, 0
    assert complete(server, [{"id": 0, "scale": 0.0}]) == plain
    assert complete(server, [{"id": 0, "scale": 1}], chat=True) == run(files, 1.0, 0, chat=True)


def test_concurrent_requests_with_different_adapters(
    server: Server, files: dict[str, Path]
) -> None:
    """llama.cpp applies a context's adapters to a whole decode: requests with different
    scales decoding at the same time must each get their own answer."""
    configs = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.7, 0.4)] * 2
    expected = {c: run(files, *c) for c in set(configs)}

    def ask(config: tuple[float, float]) -> str:
        return complete(server, [{"id": 0, "scale": config[0]}, {"id": 1, "scale": config[1]}])

    with ThreadPoolExecutor(len(configs)) as pool:
        answers = list(pool.map(ask, configs))
    assert answers == [expected[c] for c in configs]


def test_post_sets_the_scales_of_requests_without_their_own(
    server: Server, files: dict[str, Path]
) -> None:
    try:
        response = httpx.post(server.url + "/lora-adapters", json=[{"id": 1, "scale": 0.5}])
        assert response.status_code == 200 and response.json() == {"success": True}
        scales = [a["scale"] for a in httpx.get(server.url + "/lora-adapters").json()]
        assert scales == [0.0, 0.5]  # a, left out: 0
        assert complete(server, None) == run(files, 0, 0.5)
        assert complete(server, [{"id": 0, "scale": 1}]) == run(files, 1.0, 0)
    finally:
        httpx.post(server.url + "/lora-adapters", json=[{"id": 0, "scale": 1.0}])


@pytest.mark.parametrize(
    ("lora", "param"),
    [
        ("x", "lora"),
        ([{"id": 7, "scale": 1}], "lora[0].id"),
        ([{"id": -1, "scale": 1}], "lora[0].id"),
        ([{"id": 0, "scale": "big"}], "lora[0].scale"),
        ([{"id": 0, "scale": 1e9}], "lora[0].scale"),
        ([{"id": 0, "weight": 1}], "lora[0]"),
    ],
)
def test_bad_lora_fields_are_400s_naming_the_field(
    server: Server, lora: object, param: str
) -> None:
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 2, "lora": lora}  # type: ignore[attr-defined]
    response = httpx.post(server.url + "/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") + error["message"]


def test_bad_posts_are_400s(server: Server) -> None:
    for body in ({"id": 0}, [{"id": 9, "scale": 1}], [{"id": 0, "scale": None}]):
        response = httpx.post(server.url + "/lora-adapters", json=body)
        assert response.status_code == 400, body
        assert "error" in response.json()
    assert [a["scale"] for a in httpx.get(server.url + "/lora-adapters").json()] == [1.0, 0.0]


def test_a_bad_adapter_stops_the_server_at_start(files: dict[str, Path], tmp_path: Path) -> None:
    s = Server(str(files["model"]), "--lora", str(files["model"]), home=tmp_path)
    assert s.proc.wait(120) == 2
    s.stop()
    assert any("--lora" in line and "not a LoRA adapter" in line for line in s.lines), s.lines


def test_native_completion_takes_per_request_scales_too(
    server: Server, files: dict[str, Path]
) -> None:
    """llama.cpp's own /completion door reads `lora` as /v1/completions does."""

    def native(lora: list[dict[str, float]]) -> str:
        body = {"prompt": PROMPT, "temperature": 0, "n_predict": N, "lora": lora}
        response = httpx.post(server.url + "/completion", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return str(response.json()["content"])

    half = native([{"id": 0, "scale": 0.5}])
    assert half == run(files, 0.5, 0)
    assert half != native([{"id": 0, "scale": 0.0}])
    bad = httpx.post(server.url + "/completion", json={"prompt": "x", "lora": [{"id": 7}]})
    assert bad.status_code == 400 and "lora[0].id" in bad.text
