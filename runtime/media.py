"""Images and audio that a request carries: the one internal form every front door hands to the
runtime. A door (the CLI's --image, OpenAI's image_url, Ollama's images, Anthropic's image
blocks) turns what it was sent into bytes and places a `part(media)` in the message's content
list where the media goes; the runtime renders each such part as libmtmd's marker and hands the
bytes to libmtmd in the same order.

Shared base: imports no layer, so every door can build these without loading llama.cpp.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import MediaError

# libmtmd's default marker (mtmd_default_marker()): where a media chunk goes in the prompt text.
MARKER = "<__media__>"

MediaKind = Literal["image", "audio"]


@dataclass(frozen=True)
class Media:
    """One image or audio clip, as its file's bytes (PNG, JPEG, BMP, GIF; WAV, MP3, FLAC)."""

    kind: MediaKind
    data: bytes = field(repr=False)

    @property
    def id(self) -> str:
        """The bytes' sha256: libmtmd's bitmap id, so a second question about the same picture
        reuses the KV state (prompt cache, chat, server) instead of encoding it again."""
        return hashlib.sha256(self.data).hexdigest()


def part(media: Media) -> dict[str, Any]:
    """The content part that places `media` in a message."""
    return {"type": "media", "media": media}


def media_in(messages: Iterable[dict[str, Any]]) -> Iterator[Media]:
    """Every media part of the messages, in prompt order."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and item.get("type") == "media":
                    yield item["media"]


# Limits, checked on the file's header before libmtmd decodes a byte of it (docs/vision.md): a
# 50,000 x 50,000 PNG is a few kilobytes that would decompress to 7.5 GB of pixels.
MAX_BYTES = 20 * 1024 * 1024  # one file, image or audio (OpenAI's own limit for an image)
MAX_SIDE = 16384  # pixels, either side
MAX_PIXELS = 40_000_000  # width x height: an 8K photo (33 MP) passes


@dataclass(frozen=True)
class Info:
    """What a media file's header says: its format and, for an image, its size in pixels."""

    format: str  # png, jpeg, gif, bmp; wav, mp3, flac
    width: int = 0
    height: int = 0


def check(media: Media, index: int | None = None) -> Info:
    """The header of `media`, read without decoding it; MediaError (naming media `index`) when
    it is not a format libmtmd decodes for its kind, is damaged, or exceeds the limits."""
    data = media.data
    if not data:
        raise MediaError(f"the {media.kind} is empty", index)
    if len(data) > MAX_BYTES:
        raise MediaError(
            f"the {media.kind} is {len(data):,} bytes; the limit is {MAX_BYTES:,}", index
        )
    if media.kind == "audio":
        return _audio(data, index)
    info = _image(data, index)
    if info.width <= 0 or info.height <= 0:
        raise MediaError(f"the {info.format.upper()} header gives no image size", index)
    if max(info.width, info.height) > MAX_SIDE or info.width * info.height > MAX_PIXELS:
        raise MediaError(
            f"the image is {info.width:,} x {info.height:,} pixels; the limit is {MAX_SIDE:,} "
            f"a side and {MAX_PIXELS:,} pixels",
            index,
        )
    return info


def _image(data: bytes, index: int | None) -> Info:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise MediaError("the PNG is truncated (no IHDR header)", index)
        width, height = struct.unpack(">II", data[16:24])
        # The last chunk of a whole PNG is IEND: a file cut short in transit lacks it.
        if data[-12:-4] != b"\x00\x00\x00\x00IEND":
            raise MediaError("the PNG is truncated (it does not end with IEND)", index)
        return Info("png", width, height)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data, index)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 13:
            raise MediaError("the GIF is truncated", index)
        width, height = struct.unpack("<HH", data[6:10])
        return Info("gif", width, height)
    if data.startswith(b"BM"):
        if len(data) < 26:
            raise MediaError("the BMP is truncated", index)
        width, height = struct.unpack("<ii", data[18:26])
        return Info("bmp", abs(width), abs(height))  # a negative height is a top-down BMP
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")) or b"<svg" in head:
        raise MediaError(
            "SVG or HTML is not an image libmtmd decodes: use PNG, JPEG, GIF or BMP", index
        )
    raise MediaError("not an image libmtmd decodes: use PNG, JPEG, GIF or BMP", index)


# JPEG start-of-frame markers (baseline, progressive ...) carry the size; C4, C8, CC are not SOFs.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes, index: int | None) -> Info:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return Info("jpeg", width, height)
        pos += 2 + length
    raise MediaError("the JPEG is truncated or damaged (no frame header)", index)


def _audio(data: bytes, index: int | None) -> Info:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return Info("wav")
    if data[:4] == b"fLaC":
        return Info("flac")
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return Info("mp3")
    raise MediaError("not audio libmtmd decodes: use WAV, MP3 or FLAC", index)


def place(text: str, media: Iterable[Media]) -> list[dict[str, Any]]:
    """A user message's content: `text` with `media` where its MARKERs are, or, with no marker
    in it, every media before the text (as llama-mtmd-cli places them)."""
    items = list(media)
    if MARKER not in text:
        return [part(m) for m in items] + ([{"type": "text", "text": text}] if text else [])
    content: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split(MARKER)):
        if i:
            if not items:
                raise MediaError(f"the prompt has more {MARKER} markers than media given")
            content.append(part(items.pop(0)))
        if piece:
            content.append({"type": "text", "text": piece})
    if items:
        raise MediaError(f"the prompt has fewer {MARKER} markers than media given")
    return content


def flatten(content: Any) -> tuple[str, list[Media]]:
    """A message's content as the template sees it (text, each media as MARKER) and its media."""
    if not isinstance(content, list):
        return str(content or ""), []
    text, media = [], []
    for item in content:
        if isinstance(item, dict) and item.get("type") == "media":
            text.append(MARKER)
            media.append(item["media"])
        elif isinstance(item, dict):
            text.append(str(item.get("text") or ""))
    return "".join(text), media
