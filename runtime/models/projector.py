"""Multimodal projectors (mmproj GGUFs): which one goes with a Hub repository's model, which one
a stored model has, and what it lets the model take in (images, audio).

A vision model is a text GGUF plus a projector GGUF. `infer pull` fetches the projector with
the model (chosen here as llama.cpp's `-hf` chooses it) and records it in the manifest; a
models.toml entry names one with its `mmproj` key. What a projector can do is read from its
GGUF header (`clip.has_vision_encoder`, `clip.has_audio_encoder`), never by loading llama.cpp,
so `infer list` and `/api/show` stay cheap.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ModelFileError
from .selection import RemoteFile

KEYWORD = "mmproj"
# llama.cpp's get_gguf_split_info tag: the last [-.]-separated name part before .gguf.
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
# The capability names Ollama reports in /api/show (types/model/capability.go).
VISION, AUDIO = "vision", "audio"


def _quant_bits(path: str) -> int:
    """llama.cpp's extract_quant_bits: Q4_K_M -> 4, F16 -> 16, no tag -> 0."""
    stem = re.sub(r"\.gguf$", "", path, flags=re.IGNORECASE)
    split = _SPLIT.match(stem)
    stem = split.group(1) if split else stem
    tag = _TAG.search(stem)
    digits = re.search(r"\d+", tag.group(1)) if tag else None
    return int(digits.group(0)) if digits else 0


def choose_projector(files: list[RemoteFile], model: str) -> RemoteFile | None:
    """The projector llama.cpp's `-hf` would fetch for `model` (common/download.cpp
    find_best_sibling with the keyword "mmproj"): a GGUF whose path contains "mmproj", in the
    model's folder or a folder above it; the deepest such folder wins, then the quantization
    closest in bits to the model's (Q8_0 for a Q8_0 model, F16 before F32 for a Q4_K_M one),
    then the first listed."""
    model_dirs = model.split("/")[:-1]
    model_bits = _quant_bits(model)
    best: tuple[int, int] | None = None  # (depth, -distance): larger is better
    chosen = None
    for f in files:
        if not f.path.lower().endswith(".gguf") or KEYWORD not in f.path.lower():
            continue
        dirs = f.path.split("/")[:-1]
        if dirs != model_dirs[: len(dirs)]:
            continue  # in another branch of the tree, or below the model's folder
        rank = (len(dirs), -abs(_quant_bits(f.path) - model_bits))
        if best is None or rank > best:
            best, chosen = rank, f
    return chosen


def capabilities(projector: Path) -> list[str]:
    """What a projector gives its model: "vision", "audio" (both for an omni model), from its
    GGUF header. Raises ModelFileError for a file that is not a projector GGUF."""
    from .gguf import read_header

    meta = read_header(projector).metadata
    caps = [VISION] if meta.get("clip.has_vision_encoder") is True else []
    caps += [AUDIO] if meta.get("clip.has_audio_encoder") is True else []
    if not caps:
        raise ModelFileError(projector, "not a multimodal projector (no vision or audio encoder)")
    return caps


def capabilities_or_none(projector: Path | None) -> list[str]:
    """As `capabilities`, for listings: no projector, or a broken one, gives none (running the
    model says what is wrong with it)."""
    if projector is None:
        return []
    try:
        return capabilities(projector)
    except ModelFileError:
        return []


def projector_for(model_path: Path) -> Path | None:
    """The projector to load with the model at `model_path`: the models.toml `mmproj` of the
    entry that runs this file, else the one `infer pull` recorded with it; None for a text-only
    model. Reads local files only."""
    from . import hub_cache
    from .registry import bundled_path, load_registry

    wanted = _same_file_key(model_path)
    for spec in load_registry().values():
        if spec.mmproj is None:
            continue
        paths: list[Path] = []
        if spec.bundled:
            found = bundled_path(spec.bundled)
            paths += [found] if found else []
        if spec.hub is not None:
            m = hub_cache.find(spec.hub)
            paths += [hub_cache.model_path(m)] if m is not None else []
        if any(_same_file_key(p) == wanted for p in paths):
            return spec.mmproj
    with_projector = [m for m in hub_cache.manifests() if m.mmproj is not None]
    # The link asked for first: two repositories may hold the same model bytes (one blob) with
    # different projectors.
    for m in with_projector:
        if hub_cache.model_path(m) == model_path:
            return hub_cache.mmproj_path(m)
    for m in with_projector:
        if _same_file_key(hub_cache.model_path(m)) == wanted:
            return hub_cache.mmproj_path(m)
    return None


def _same_file_key(path: Path) -> Path:
    """Paths compared after following links: a snapshot link and its blob are one file."""
    try:
        return path.resolve()
    except OSError:
        return path
