"""What features may use of a backend: a loaded `Model`, and the multi-sequence `Context`s made
over it. runtime/llama/ implements both on llama.cpp (engine.LlamaCppEngine is a Model with a
single-sequence context of its own, the fast path of `infer run`; context.LlamaContext is the
Context); tests/fakes.py implements them with scripted logits, so scheduling logic is tested
without a model.

A Context holds `n_seq_max` sequences (ids 0..n_seq_max-1), each with its own KV cells, token
history and sampler chain. Work is queued with `add` and runs in one `decode` (one llama.cpp
batch); sequences join and leave between decodes, which is what continuous batching needs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..params import SamplingParams


class Model(Protocol):
    """A loaded model: its vocabulary, chat template and metadata."""

    n_ctx_train: int
    chat_template: str | None
    bos_text: str
    eos_text: str

    def tokenize(self, text: str, special: bool) -> list[int]: ...

    def with_bos(self, tokens: list[int]) -> list[int]: ...

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (a piece of UTF-8, maybe not a whole character)."""
        ...

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT, …)."""
        ...

    def new_context(self, n_seq_max: int, n_ctx_seq: int, n_batch: int) -> Context:
        """A context with `n_seq_max` sequences of `n_ctx_seq` cells each, decoding at most
        `n_batch` tokens per step. EngineError when it cannot be made (memory)."""
        ...


class Context(Protocol):
    n_seq_max: int
    n_ctx_seq: int  # KV cells per sequence: positions 0..n_ctx_seq-1
    n_batch: int  # most tokens one decode takes

    def tokens(self, seq: int) -> Sequence[int]:
        """What sequence `seq`'s KV cells hold, in order (live: do not modify)."""
        ...

    def room(self) -> int:
        """Tokens that may still be queued for the next decode."""
        ...

    def add(self, seq: int, tokens: Sequence[int], logits: int) -> int:
        """Queue `tokens` for `seq`, after what it holds (and what is queued for it already).
        The logits of the last `logits` of them are kept (True: the last one; speculative
        verification wants all): the batch row of the first of those, for `sample` after the
        decode (rows follow), else -1. ValueError past `room()` or the sequence's cells."""
        ...

    def decode(self, cancel: threading.Event | None = None) -> None:
        """Decode what is queued, in one batch; then `tokens(seq)` includes it. With `cancel`,
        setting it stops a long decode (Interrupted; nothing queued is kept). EngineError when
        llama.cpp fails (nothing queued is kept either)."""
        ...

    def logits(self, row: int, n: int) -> Any:
        """The logits of `n` consecutive batch rows from `row` of the last decode (rows that
        asked for them): a buffer of n x n_vocab float32 that numpy can view, valid until the
        next decode."""
        ...

    def set_sampler(self, seq: int, params: SamplingParams) -> None:
        """Give `seq` a fresh sampler chain for `params` (its own random state and penalties)."""
        ...

    def sample(self, seq: int, row: int) -> int:
        """Sample `seq`'s next token from the logits of batch row `row` of the last decode
        (-1: its last row), with its chain (which records the token: penalties see it)."""
        ...

    def remove(self, seq: int, start: int = 0) -> None:
        """Forget positions `start`.. of `seq` (0: all of it, and its sampler)."""
        ...

    def copy(self, src: int, dst: int) -> None:
        """Make `dst` hold what `src` holds (no decode); `dst` keeps its own sampler."""
        ...

    def identity(self) -> dict[str, Any]:
        """What a saved state depends on besides the model: the library and its state format,
        and the settings that change the numbers in the KV cache (a prompt cache's key)."""
        ...

    def save(self, seq: int, path: Path) -> int:
        """Write `seq`'s state to `path`; its size in bytes (0: llama.cpp could not)."""
        ...

    def restore(self, seq: int, path: Path, tokens: Sequence[int]) -> bool:
        """Load a state saved by `save` that covers exactly `tokens` into the empty `seq`.
        False (and `seq` empty) otherwise."""
        ...

    def sharing_cores(self) -> SharedCores:
        """`with ctx.sharing_cores():` while this context decodes, so concurrent infer
        processes split the cores (llama/core_share.py)."""
        ...

    def close(self) -> None: ...


class SharedCores(Protocol):
    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...
