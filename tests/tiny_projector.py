"""A header-only multimodal projector (mmproj) GGUF for the store's tests: the keys infer's
capability check reads (`clip.has_vision_encoder`, `clip.has_audio_encoder`) and one small
random tensor, in any vision/audio combination, fast to write. libmtmd cannot load it: the store
only reads headers, and a test that runs a projector uses tests/tiny_vision.py's real ones
(image and audio files: tests/tiny_media.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiny_gguf import finish


def write_header_projector(
    path: Path, *, vision: bool = True, audio: bool = False, seed: int = 0
) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.has_vision_encoder", vision)
    w.add_bool("clip.has_audio_encoder", audio)
    rng = np.random.default_rng(seed)
    w.add_tensor("mm.input_projection.weight", rng.standard_normal((8, 8)).astype(np.float32))
    return finish(w, path)


def projector_bytes(tmp: Path, *, vision: bool = True, audio: bool = False, seed: int = 0) -> bytes:
    """The file's bytes (different bytes per seed)."""
    name = f"mmproj-{int(vision)}{int(audio)}-{seed}.gguf"
    return write_header_projector(tmp / name, vision=vision, audio=audio, seed=seed).read_bytes()
