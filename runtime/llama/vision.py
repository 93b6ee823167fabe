"""Images and audio through llama.cpp's libmtmd: the projector (mmproj) loaded beside a model,
media turned into prompt chunks, and those chunks evaluated into a sequence's KV cache.

A prompt with media stays a list of token ids, so that every part of the runtime that compares,
counts, trims or caches prompts keeps working: each position a media chunk fills holds a
*media token*, a negative id made from the media's sha256 (Media.id, also set as the bitmap's
id). The same picture therefore gives the same ids, a second question about it shares the
prefix the KV cache holds, and it is not encoded again (in chat, and across runs through the
prompt cache, whose files store the ids with the state). `MediaPrompt` carries, beside the ids,
the libmtmd chunk to evaluate at each media run's start.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..answer import Stats
from ..errors import EngineError, MediaError
from ..media import MARKER, Media, check
from ..models.gguf import read_header
from .bindings import mtmd
from .engine import route_mtmd_logs

RECENT = 8  # media whose chunks a projector keeps (the chunks hold the preprocessed pixels)


def media_token(media_id: str, projector_key: str) -> int:
    """The id every position of one media's chunk holds: negative (no vocabulary token is),
    from its sha256 and the projector's identity (another projector makes other embeddings
    of the same picture, which a prompt cache entry must not be taken for), within int32."""
    digest = hashlib.sha256(f"{projector_key}\0{media_id}".encode()).hexdigest()
    return -1 - int(digest[:7], 16)


@dataclass
class Span:
    """One media chunk inside a MediaPrompt: `n` positions from its start."""

    chunk: Any  # mtmd_input_chunk_p, owned by `owner`
    n: int
    owner: Any  # the _Chunks it lives in (kept alive with the prompt)
    kind: str


class MediaPrompt(list[int]):
    """Prompt token ids with media tokens, and the chunk to evaluate at each media run's start
    (`spans`, by position)."""

    spans: dict[int, Span]
    projector: Projector

    def span_starts(self) -> list[int]:
        return sorted(self.spans)


class _Chunks:
    """An mtmd_input_chunks list, freed with its last reference."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.ptr = lib.mtmd_input_chunks_init()

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.mtmd_input_chunks_free(self.ptr)
            self.ptr = None


