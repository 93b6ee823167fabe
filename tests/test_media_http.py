"""Images and audio through every API door, driven with the official clients (openai, ollama,
anthropic) against a real uvicorn on loopback and the scripted backend: what each door hands
the backend (media parts in the messages, runtime/media.py) and each refusal, in each
protocol's own error shape, naming the message part. Answers about the images need the runtime
(libmtmd): tests/test_media_serve.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import anthropic
import httpx
import ollama
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import ResponseInputParam

from infer.runtime.errors import MediaError
from infer.runtime.media import Media
from infer.runtime.server import media_parts
from infer.runtime.server.backend import ModelInfo, TextRequest

from .fake_backend import MODEL, FakeBackend
from .test_serve_http import Served, serving
from .tiny_media import (
    HTML,
    SVG,
    b64,
    data_uri,
    jpeg_header,
    png,
    png_claiming,
    wav,
    web_server,
)

TEXT_ONLY = "smollm2"


class VisionBackend(FakeBackend):
    """The scripted backend, with MODEL seeing images and hearing audio."""

    def models(self) -> list[ModelInfo]:
        caps = {MODEL: ("vision", "audio")}
        return [
            ModelInfo(m, 1_700_000_000, "local", loaded, capabilities=caps.get(m, ()))
            for m, loaded in self.known.items()
        ]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving(VisionBackend()) as s:
        yield s


@pytest.fixture(scope="module")
def pictures() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback web server with a picture, an HTML page and a 404, for --allow-image-urls."""
    files = {"/cat.png": png(3, 2, seed=7), "/page.png": HTML, "/big.png": png(64, 64)}
    with web_server(files) as url:
        yield url, files


def last_request(s: Served) -> TextRequest:
    return s.backend.submits[-1][1]


def media_of(request: TextRequest) -> list[Media]:
    return [
        p["media"]
        for m in request.messages or []
        if isinstance(m.content, list)
        for p in m.content
        if p["type"] == "media"
    ]


def openai_error(s: Served, content: list[dict[str, Any]], model: str = MODEL) -> Any:
    before = len(s.backend.submits)
    with pytest.raises(openai.BadRequestError) as e:
        s.openai().chat.completions.create(
            model=model,
            messages=chat_messages({"role": "user", "content": content}),
        )
    assert len(s.backend.submits) == before  # refused at the door
    return e.value.body


def chat_messages(*messages: dict[str, Any]) -> list[ChatCompletionMessageParam]:
    """Messages for the OpenAI client: its TypedDicts cannot tell a role's dict from another's
    when the content parts are built as plain dicts, so the list is cast to what it is."""
    return cast("list[ChatCompletionMessageParam]", list(messages))


def anthropic_messages(*messages: dict[str, Any]) -> list[MessageParam]:
    """As chat_messages, for the Anthropic client."""
    return cast("list[MessageParam]", list(messages))


def image_url(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# --- OpenAI chat ----------------------------------------------------------------------------
def test_openai_image_parts_reach_the_backend_in_order(served: Served) -> None:
    a, b = png(seed=1), jpeg_header()
    content = [
        {"type": "text", "text": "Compare "},
        image_url(data_uri(a)),
        {"type": "text", "text": " with "},
        image_url(b64(b)),  # bare base64, as llama-server takes it
    ]
    answer = served.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
    )
    assert answer.choices[0].message.content == "Paris is the capital."
    [message] = last_request(served).messages or []
    assert isinstance(message.content, list)
    assert [p["type"] for p in message.content] == ["text", "media", "text", "media"]
    assert media_of(last_request(served)) == [Media("image", a), Media("image", b)]
    assert message.text == "Compare <__media__> with <__media__>"  # as the template sees it


