"""LlamaSession: one sequence over a model, with the lean per-token loop of `infer run` (the
`Session` of llama/interface.py).

The prompt is decoded in chunks of at most n_batch (a larger batch is a GGML_ASSERT that aborts
the process), Ctrl-C reaches llama_decode through the context's abort callback (only while a
prompt is decoded), and the per-token path is a handful of ctypes calls on preallocated buffers:
sample, the piece (cached per token id), decode on a reused one-token batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, Interrupted
from ..params import SamplingParams
from .context import LlamaContext
from .engine import _DeferredSigint
from .tokens import common_prefix
from .vision import Span, media_safe, prompt_spans
from .weights import Weights

if TYPE_CHECKING:
    from .interface import SharedCores


def _single_context(model: Weights, n_ctx: int, n_batch: int) -> Any:
    """A llama_context of one sequence over `model` (Ctrl-C while llama.cpp makes it is
    deferred, then Interrupted)."""
    ll = model._ll
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = cparams.n_ubatch = n_batch
    cparams.n_threads = cparams.n_threads_batch = model.threads
    sigint = _DeferredSigint(ll)
    with sigint:
        handle = ll.llama_init_from_model(model._model, cparams)
    if sigint.requested:
        if handle:
            ll.llama_free(handle)
        raise Interrupted()
    if not handle:
        raise EngineError(
            f"llama.cpp could not create a {n_ctx}-token context (out of memory? "
            "try a smaller --ctx-size)"
        )
    return handle


def _runs(
    prompt: list[int], start: int, n_batch: int
) -> Generator[tuple[int, int, Span | None], None, None]:
    """The prompt from `start` as (start, end, span): text in runs of at most n_batch tokens
    (a larger batch aborts llama.cpp) that stop at each media chunk, and each media chunk."""
    spans = prompt_spans(prompt)
    starts = sorted(s for s in spans if s >= start)
    while start < len(prompt):
        span = spans.get(start)
        if span is not None:
            yield start, start + span.n, span
            start += span.n
            continue
        stop = min([s for s in starts if s > start] + [start + n_batch, len(prompt)])
        yield start, stop, None
        start = stop


class LlamaSession:
    """Sequence 0 of a context of its own over `model`. `tokens` is what the KV cache holds, so
    a follow-up prompt that extends the last one decodes only its new tokens."""

    prompt_eval_tokens = 0  # tokens the last prompt evaluated (the rest were already in the KV)

    def __init__(self, model: Weights, n_ctx: int) -> None:
        self.model = model
        self._ll = ll = model._ll
        self.n_batch = min(model.batch_size, n_ctx)
        self._ctx = _single_context(model, n_ctx, self.n_batch)
        # The sequence as the interface's Context, for the features that run on it
        # (speculative verification, perplexity); it owns the llama_context from here on.
        self.context = LlamaContext(model, self._ctx, 1, self.n_batch)
        # llama.cpp rounds the context up to a multiple of 256 (--ctx-size 16 gave 256 tokens):
        # the window is the size asked for; the KV cache merely has room to spare.
        self.n_ctx = min(n_ctx, int(ll.llama_n_ctx(self._ctx)))
        self.context.n_ctx_seq = self.n_ctx
        self.cores = self.context._cores  # one CoreShare per llama_context
        self._mem = ll.llama_get_memory(self._ctx)
        # What the KV cache holds, in order: the context's own list for sequence 0 (one truth;
        # changed in place only).
        self.tokens: list[int] = self.context.held(0)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def sharing_cores(self) -> SharedCores:
        return self.cores

    def reset(self) -> None:
        """Forget the conversation in the KV cache."""
        self._ll.llama_memory_clear(self._mem, True)
        self.tokens.clear()

    def _truncate(self, n_keep: int) -> None:
        if n_keep < len(self.tokens):
            if not self._ll.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
                self.reset()
                return
            del self.tokens[n_keep:]

    def decode_prompt(self, prompt: list[int], cancel: threading.Event) -> None:
        """Bring the KV cache to hold exactly `prompt`, reusing the longest common prefix.
        The last prompt token is always decoded, so logits for sampling exist."""
        cache = self.model.prompt_cache if not self.tokens else None
        if cache is not None:
            cache.restore(self.context, 0, prompt)  # may fill the KV cache (and `tokens`)
        self._truncate(media_safe(common_prefix(self.tokens, prompt, len(prompt) - 1), prompt))
        common = len(self.tokens)  # 0 when the memory could not be trimmed and was reset
        self.prompt_eval_tokens = len(prompt) - common
        ll = self._ll
        with self.model.abort_on(cancel, self._ctx):
            for start, end, span in _runs(prompt, common, self.n_batch):
                self.cores.step()
                if span is not None:  # an image or audio clip: libmtmd encodes and decodes it
                    self.context.add_media(0, prompt, start)
                    continue
                chunk = prompt[start:end]
                arr = (ll.llama_token * len(chunk))(*chunk)
                rc = ll.llama_decode(self._ctx, ll.llama_batch_get_one(arr, len(chunk)))
                if rc != 0 or cancel.is_set():
                    # Drop whatever part of this chunk reached the cache: `tokens` stays true.
                    ll.llama_memory_seq_rm(self._mem, 0, len(self.tokens), -1)
                    if rc in (0, 2):
                        raise Interrupted()
                    raise EngineError(f"llama_decode failed on the prompt (code {rc})")
                self.tokens.extend(chunk)
        if cache is not None:
            cache.save(self.context, 0, prompt, self.prompt_eval_tokens)  # no answer yet

    def generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        *,
        ignore_eog: bool = False,
        on_sample: Callable[[int, Any], None] | None = None,
    ) -> Generator[bytes, None, None]:
        """Decode `prompt` (reusing the cache), then yield each sampled token's bytes until an
        end-of-generation token, the context is full, or `cancel` is set (raises Interrupted).
        The first `next()` includes prompt evaluation. Stops silently at a full context: the
        caller compares n_past with n_ctx to tell the user. `ignore_eog` keeps going past
        end-of-generation tokens (benchmarks need an exact token count). `on_sample`: see
        interface.Session.generate (None: the per-token path does nothing more)."""
        if len(prompt) > self.n_ctx:
            raise EngineError("prompt longer than the context")  # callers check this first
        with self.cores:
            yield from self._generate(prompt, sampling, cancel, ignore_eog, on_sample)

    def _generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        ignore_eog: bool,
        on_sample: Callable[[int, Any], None] | None,
    ) -> Generator[bytes, None, None]:
        self.decode_prompt(prompt, cancel)
        ll, model = self._ll, self.model
        chain = model.sampler(
            sampling, prompt, self.n_ctx
        )  # penalties see the prompt, as in llama.cpp
        try:
            sample, is_eog, decode = ll.llama_sampler_sample, ll.llama_vocab_is_eog, ll.llama_decode
            share_cores = self.cores.step
            ctx, vocab, pieces, tokens = self._ctx, model._vocab, model._pieces, self.tokens
            one = (ll.llama_token * 1)()
            batch = ll.llama_batch_get_one(one, 1)  # reused: positions come from the KV cache
            while len(tokens) < self.n_ctx:
                token = sample(chain, ctx, -1)
                if is_eog(vocab, token) and not ignore_eog:
                    return
                piece = pieces.get(token)
                if on_sample is not None:  # the row sampled: the last of the last decode
                    on_sample(token, self.context.logits(-1, 1))
                yield piece if piece is not None else model.piece(token)
                if cancel.is_set():
                    raise Interrupted()
                one[0] = token
                share_cores()
                rc = decode(ctx, batch)
                if rc != 0:
                    raise EngineError(f"llama_decode failed while generating (code {rc})")
                tokens.append(token)
        finally:
            ll.llama_sampler_free(chain)

    def close(self) -> None:
        """Free the context (the model is its owner's to close)."""
        if self._ctx is not None:
            self.context.close()  # frees the llama_context
            self._ctx = None

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
