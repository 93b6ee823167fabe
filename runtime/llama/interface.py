"""The backend, as every feature sees it (the only shapes outside runtime/llama/): a loaded
`Model`, which owns no context, and what is made over it for the work at hand: multi-sequence
`Context`s (continuous batching) and single-sequence `Session`s (the lean per-token loop of
`infer run`), as llama.cpp keeps llama_model and llama_context apart. runtime/llama/ implements
them on llama.cpp (model.LlamaModel, context.LlamaContext, session.LlamaSession);
tests/fakes.py with scripted logits, so scheduling logic is tested without a model.

A Context holds `n_seq_max` sequences (ids 0..n_seq_max-1), each with its own KV cells, token
history and sampler chain. Work is queued with `add` and runs in one `decode` (one llama.cpp
batch); sequences join and leave between decodes, which is what continuous batching needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..media import Media
from ..models.gguf import GGUFHeader
from ..params import SamplingParams
from .lora import LoadedAdapter
from .offload import DeviceShare


class Model(Protocol):
    """A loaded model: its vocabulary, chat template and metadata, built complete by the loader
    (load time and prompt cache included)."""

    header: GGUFHeader
    n_ctx: int  # the window a session gets by default (the one the load was checked for)
    n_ctx_train: int
    n_vocab: int
    n_layers: int  # llama.cpp's count: the repeating layers and the output layer
    offloaded_layers: int  # of those, on a GPU or RPC device
    split: list[DeviceShare]  # which device holds which layers (empty: all on this CPU)
    threads: int
    chat_template: str | None
    bos_id: int  # -1: none
    eos_id: int
    add_bos: bool
    bos_text: str
    eos_text: str
    load_s: float  # seconds the load took
    adapters: list[LoadedAdapter]  # LoRA adapters loaded with it (LoadOptions.lora), in order

    @property
    def is_recurrent(self) -> bool: ...

    def tokenize(self, text: str, special: bool) -> list[int]: ...

    def tokenize_into_buffer(
        self, text: str, *, add_special: bool, special: bool
    ) -> tuple[Any, int]:
        """The tokens in a buffer numpy can view, and how many there are; `add_special` adds
        BOS/EOS as the vocabulary does."""
        ...

    def token_text(self, token: int) -> str:
        """The vocabulary's text for `token` (control tokens as their markup)."""
        ...

    def with_bos(self, tokens: list[int]) -> list[int]: ...

    def media_prompt(self, pieces: Sequence[list[int] | Media]) -> list[int]:
        """Token lists and media (runtime/media.py) in prompt order as one prompt, each media
        as the chunk its projector makes; MediaError when the model has no projector for it,
        or a media cannot be used."""
        ...

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (a piece of UTF-8, maybe not a whole character)."""
        ...

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT, …)."""
        ...

    def new_context(
        self, n_seq_max: int, n_ctx_seq: int, n_batch: int, *, flash_attn: bool | None = None
    ) -> Context:
        """A context with `n_seq_max` sequences of `n_ctx_seq` cells each, decoding at most
        `n_batch` tokens per step. `flash_attn` chooses the attention kernel (None: the
        backend's default); the two round differently (docs/determinism.md). EngineError when
        it cannot be made (memory)."""
        ...

    def new_session(self, n_ctx: int | None = None) -> Session:
        """One sequence of `n_ctx` tokens (None: `n_ctx`), for one conversation at a time.
        EngineError when it cannot be made (memory)."""
        ...

    def close(self) -> None:
        """Free the weights (and the sessions made over them)."""
        ...


class Session(Protocol):
    """One sequence over a model with the lean per-token loop of `infer run`: the tokens its
    KV cache holds are remembered, so a prompt that extends the last one decodes only its new
    tokens (and a long first prompt may come from the model's prompt cache)."""

    n_ctx: int  # the window
    n_batch: int  # most prompt tokens one decode takes
    prompt_eval_tokens: int  # of the last prompt, tokens decoded (the rest were held already)

    @property
    def model(self) -> Model: ...

    @property
    def context(self) -> Context:
        """The sequence as a Context's sequence 0 (speculative verification, perplexity)."""
        ...

    @property
    def tokens(self) -> Sequence[int]:
        """What the KV cache holds, in order (live: do not modify)."""
        ...

    @property
    def n_past(self) -> int: ...

    def decode_prompt(self, prompt: list[int], cancel: threading.Event) -> None:
        """Make the KV cache hold exactly `prompt` (its last token decoded, so its logits are
        there to sample), decoding only what differs from what it holds."""
        ...

    def generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        *,
        ignore_eog: bool = False,
        on_sample: Callable[[int, Any], None] | None = None,
    ) -> Generator[bytes, None, None]:
        """Decode `prompt`, then yield each sampled token's bytes until end of generation
        (unless `ignore_eog`) or a full window; Interrupted when `cancel` is set. `on_sample`
        gets each token yielded, just before, with the logits row it was sampled from (a
        buffer of n_vocab float32, valid until the generator resumes): logprobs."""
        ...

    def reset(self) -> None:
        """Forget what the KV cache holds."""
        ...

    def sharing_cores(self) -> SharedCores: ...

    def close(self) -> None: ...


class PromptCache(Protocol):
    """generation/prompt_cache.py's PromptCache, as a session uses it (the model carries one)."""

    def restore(
        self, ctx: Context, seq: int, prompt: list[int], least: int | None = None
    ) -> bool: ...

    def save(
        self, ctx: Context, seq: int, prompt: list[int], evaluated: int, least: int | None = None
    ) -> bool: ...


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

    def add_media(self, seq: int, prompt: Sequence[int], start: int) -> int:
        """Evaluate now, into `seq`, the media chunk that starts at position `start` of
        `prompt` (a Model.media_prompt): encoded by the projector and decoded in batches of its
        own, while what is queued for other sequences waits for the next `decode`. `seq` must
        hold exactly the prompt up to `start`, with nothing queued for it. The positions it
        filled (then in `tokens(seq)`); ValueError when it does not fit."""
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

    @property
    def lora(self) -> tuple[float, ...]:
        """The scale each of the model's LoRA adapters is applied at now (0: not applied)."""
        ...

    def set_lora(self, scales: tuple[float, ...]) -> None:
        """Apply the model's adapters at `scales` (one per adapter) from the next decode on:
        llama.cpp applies one set to a whole decode. ValueError while tokens are queued."""
        ...

    def set_sampler(self, seq: int, params: SamplingParams, prompt: Sequence[int] = ()) -> None:
        """Give `seq` a fresh sampler chain for `params` (its own random state and penalties),
        the penalties primed with `prompt`'s last tokens, as llama.cpp's tools prime them."""
        ...

    def sample(self, seq: int, row: int) -> int:
        """Sample `seq`'s next token from the logits of batch row `row` of the last decode
        (-1: its last row), with its chain (which records the token: penalties see it)."""
        ...

    def sample_probs(
        self, seq: int, row: int, n: int
    ) -> tuple[int, float, list[tuple[int, float]]]:
        """As `sample`, and the probabilities the chain gave (llama-server's
        post_sampling_probs): (the token, its probability, the `n` likeliest candidates the
        chain left with a probability above 0, likeliest first). A chain that only picks
        (temperature 0) gives its pick probability 1."""
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

    def lead(self, follower: Any) -> None:
        """`follower` (another context's SharedCores, decoded on this one's thread between
        its decodes) takes this one's share of the cores from now on."""
        ...

    def take(self, threads: int) -> None: ...
