"""Writes the header of a multimodal projector (mmproj) GGUF for the store's tests: the keys
llama.cpp's clip loader and infer's capability check read (`clip.has_vision_encoder`,
`clip.has_audio_encoder`) and one small random tensor. It is not loadable by libmtmd: the
runtime's own tests build a real one; the store only reads headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiny_gguf import finish


def write_tiny_projector(
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
    return write_tiny_projector(tmp / name, vision=vision, audio=audio, seed=seed).read_bytes()
