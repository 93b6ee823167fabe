"""Embeddings: a llama.cpp context with `embeddings` on, computing vectors as llama.cpp's own
`llama-embedding` does (examples/embedding/embedding.cpp in the vendored source).

Inputs are packed into one batch while they fit (one sequence id each, every token marked for
output), the memory is cleared before each batch, and each input's vector is read with
`llama_get_embeddings_seq` (pooled) or `llama_get_embeddings_ith` per token (pooling "none").
Like llama-embedding: a unified KV cache, the batch as large as the context, and for non-causal
(encoder, BERT-style) models a micro-batch as large as the batch, since such a model must see
a whole input at once. Encoder-only models run `llama_encode`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import EngineError, Interrupted, OptionError, UsageError

if TYPE_CHECKING:
    from .interface import Model
    from .weights import Weights

POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}  # LLAMA_POOLING_TYPE_*
POOLING_NAMES = {v: k for k, v in POOLING.items()}
DEFAULT_POOLING = "mean"  # for a model whose GGUF names none (decoder LLMs): a sentence vector
MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences one batch may hold


def gguf_pooling(engine: Model) -> str | None:
    """The pooling the GGUF asks for ("{arch}.pooling_type"), None when it names none."""
    value = engine.header.arch_value("pooling_type")
    if isinstance(value, int) and value in POOLING_NAMES and value != 0:
        return POOLING_NAMES[value]
    return None


def is_encoder_only(engine: Model) -> bool:
    """A model that must run `llama_encode` (the encoder of a T5-style model on its own)."""
    weights = cast("Weights", engine)  # only llama.cpp's models reach here
    ll, model = weights._ll, weights._model
    return bool(ll.llama_model_has_encoder(model)) and not bool(ll.llama_model_has_decoder(model))


def is_non_causal(engine: Model) -> bool:
    """Attention both ways (BERT-style): such a model must see a whole input at once."""
    return engine.header.arch_value("attention.causal", True) is False


def is_embedding_model(engine: Model) -> bool:
    """A model that makes vectors, not text: an encoder, or non-causal attention."""
    return is_encoder_only(engine) or is_non_causal(engine)


def makes_no_sentence_vectors(engine: Model) -> bool:
    """The GGUF says pooling "none" outright: a vector per token, nothing for a whole text."""
    return engine.header.arch_value("pooling_type") == 0


def embedding_tokens(engine: Model, text: str) -> list[int]:
    """`text`'s tokens as llama-embedding makes them: BOS/EOS/SEP as the vocabulary adds them,
    control-token markup parsed (common_tokenize(…, add_special=true, parse_special=true))."""
    buf, n = engine.tokenize_into_buffer(text, add_special=True, special=True)
    return list(buf[:n])


def default_ctx(engine: Model) -> int:
    """Tokens per batch, so also the longest input: the trained context, at most 4096."""
    return min(engine.n_ctx_train or 4096, 4096)


class Embedder:
    """Vectors for lists of token sequences. `pooling`: "mean" | "cls" | "last" | "none" |
    "rank" (None: the GGUF's, else mean). `n_ctx`: the most tokens one batch holds, so also the
    longest input; `n_seq_max`: the most inputs one batch holds. (A quantized model's numbers
    depend slightly on how many rows a batch has: one input per batch reproduces llama-server,
    which embeds each input on its own; the default packs as llama-embedding does.)"""

    def __init__(
        self, model: Model, *, pooling: str | None, n_ctx: int, n_seq_max: int = MAX_SEQ
    ) -> None:
        engine = cast("Weights", model)  # only llama.cpp's models reach here
        self._ll = ll = engine._ll
        self._engine = engine
        chosen = pooling or gguf_pooling(engine) or DEFAULT_POOLING
        if chosen not in POOLING:
            raise OptionError("pooling", f"must be one of {', '.join(POOLING)} (got {chosen!r})")
        model = engine._model
        self.encoder_only = is_encoder_only(engine)
        if bool(ll.llama_model_has_encoder(model)) and bool(ll.llama_model_has_decoder(model)):
            raise UsageError("embeddings of encoder-decoder models are not supported")
        params = ll.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = POOLING[chosen]
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        # A non-causal model must see a whole input in one micro-batch (llama.cpp asserts it).
        params.n_ubatch = n_ctx if self.encoder_only or is_non_causal(engine) else min(512, n_ctx)
        if not 1 <= n_seq_max <= MAX_SEQ:
            raise OptionError("parallel", f"must be between 1 and {MAX_SEQ} (got {n_seq_max})")
        # No more inputs than tokens in a batch: llama.cpp reserves an output per sequence
        # within the batch's outputs and GGML_ASSERTs when they are more (an n_ctx under 256).
        n_seq_max = min(n_seq_max, n_ctx)
        self.n_seq_max = n_seq_max  # inputs per batch
        params.n_seq_max = n_seq_max
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = engine.threads
        self._handle = ll.llama_init_from_model(model, params)
        if not self._handle:
            raise EngineError(
                f"llama.cpp could not create an embedding context of {n_ctx} tokens "
                "(out of memory? try a smaller --ctx-size)"
            )
        self.pooling = POOLING_NAMES.get(int(ll.llama_pooling_type(self._handle)), chosen)
        self.n_ctx = int(ll.llama_n_ctx(self._handle))
        self.n_batch = min(n_ctx, self.n_ctx)
        self.n_embd = int(ll.llama_model_n_embd_out(model))
        self._mem = ll.llama_get_memory(self._handle)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._cores = engine.core_share(self._handle)

    def embed(
        self,
        inputs: Sequence[Sequence[int]],
        *,
        normalize: bool = True,
        cancel: threading.Event | None = None,
    ) -> list[list[float]] | list[list[list[float]]]:
        """One vector per input (pooling "none": one per token of each input), in order.
        Inputs are decoded together while they fit in a batch; each must fit alone."""
        out: list[Any] = []
        start = 0
        with self._cores:
            while start < len(inputs):
                end, used = start, 0
                while (
                    end < len(inputs)
                    and end - start < self.n_seq_max
                    and used + len(inputs[end]) <= self.n_batch
                ):
                    used += len(inputs[end])
                    end += 1
                if end == start:
                    raise UsageError(
                        f"an input is {len(inputs[start])} tokens; the context holds "
                        f"{self.n_batch} (use a larger --ctx-size, or --truncate)"
                    )
                out.extend(self._run(inputs[start:end], normalize, cancel))
                start = end
        return out

    def _run(
        self, inputs: Sequence[Sequence[int]], normalize: bool, cancel: threading.Event | None
    ) -> list[Any]:
        ll, b = self._ll, self._batch
        ll.llama_memory_clear(self._mem, True)
        n = 0
        for seq, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, 1
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        if cancel is not None and cancel.is_set():
            raise Interrupted()
        self._cores.step()
        run = ll.llama_encode if self.encoder_only else ll.llama_decode
        if cancel is not None:
            with self._engine.abort_on(cancel, self._handle):
                rc = int(run(self._handle, b))
        else:
            rc = int(run(self._handle, b))
        if rc == 2 or (cancel is not None and cancel.is_set()):
            raise Interrupted()
        if rc != 0:
            raise EngineError(f"llama.cpp failed to compute embeddings (code {rc})")
        dim = self.n_embd
        if self.pooling == "none":
            vectors: list[Any] = []
            row = 0
            for tokens in inputs:
                vectors.append(
                    [
                        self._read(
                            ll.llama_get_embeddings_ith(self._handle, row + i), dim, normalize
                        )
                        for i in range(len(tokens))
                    ]
                )
                row += len(tokens)
            return vectors
        if self.pooling == "rank":
            dim = max(1, int(ll.llama_model_n_cls_out(self._engine._model)))
            normalize = False  # scores, as llama-embedding prints them
        return [
            self._read(ll.llama_get_embeddings_seq(self._handle, seq), dim, normalize)
            for seq in range(len(inputs))
        ]

    @staticmethod
    def _read(ptr: Any, dim: int, normalize: bool) -> list[float]:
        if not ptr:
            raise EngineError("llama.cpp returned no embedding")
        values = list((ctypes.c_float * dim).from_address(ctypes.addressof(ptr.contents)))
        if not normalize:
            return values
        # common_embd_normalize with embd_norm 2 (llama-embedding's default): Euclidean, in double.
        norm = math.sqrt(math.fsum(v * v for v in values))
        scale = 1.0 / norm if norm > 0 else 0.0
        return [v * scale for v in values]

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._handle)
            self._handle = None

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
