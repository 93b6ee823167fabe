"""Tiny vision fixtures: a random-weight projector GGUF of a real architecture that libmtmd loads,
paired with tests/tiny_gguf.py's tiny llama (the image and audio files: tests/tiny_media.py).

The projector is LLaVA's ("mlp"): a 2-layer ViT (n_embd 32, patches of 8 on a 32 x 32 image, so
16 image tokens) whose features go through mm.0 -> GELU -> mm.2 into the text model's n_embd.
LLaVA adds no begin/end-of-image text and decodes images causally, so any text model of the
same n_embd pairs with it. Weights are random: the answers are noise, but deterministic noise
that llama-mtmd-cli computes too, which is what the equality tests compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.tiny_gguf import CONTROL, N_EMBD, TEMPLATE, finish, llama_writer, write_llama_weights

V_EMBD, V_HEAD, V_FF, V_LAYER = 32, 4, 48, 2
IMAGE_SIZE, PATCH = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
# ViT-B/16 at 224 pixels (CLIP's and SigLIP-B's shape; 196 image tokens): random weights that
# cost a real projector's compute, for benchmarks/vision.py.
BASE = (768, 12, 3072, 12, 224, 16)


def write_tiny_projector(
    path: Path,
    *,
    n_embd_text: int = N_EMBD,
    seed: int = 1,
    size: tuple[int, int, int, int, int, int] = (V_EMBD, V_HEAD, V_FF, V_LAYER, IMAGE_SIZE, PATCH),
) -> Path:
    """A LLaVA-style projector for a text model of `n_embd_text` (another n_embd makes the
    mismatched projector the refusal tests need). `size`: the ViT's (n_embd, heads, n_ff,
    layers, image size, patch size); benchmarks/vision.py writes a ViT-B/16-sized one (BASE)
    so that encoding costs what a real projector's does."""
    import gguf

    V_EMBD, V_HEAD, V_FF, V_LAYER, IMAGE_SIZE, PATCH = size
    IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.projection_dim", n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def tensor(name: str, *shape: int, scale: float = 0.3) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    # numpy shapes are ggml's ne reversed: the conv kernel is ne [8, 8, 3, V_EMBD]
    tensor("v.patch_embd.weight", V_EMBD, 3, PATCH, PATCH, scale=0.1)
    tensor("v.patch_embd.bias", V_EMBD)
    tensor("v.position_embd.weight", IMAGE_TOKENS, V_EMBD)
    for i in range(V_LAYER):
        for part in ("q", "k", "v", "out"):
            tensor(f"v.blk.{i}.attn_{part}.weight", V_EMBD, V_EMBD)
            tensor(f"v.blk.{i}.attn_{part}.bias", V_EMBD)
        for ln in ("ln1", "ln2"):
            ones(f"v.blk.{i}.{ln}.weight", V_EMBD)
            tensor(f"v.blk.{i}.{ln}.bias", V_EMBD, scale=0.01)
        tensor(f"v.blk.{i}.ffn_up.weight", V_FF, V_EMBD)
        tensor(f"v.blk.{i}.ffn_up.bias", V_FF)
        tensor(f"v.blk.{i}.ffn_down.weight", V_EMBD, V_FF)
        tensor(f"v.blk.{i}.ffn_down.bias", V_EMBD)
    tensor("mm.0.weight", n_embd_text, V_EMBD)
    tensor("mm.0.bias", n_embd_text)
    tensor("mm.2.weight", n_embd_text, n_embd_text)
    tensor("mm.2.bias", n_embd_text)
    return finish(w, path)


def write_tiny_text_model(path: Path, *, seed: int = 0) -> Path:
    """tests/tiny_gguf.py's tiny llama without SentencePiece's space prefix: its vocabulary is
    the 256 bytes, so any split of the prompt into tokenizer calls gives the same tokens. (infer
    tokenizes template text and message text apart, llama-mtmd-cli the text between two media
    in one call; with a space prefix each call would start with its own space.)"""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [t.encode() for t in CONTROL] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] * 256
    w = llama_writer(path, tokens, types, template=TEMPLATE)
    w.add_add_space_prefix(False)

    write_llama_weights(w, rng, len(tokens))
    return finish(w, path)


A_EMBD, A_HEAD, A_FF, A_LAYER, A_MEL, A_POS = 32, 4, 48, 1, 128, 1500


def write_tiny_audio_projector(path: Path, *, n_embd_text: int = N_EMBD, seed: int = 2) -> Path:
    """A Qwen2-Audio-style projector ("qwen2a"): a 1-layer Whisper encoder (conv1d stem,
    n_embd 32, 128 mel bins) and one linear layer into the text model's n_embd. libmtmd frames
    its chunk with <|audio_bos|> and <|audio_eos|>, tokenized as text (bytes, here)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", False)
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.projector_type", "qwen2a")
    w.add_uint32("clip.audio.embedding_length", A_EMBD)
    w.add_uint32("clip.audio.feed_forward_length", A_FF)
    w.add_uint32("clip.audio.block_count", A_LAYER)
    w.add_uint32("clip.audio.projection_dim", n_embd_text)
    w.add_uint32("clip.audio.attention.head_count", A_HEAD)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.audio.num_mel_bins", A_MEL)

    def tensor(name: str, *shape: int, scale: float = 0.3) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("a.conv1d.1.weight", A_EMBD, A_MEL, 3, scale=0.05)  # ne [3, mel, embd]
    tensor("a.conv1d.1.bias", A_EMBD, 1)
    tensor("a.conv1d.2.weight", A_EMBD, A_EMBD, 3, scale=0.1)
    tensor("a.conv1d.2.bias", A_EMBD, 1)
    tensor("a.position_embd.weight", A_POS, A_EMBD, scale=0.1)
    for i in range(A_LAYER):
        for part in ("q", "k", "v", "out"):
            tensor(f"a.blk.{i}.attn_{part}.weight", A_EMBD, A_EMBD)
            if part != "k":  # Whisper's key projection has no bias
                tensor(f"a.blk.{i}.attn_{part}.bias", A_EMBD)
        for ln in ("ln1", "ln2"):
            w.add_tensor(f"a.blk.{i}.{ln}.weight", np.ones(A_EMBD, dtype=np.float32))
            tensor(f"a.blk.{i}.{ln}.bias", A_EMBD, scale=0.01)
        tensor(f"a.blk.{i}.ffn_up.weight", A_FF, A_EMBD)
        tensor(f"a.blk.{i}.ffn_up.bias", A_FF)
        tensor(f"a.blk.{i}.ffn_down.weight", A_EMBD, A_FF)
        tensor(f"a.blk.{i}.ffn_down.bias", A_EMBD)
    tensor("mm.a.fc.weight", n_embd_text, A_EMBD)
    tensor("mm.a.fc.bias", n_embd_text)
    return finish(w, path)
