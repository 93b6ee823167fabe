"""Images and audio as the API doors receive them, turned into the one internal form
(runtime/media.py): a `{"type": "media", "media": Media}` part in a message's content.

Every door (OpenAI image_url and input_audio, Ollama images, Anthropic image blocks, Responses
input_image) decodes through here, and every byte-level check (magic numbers, the header's
pixel size, the byte limit) is runtime/media.py's `check`, the same one `infer run --image`
uses. A failure is a MediaError whose `reason` the door reports in its own 400 shape, naming
the message part.

Remote images are fetched only when the server was started with --allow-image-urls: a URL in
a request makes the server open a connection wherever the client says (a server on a private
network would reach hosts the client cannot). `file:` URLs are never read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import MediaError
from ..media import MAX_BYTES, Media, MediaKind, check, part
from .backend import Backend, ModelInfo

FETCH_TIMEOUT_S = 10.0  # the whole fetch of one remote image, connection included
MAX_REDIRECTS = 3
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]{0,15}):", re.IGNORECASE)
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/bmp", "image/webp"}
AUDIO_FORMATS = ("wav", "mp3", "flac")
# The OpenAI, Anthropic and Ollama names of what a model takes besides text.
_NEEDS = {"image": "vision", "audio": "audio"}


@dataclass(frozen=True)
class MediaPolicy:
    """What a server accepts: remote URLs (--allow-image-urls), the bytes of one item."""

    allow_urls: bool = False
    max_bytes: int = MAX_BYTES
    timeout_s: float = FETCH_TIMEOUT_S


NO_URLS = MediaPolicy()
T = TypeVar("T")


async def parse(parser: Callable[[Any, MediaPolicy], T], body: Any, policy: MediaPolicy) -> T:
    """Run a door's parser: in a worker thread when it may fetch image URLs (blocking I/O that
    must not stall the event loop), inline otherwise."""
    if policy.allow_urls:
        return await asyncio.to_thread(parser, body, policy)
    return parser(body, policy)


def media_part(media: Media, param: str) -> dict[str, Any]:
    """The content part for `media`, remembering the request field it came from (`param`) so
    that a later refusal (a model that takes no images) names it."""
    return {**part(media), "param": param}


def from_base64(text: Any, kind: MediaKind, policy: MediaPolicy = NO_URLS) -> Media:
    """Media from base64 text (whitespace and line breaks allowed), checked."""
    if not isinstance(text, str) or not text.strip():
        raise MediaError(f"the {kind} must be a non-empty base64 string")
    text = "".join(text.split())
    too_large = f"the {kind} is larger than the limit of {policy.max_bytes:,} bytes"
    if len(text) > (policy.max_bytes + 2) // 3 * 4:  # refused before decoding it
        raise MediaError(too_large)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"the {kind} is not valid base64") from None
    if len(data) > policy.max_bytes:  # the text's length bounds it only to 3 bytes a quad
        raise MediaError(too_large)
    return _checked(Media(kind, data))


def image(source: Any, policy: MediaPolicy = NO_URLS) -> Media:
    """An image given as a `data:` URI, bare base64, or (with the policy's consent) an
    http(s) URL: OpenAI's image_url.url, Responses' image_url, Anthropic's url source."""
    if not isinstance(source, str) or not source.strip():
        raise MediaError("must be a data: URI, base64, or an http(s) URL")
    source = source.strip()
    data_uri = _DATA_URI.match(source)
    if data_uri:
        mime = data_uri["mime"].strip().lower()
        if mime not in _IMAGE_TYPES:
            raise MediaError(
                f"a data: URI of type '{mime or 'text/plain'}' is not an image: send PNG, JPEG, "
                "GIF or BMP"
            )
        if ";base64" not in data_uri["params"].lower():
            raise MediaError("a data: URI must be base64-encoded (data:image/png;base64,...)")
        return from_base64(source[data_uri.end() :], "image", policy)
    scheme = _SCHEME.match(source)
    if scheme and scheme["scheme"].lower() in ("http", "https"):
        if not policy.allow_urls:
            raise MediaError(
                "this server does not fetch image URLs: send the image as a data: URI or base64 "
                "(or start infer serve with --allow-image-urls)"
            )
        return _checked(Media("image", fetch(source, policy)))
    if scheme:  # base64 has no ':', so this is a URL of some other kind
        name = scheme["scheme"].lower()
        if name == "file":
            raise MediaError("file: URLs are never read: send the image as a data: URI or base64")
        if name == "data":
            raise MediaError("a data: URI needs its type and data: data:image/png;base64,...")
        raise MediaError(f"'{name}:' URLs are not accepted: send a data: URI or base64")
    return from_base64(source, "image", policy)


def audio(data: Any, fmt: Any, policy: MediaPolicy = NO_URLS) -> Media:
    """OpenAI's input_audio {data: base64, format}: WAV, MP3 or FLAC, as libmtmd decodes."""
    if fmt is not None and (not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS):
        raise MediaError(f"format {fmt!r} is not one of {', '.join(AUDIO_FORMATS)}")
    return from_base64(data, "audio", policy)


def _checked(media: Media) -> Media:
    check(media)  # the header's format, pixel size and byte limits (runtime/media.py)
    return media


def fetch(url: str, policy: MediaPolicy) -> bytes:
    """A remote image's bytes, within the policy's byte limit and time; MediaError otherwise.
    Blocking: the doors parse requests in a worker thread when URLs are allowed."""
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    timeout = httpx.Timeout(policy.timeout_s)
    try:
        with (
            httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS) as client,
            client.stream("GET", url, timeout=timeout) as r,
        ):
            if r.status_code != 200:
                raise MediaError(f"fetching the image answered HTTP {r.status_code}")
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise MediaError(_too_big(policy))
            chunks, got = [], 0
            for chunk in r.iter_bytes():
                got += len(chunk)
                if got > policy.max_bytes:
                    raise MediaError(_too_big(policy))
                if time.monotonic() > deadline:
                    raise MediaError(f"fetching the image took longer than {policy.timeout_s:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise MediaError(f"fetching the image took longer than {policy.timeout_s:g} s") from None
    except httpx.TooManyRedirects:
        raise MediaError(f"fetching the image took more than {MAX_REDIRECTS} redirects") from None
    except httpx.HTTPError as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise MediaError(f"could not fetch the image ({first})") from None


def _too_big(policy: MediaPolicy) -> str:
    return f"the image is larger than the limit of {policy.max_bytes:,} bytes"


def refused(
    backend: Backend,
    model: str,
    messages: Any,
    find: Callable[[list[ModelInfo], str], ModelInfo | None] | None = None,
) -> tuple[str, str] | None:
    """(param, message) for a request whose media `model` cannot take; the doors raise their
    own 400 with it. The model listing (a store scan) is read only for requests with media."""
    if not has_media(messages):
        return None
    info = (find or listed)(backend.models(), model)
    return refusal(info, model, messages)


def has_media(messages: Any) -> bool:
    """Whether any message carries a media part (listing the models costs a store scan)."""
    return any(isinstance(getattr(m, "content", None), list) for m in messages or [])


def listed(models: list[ModelInfo], model: str) -> ModelInfo | None:
    return next((m for m in models if m.id == model), None)


def refusal(info: ModelInfo | None, model: str, messages: Any) -> tuple[str, str] | None:
    """(param, message) when the messages carry media that the listed model `info` cannot take
    (no projector, or one without that encoder); None when they carry none, or when the model
    is not listed (then the backend decides)."""
    if info is None:
        return None  # a name the listing does not use (an hf:// form, a path): the backend's
    for message in messages or []:
        content = getattr(message, "content", None)
        for item in content if isinstance(content, list) else ():
            if isinstance(item, dict) and item.get("type") == "media":
                kind = item["media"].kind
                if _NEEDS[kind] not in info.capabilities:
                    what = "images" if kind == "image" else "audio"
                    param = str(item.get("param", "messages"))
                    return param, f"model {model} does not support {what}"
    return None
