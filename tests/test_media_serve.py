"""Vision through a real `infer serve` (a subprocess, real sockets, the official clients) over a
store that `infer pull` filled from the loopback fake hub: the listings say which models see
images, a text-only model refuses them, and (once the runtime has libmtmd) the server answers
about an image with exactly `infer run --image`'s text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import run_infer
from .fake_hub import FakeHub, tiny_gguf
from .test_serve import Server
from .tiny_media import data_uri, png, web_server
from .tiny_projector import projector_bytes

VISION = "me/see-GGUF:Q8_0"
TEXT = "me/text-GGUF:Q4_K_M"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An INFER_HOME holding a vision model (with its pulled projector) and a text model."""
    home = tmp_path_factory.mktemp("media-home")
    tmp = tmp_path_factory.mktemp("media-files")
    with FakeHub() as hub:
        hub.add_repo(
            "me/see-GGUF",
            {"see-Q8_0.gguf": tiny_gguf(1), "mmproj-see-F16.gguf": projector_bytes(tmp)},
        )
        hub.add_repo("me/text-GGUF", {"text-Q4_K_M.gguf": tiny_gguf(2)})
        env = {"INFER_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        env |= {"HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}
        for model in (VISION, TEXT):
            result = run_infer("pull", model, env=env)
            assert result.returncode == 0, result.stderr
    yield home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = Server("--parallel", "1", home=home).wait_ready()
    yield s
    assert s.stop() == 0


def test_listings_say_which_models_see_images(server: Server) -> None:
    models = {m.id: m.model_dump() for m in server.client().models.list().data}
    assert models[VISION]["capabilities"] == ["vision"]
    assert "capabilities" not in models[TEXT]
    show = httpx.post(server.url + "/api/show", json={"model": f"hf.co/{VISION}"}, timeout=30)
    assert show.status_code == 200, show.text
    assert "vision" in show.json()["capabilities"]
    assert show.json()["projector_info"]["clip.has_vision_encoder"] is True
    show = httpx.post(server.url + "/api/show", json={"model": f"hf.co/{TEXT}"}, timeout=30)
    assert "vision" not in show.json()["capabilities"] and "projector_info" not in show.json()


def test_a_text_only_model_refuses_images(server: Server) -> None:
    for model in (TEXT, "smollm2"):  # a pulled model and the bundled alias
        with pytest.raises(openai.BadRequestError) as e:
            server.client().chat.completions.create(
                model=model,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": data_uri(png())}},
                        ],
                    }
                ],
            )
        body = e.value.body
        assert body["message"] == f"model {model} does not support images"  # type: ignore[index]
        assert body["param"] == "messages[0].content[1].image_url"  # type: ignore[index]
    assert server.proc.poll() is None  # nothing crashed


def test_allow_image_urls_makes_the_server_fetch_them(home: Path) -> None:
    def ask(s: Server, url: str) -> str:
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(
                model=TEXT,
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            )
        return str(e.value.body["message"])  # type: ignore[index]

    with web_server({"/cat.png": png()}) as base:
        closed = Server(home=home).wait_ready()
        try:
            assert "--allow-image-urls" in ask(closed, f"{base}/cat.png")
        finally:
            assert closed.stop() == 0
        s = Server("--allow-image-urls", home=home).wait_ready()
        try:
            # Fetched and checked, then refused for the model: the fetch happened.
            assert ask(s, f"{base}/cat.png") == f"model {TEXT} does not support images"
            assert "HTTP 404" in ask(s, f"{base}/gone.png")
        finally:
            assert s.stop() == 0


def test_the_server_answers_about_an_image_as_infer_run_does(tmp_path: Path) -> None:
    from . import tiny_vision

    home = tmp_path / "home"
    model = tiny_vision.write_tiny_text_model(tmp_path / "tiny-Q8_0.gguf")
    projector = tiny_vision.write_tiny_projector(tmp_path / "mmproj-tiny-F16.gguf")
    with FakeHub() as hub:
        hub.add_repo(
            "me/tinyvl-GGUF",
            {model.name: model.read_bytes(), projector.name: projector.read_bytes()},
        )
        env = {"INFER_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}
        assert run_infer("pull", "me/tinyvl-GGUF:Q8_0", env=env).returncode == 0
    picture = tmp_path / "cat.png"
    picture.write_bytes(png(32, 32, seed=3))
    name = "me/tinyvl-GGUF:Q8_0"
    run = run_infer(
        "run", name, "What is this?", "--image", str(picture), "--temperature", "0",
        "--max-tokens", "8", env={"INFER_HOME": str(home)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    s = Server(name, "--parallel", "2", home=home).wait_ready()
    try:
        content = [
            {"type": "image_url", "image_url": {"url": data_uri(picture.read_bytes())}},
            {"type": "text", "text": "What is this?"},
        ]
        answer = s.client().chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
            temperature=0,
            max_tokens=8,
        )
        assert (answer.choices[0].message.content or "").strip() == run.stdout.decode().strip()
    finally:
        assert s.stop() == 0