class Projector:
    """A projector GGUF loaded for a model (its llama_model pointer `handle`, its `n_embd`), on
    the GPU when `gpu` (the model's layers are offloaded)."""

    def __init__(self, path: Path, handle: Any, n_embd: int, threads: int, gpu: bool) -> None:
        _check_fits(path, n_embd)
        self._lib = lib = mtmd()
        route_mtmd_logs(lib)
        params = lib.mtmd_context_params_default()
        params.use_gpu = gpu  # where the model's layers went (llama-mtmd-cli's default: GPU)
        params.n_threads = threads
        params.print_timings = False
        self.path = path
        st = path.stat()
        self.key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        self._ctx = lib.mtmd_init_from_file(str(path).encode(), handle, params)
        if not self._ctx:
            raise MediaError(
                f"{path.name} is not a projector this model can use (llama.cpp could not load it)"
            )
        if lib.mtmd_decode_use_mrope(self._ctx):
            self.close()
            raise MediaError(f"{path.name}: projectors with M-RoPE positions are not supported yet")
        self.vision = bool(lib.mtmd_support_vision(self._ctx))
        self.audio = bool(lib.mtmd_support_audio(self._ctx))
        self._non_causal = False
        self.encoded = 0  # media encoded since load, and the seconds it took
        self.encode_s = 0.0
        self._recent: dict[str, list[list[int] | Span]] = {}
        # The server tokenizes requests on worker threads while its decode thread evaluates:
        # one libmtmd call at a time on this context.
        self._lock = threading.Lock()

    def pieces(self, media: Media, index: int) -> list[list[int] | Span]:
        """`media` as libmtmd tokenizes it at a marker: text token lists (some models frame an
        image with text such as <start_of_image>) and the media chunk itself. The last few are
        kept by id: a chat's next question (and its window fitting) would decode and resize the
        same picture again."""
        with self._lock:
            cached = self._recent.pop(media.id, None)
            if cached is None:
                cached = self._tokenize(media, index)
            self._recent[media.id] = cached  # most recent last
            while len(self._recent) > RECENT:
                del self._recent[next(iter(self._recent))]
            return cached

    def _tokenize(self, media: Media, index: int) -> list[list[int] | Span]:
        check(media, index)
        if media.kind == "image" and not self.vision:
            raise MediaError(f"the projector {self.path.name} takes no images", index)
        if media.kind == "audio" and not self.audio:
            raise MediaError(f"the projector {self.path.name} takes no audio", index)
        lib = self._lib
        buf = (ctypes.c_uint8 * len(media.data)).from_buffer_copy(media.data)
        bitmap = lib.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(media.data), False)
        if not bitmap:
            raise MediaError(f"libmtmd could not decode the {media.kind}", index)
        try:
            lib.mtmd_bitmap_set_id(bitmap, media.id.encode())
            chunks = _Chunks(lib)
            text = lib.mtmd_input_text()
            marker = MARKER.encode()
            text.text, text.text_len = marker, len(marker)
            text.add_special, text.parse_special = False, True
            bitmaps = (lib.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = lib.mtmd_tokenize(self._ctx, chunks.ptr, ctypes.byref(text), bitmaps, 1)
        finally:
            lib.mtmd_bitmap_free(bitmap)
        if rc != 0:
            raise MediaError(f"libmtmd could not tokenize the {media.kind} (code {rc})", index)
        out: list[list[int] | Span] = []
        for i in range(lib.mtmd_input_chunks_size(chunks.ptr)):
            chunk = lib.mtmd_input_chunks_get(chunks.ptr, i)
            if lib.mtmd_input_chunk_get_type(chunk) == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ids = lib.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                out.append([int(ids[k]) for k in range(n.value)])
            else:
                n_tokens = int(lib.mtmd_input_chunk_get_n_tokens(chunk))
                out.append(Span(chunk, n_tokens, chunks, media.kind))
        return out

    def prompt(self, pieces: Sequence[list[int] | Media]) -> MediaPrompt:
        """Token lists and media, in prompt order, as one MediaPrompt."""
        prompt = MediaPrompt()
        prompt.spans, prompt.projector = {}, self
        index = 0
        for piece in pieces:
            if isinstance(piece, Media):
                for part in self.pieces(piece, index):
                    if isinstance(part, Span):
                        prompt.spans[len(prompt)] = part
                        prompt.extend([media_token(piece.id, self.key)] * part.n)
                    else:
                        prompt.extend(part)
                index += 1
            else:
                prompt.extend(piece)
        if prompt.spans and max(s + p.n for s, p in prompt.spans.items()) == len(prompt):
            # The last position must be a token whose logits are sampled from.
            raise MediaError("the prompt ends with a media: put text after it")
        return prompt

    def evaluate(self, span: Span, lctx: Any, n_past: int, seq: int, n_batch: int) -> None:
        """Encode the span's media and decode its embeddings into sequence `seq` at `n_past`."""
        lib = self._lib
        new_n_past = ctypes.c_int32(0)  # llama_pos
        with self._lock:
            started = time.perf_counter()
            rc = lib.mtmd_helper_eval_chunk_single(
                self._ctx, lctx, span.chunk, n_past, seq, n_batch, False, ctypes.byref(new_n_past)
            )
            self.encode_s += time.perf_counter() - started
            self.encoded += 1
        if rc != 0:
            raise EngineError(f"libmtmd could not evaluate the {span.kind} (code {rc})")

    def close(self) -> None:
        self._recent.clear()
        if self._ctx:
            self._lib.mtmd_free(self._ctx)
            self._ctx = None


def _check_fits(path: Path, n_embd: int) -> None:
    """Refuse a projector made for another text model before libmtmd sees it (an embedding size
    mismatch is one of the things it may abort on)."""
    try:
        header = read_header(path)
    except Exception as e:  # the header reader's own errors name the problem
        raise MediaError(f"{path.name} is not a projector GGUF: {e}") from None
    if header.architecture != "clip":
        raise MediaError(
            f"{path.name} is not a projector (its architecture is "
            f"'{header.architecture}', not 'clip')"
        )
    dim = header.metadata.get("clip.vision.projection_dim") or header.metadata.get(
        "clip.audio.projection_dim"
    )
    if isinstance(dim, int) and dim and dim != n_embd:
        raise MediaError(
            f"{path.name} projects into {dim} dimensions but the model has {n_embd}: "
            "it is another model's projector"
        )


def span_projector(prompt: Sequence[int]) -> Projector:
    projector: Projector = getattr(prompt, "projector")  # noqa: B009 (a MediaPrompt's)
    return projector


def prompt_spans(prompt: Sequence[int]) -> dict[int, Span]:
    """The media spans of a prompt (none for a plain token list)."""
    return getattr(prompt, "spans", None) or {}


def media_safe(keep: int, prompt: Sequence[int]) -> int:
    """`keep` moved back to the start of the media run it falls inside (a chunk is evaluated
    whole or not at all)."""
    for start, span in prompt_spans(prompt).items():
        if start < keep < start + span.n:
            return start
    return keep


def media_counts(prompt: Sequence[int]) -> tuple[int, float] | None:
    """The projector's encode counters before a prompt is evaluated (None: no media in it)."""
    if not prompt_spans(prompt):
        return None
    projector = span_projector(prompt)
    return projector.encoded, projector.encode_s


def media_stats(stats: Stats, prompt: Sequence[int], before: tuple[int, float]) -> None:
    """Fill the media fields of `stats` for `prompt`, its counters read `before` evaluation."""
    spans = prompt_spans(prompt)
    projector = span_projector(prompt)
    stats.media = len(spans)
    stats.media_tokens = sum(span.n for span in spans.values())
    stats.media_encoded = projector.encoded - before[0]
    stats.encode_s = projector.encode_s - before[1]