def test_openai_input_audio_becomes_an_audio_part(served: Served) -> None:
    clip = wav()
    content = [
        {"type": "input_audio", "input_audio": {"data": b64(clip), "format": "wav"}},
        {"type": "text", "text": "What is said?"},
    ]
    served.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
    )
    assert media_of(last_request(served)) == [Media("audio", clip)]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,not*base64", "not valid base64"),
        (data_uri(HTML), "not an image"),  # a "PNG" that is HTML
        (data_uri(HTML, "text/html"), "'text/html' is not an image"),
        (data_uri(SVG, "image/svg+xml"), "'image/svg+xml' is not an image"),
        (data_uri(png()[:40]), "truncated"),
        (data_uri(png_claiming(50_000, 50_000)), "50,000 x 50,000 pixels"),
        ("file:///etc/passwd", "file: URLs are never read"),
        ("https://example.com/cat.png", "--allow-image-urls"),
        ("ftp://example.com/cat.png", "'ftp:' URLs are not accepted"),
    ],
)
def test_openai_bad_images_are_400s_naming_the_part(served: Served, url: str, words: str) -> None:
    body = openai_error(served, [{"type": "text", "text": "?"}, image_url(url)])
    assert body["param"] == "messages[0].content[1].image_url", body
    assert words in body["message"] and body["type"] == "invalid_request_error", body


def test_openai_bad_audio_is_a_400_naming_the_part(served: Served) -> None:
    part = {"type": "input_audio", "input_audio": {"data": b64(png()), "format": "wav"}}
    body = openai_error(served, [part])
    assert body["param"] == "messages[0].content[0].input_audio"
    assert "not audio" in body["message"]
    part = {"type": "input_audio", "input_audio": {"data": b64(wav()), "format": "ogg"}}
    assert "'ogg' is not one of" in openai_error(served, [part])["message"]


def test_images_to_a_text_only_model_are_refused_naming_the_part(served: Served) -> None:
    body = openai_error(
        served, [{"type": "text", "text": "?"}, image_url(data_uri(png()))], TEXT_ONLY
    )
    assert body["message"] == f"model {TEXT_ONLY} does not support images"
    assert body["param"] == "messages[0].content[1].image_url"


def test_images_only_in_user_messages(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        served.openai().chat.completions.create(
            model=MODEL,
            messages=chat_messages(
                {"role": "system", "content": [image_url(data_uri(png()))]},
                {"role": "user", "content": "?"},
            ),
        )
    assert e.value.body["param"] == "messages[0].content[0]"  # type: ignore[index]


def test_image_urls_are_fetched_only_with_the_flag(pictures: tuple[str, dict[str, bytes]]) -> None:
    base, files = pictures
    with serving(VisionBackend(), allow_image_urls=True) as s:
        s.openai().chat.completions.create(
            model=MODEL,
            messages=chat_messages({"role": "user", "content": [image_url(f"{base}/cat.png")]}),
        )
        assert media_of(last_request(s)) == [Media("image", files["/cat.png"])]
        missing = openai_error(s, [image_url(f"{base}/gone.png")])
        assert "HTTP 404" in missing["message"]
        assert missing["param"] == "messages[0].content[0].image_url"
        assert "not an image" in openai_error(s, [image_url(f"{base}/page.png")])["message"]
        assert "never read" in openai_error(s, [image_url("file:///etc/hostname")])["message"]


def test_a_fetch_stops_at_the_byte_limit_and_the_timeout(
    pictures: tuple[str, dict[str, bytes]],
) -> None:
    base, files = pictures
    small = media_parts.MediaPolicy(allow_urls=True, max_bytes=len(files["/big.png"]) - 1)
    with pytest.raises(MediaError, match="larger than the limit"):
        media_parts.image(f"{base}/big.png", small)
    assert media_parts.image(f"{base}/cat.png", small).data == files["/cat.png"]
    with pytest.raises(MediaError, match="larger than the limit"):
        media_parts.from_base64(b64(files["/big.png"]), "image", small)
    # A port that accepts nothing: refused at once, reported as one line.
    with pytest.raises(MediaError, match="could not fetch the image"):
        media_parts.image("http://127.0.0.1:9/cat.png", small)


# --- Ollama ---------------------------------------------------------------------------------
def test_ollama_images_in_chat_and_generate(served: Served) -> None:
    client = ollama.Client(host=served.url, timeout=10)
    picture = png(seed=3)
    client.chat(
        model=MODEL, messages=[{"role": "user", "content": "What is it?", "images": [picture]}]
    )
    [message] = last_request(served).messages or []
    assert isinstance(message.content, list)
    assert [p["type"] for p in message.content] == ["media", "text"]  # images first, as Ollama
    assert media_of(last_request(served)) == [Media("image", picture)]
    client.generate(model=MODEL, prompt="Describe", images=[picture, jpeg_header()])
    assert media_of(last_request(served)) == [
        Media("image", picture),
        Media("image", jpeg_header()),
    ]


def test_ollama_refusals_in_ollamas_shape(served: Served) -> None:
    client = ollama.Client(host=served.url, timeout=10)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "?", "images": [HTML]}])
    assert e.value.status_code == 400
    assert e.value.error.startswith("messages[0].images[0]: SVG or HTML is not an image")
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=TEXT_ONLY, prompt="?", images=[png()])
    assert e.value.status_code == 400
    assert e.value.error == f"images[0]: model {TEXT_ONLY} does not support images"
    r = httpx.post(
        served.url + "/api/generate",
        json={"model": MODEL, "prompt": "?", "raw": True, "images": [b64(png())]},
    )
    assert r.status_code == 400 and r.json()["error"].startswith("images: ")


