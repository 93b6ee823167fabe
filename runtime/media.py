"""Images and audio that a request carries: the one internal form every front door hands to the
runtime. A door (the CLI's --image, OpenAI's image_url, Ollama's images, Anthropic's image
blocks) turns what it was sent into bytes and places a `part(media)` in the message's content
list where the media goes; the runtime renders each such part as libmtmd's marker and hands the
bytes to libmtmd in the same order.

Shared base: imports no layer, so every door can build these without loading llama.cpp.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

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
