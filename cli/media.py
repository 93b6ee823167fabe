"""--image, --audio and --mmproj for run and chat (and chat's /image and /audio): media files
read and checked (runtime/media.py: format and size from the header, before any model loads),
and the projector that lets the model take them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import MediaError, UsageError

if TYPE_CHECKING:
    from infer.runtime.media import Media, MediaKind


def read_media(kind: MediaKind, name: str, index: int) -> Media:
    """The file `name` (`-`: stdin) as a checked Media; MediaError or UsageError naming it."""
    from infer.runtime.media import MAX_BYTES, Media, check

    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"--{kind} {name}: cannot read it: {e.strerror or e}") from None
    media = Media(kind, data)
    try:
        check(media)
    except MediaError as e:
        raise MediaError(f"--{kind} {name}: {e.reason}") from None
    return media


def read_all(images: list[str] | None, audio: list[str] | None) -> tuple[Media, ...]:
    """--image then --audio files, in the order given within each."""
    named: list[tuple[MediaKind, str]] = [("image", n) for n in images or []]
    named += [("audio", n) for n in audio or []]
    if sum(1 for _, n in named if n == "-") > 1:
        raise UsageError("only one --image or --audio can be read from stdin (-)")
    return tuple(read_media(kind, name, i) for i, (kind, name) in enumerate(named))


def projector(mmproj: str | None, model_path: Path, needed: bool) -> Path | None:
    """--mmproj, else the projector stored with the model; a usage error when media were given
    and there is none."""
    if mmproj is not None:
        path = Path(mmproj)
        if not path.is_file():
            raise UsageError(f"--mmproj {mmproj}: no such file")
        return path
    from infer.runtime.models.projector import projector_for

    found = projector_for(model_path)
    if found is None and needed:
        raise MediaError(
            f"{model_path.name} takes no images or audio: it has no projector "
            "(give its mmproj file with --mmproj FILE)"
        )
    return found


def with_media(
    messages: tuple[dict[str, Any], ...], media: tuple[Media, ...]
) -> tuple[dict[str, Any], ...]:
    """`messages` with `media` placed in the last (the user's) message's content."""
    if not media:
        return messages
    from infer.runtime.media import place

    last = dict(messages[-1])
    last["content"] = place(str(last["content"]), media)
    return (*messages[:-1], last)