# --- Anthropic ------------------------------------------------------------------------------
def anthropic_client(s: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.url, api_key="unused", max_retries=0, timeout=10)


def image_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": b64(data)},
    }


def test_anthropic_image_blocks(served: Served) -> None:
    picture = png(seed=4)
    anthropic_client(served).messages.create(
        model=MODEL,
        max_tokens=8,
        messages=anthropic_messages(
            {"role": "user", "content": [image_block(picture), {"type": "text", "text": "What?"}]}
        ),
    )
    assert media_of(last_request(served)) == [Media("image", picture)]


@pytest.mark.parametrize(
    ("block", "model", "param", "words"),
    [
        (image_block(HTML), MODEL, "messages.0.content.0.source", "not an image"),
        (image_block(SVG, "image/svg+xml"), MODEL, "messages.0.content.0.source", "not an image"),
        (
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            MODEL,
            "messages.0.content.0.source",
            "--allow-image-urls",
        ),
        (image_block(png()), TEXT_ONLY, "messages.0.content.0.source", "does not support images"),
    ],
)
def test_anthropic_refusals_in_anthropics_shape(
    served: Served, block: dict[str, Any], model: str, param: str, words: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client(served).messages.create(
            model=model,
            max_tokens=8,
            messages=anthropic_messages({"role": "user", "content": [block]}),
        )
    error = e.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ") and words in error["message"], error


# --- Responses ------------------------------------------------------------------------------
def test_responses_input_image(served: Served) -> None:
    picture = png(seed=5)
    content = [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": data_uri(picture), "detail": "auto"},
    ]
    served.openai().responses.create(
        model=MODEL,
        input=cast("ResponseInputParam", [{"role": "user", "content": content}]),
    )
    assert media_of(last_request(served)) == [Media("image", picture)]
    with pytest.raises(openai.BadRequestError) as e:
        served.openai().responses.create(
            model=TEXT_ONLY,
            input=cast("ResponseInputParam", [{"role": "user", "content": content}]),
        )
    assert e.value.body["param"] == "input[0].content[1].image_url"  # type: ignore[index]
    assert "does not support images" in e.value.body["message"]  # type: ignore[index]


# --- listings -------------------------------------------------------------------------------
def test_v1_models_says_which_models_see_images(served: Served) -> None:
    models = {m.id: m for m in served.openai().models.list().data}
    assert models[MODEL].capabilities == ["vision", "audio"]  # type: ignore[attr-defined]
    assert not hasattr(models[TEXT_ONLY], "capabilities")
