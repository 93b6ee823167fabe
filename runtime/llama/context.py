"""LlamaContext: a llama.cpp context with several sequences over a loaded model (the `Context`
of llama/interface.py), for batched prompts and the server.

The KV cache is split per sequence (kv_unified off, as llama-batched-bench and llama-server's
slots run: a sequence attends only to its own cells, and each has `n_ctx_seq` of them). One
llama_batch of n_batch rows is reused for every decode; `add` fills its arrays directly.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, Interrupted, OptionError
from ..params import SamplingParams
from .lora import AdapterSet
from .vision import prompt_spans, span_projector

if TYPE_CHECKING:
    from .interface import SharedCores
    from .weights import Weights


# llama_token_data as numpy sees it: {llama_token id; float logit; float p}
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]
# The cells of a deterministic context: 8-bit (Q8_0) keys and values, read by flash attention.
# llama.cpp's CPU flash attention has a tiled kernel (64 query rows of a sequence or more) and a
# split-KV one (one row alone over 512 cells or more) only for F16/F32 cells; with Q8_0 cells
# every row runs the one-row kernel, so a row's attention no longer depends on the rows decoded
# beside it: a prompt read whole or in chunks, a token generated alone, beside other sequences
# or verified among drafts gives the same bits (docs/determinism.md has the measurements).
DETERMINISTIC_KV_TYPE = "q8_0"
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml_type values


class LlamaContext:
    """Over `handle`, a llama_context of `model` with `n_seq_max` sequences (made by
    `create`, or a LlamaSession's single-sequence one), which this object frees."""

    @classmethod
    def create(
        cls,
        model: Weights,
        n_seq_max: int,
        n_ctx_seq: int,
        n_batch: int,
        flash_attn: bool | None = None,
        *,
        deterministic: bool = False,
    ) -> LlamaContext:
        ll = model._ll
        if n_seq_max > n_batch:  # llama.cpp GGML_ASSERTs: an output per sequence in a batch
            raise OptionError(
                "parallel",
                f"must be at most the batch size, {n_batch} tokens here (got {n_seq_max})",
            )
        params = ll.llama_context_default_params()
        kv_type = "f16"
        if deterministic:
            flash_attn, kv_type = True, DETERMINISTIC_KV_TYPE
        params.type_k = params.type_v = KV_TYPES[kv_type]
        if flash_attn is not None:  # None: llama.cpp's "auto" (on, on CPU)
            params.flash_attn_type = (
                ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if flash_attn
                else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        params.n_seq_max = n_seq_max
        params.n_ctx = n_seq_max * n_ctx_seq
        params.kv_unified = False
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = model.threads
        handle = ll.llama_init_from_model(model._model, params)
        if not handle:
            raise EngineError(
                f"llama.cpp could not create a context for {n_seq_max} sequences of "
                f"{n_ctx_seq} tokens (out of memory? try a smaller --parallel or --ctx-size)"
            )
        ctx = cls(model, handle, n_seq_max, n_batch)
        ctx.flash_attn, ctx.kv_type = flash_attn, kv_type
        return ctx

    def __init__(self, model: Weights, handle: Any, n_seq_max: int, n_batch: int):
        self._weights = model
        self._ll = ll = model._ll
        self._handle = handle
        self.n_seq_max, self.n_batch = n_seq_max, n_batch
        self.n_ctx_seq = int(ll.llama_n_ctx_seq(self._handle))
        self._mem = ll.llama_get_memory(self._handle)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._tokens: list[list[int]] = [[] for _ in range(n_seq_max)]
        self._queued: list[tuple[int, Sequence[int]]] = []  # (seq, tokens) in batch order
        self._queued_len = [0] * n_seq_max
        self._n = 0  # rows filled in the batch
        self._candidates: Any = None  # sample_probs' llama_token_data array, made on first use
        self._chains: list[Any] = [None] * n_seq_max
        # Sequences in a copy between split-cache streams that llama.cpp has enqueued: it moves
        # the data at the start of the next decode (libmtmd's included).
        self._copying: set[int] = set()
        self._cores = model.core_share(self._handle)
        self._lora = AdapterSet(ll, handle, model.adapters)  # at the scales they were given
        self.flash_attn: bool | None = None  # as chosen (None: llama.cpp's default)
        self.kv_type = "f16"  # the cells' type: Q8_0 in a deterministic context

    def tokens(self, seq: int) -> Sequence[int]:
        return self._tokens[seq]

    def held(self, seq: int) -> list[int]:
        """The list behind tokens(seq), for the session that shares it (changed in place only)."""
        return self._tokens[seq]

    def room(self) -> int:
        return self.n_batch - self._n

    def add(self, seq: int, tokens: Sequence[int], logits: int) -> int:
        n, count = self._n, len(tokens)
        if not count:
            return -1
        pos0 = len(self._tokens[seq]) + self._queued_len[seq]
        if n + count > self.n_batch or pos0 + count > self.n_ctx_seq:
            raise ValueError(f"{count} tokens do not fit in this decode of sequence {seq}")
        b = self._batch
        token, pos, n_seq_id, seq_id, want = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, tok in enumerate(tokens):
            token[n + i], pos[n + i], n_seq_id[n + i], want[n + i] = tok, pos0 + i, 1, 0
            seq_id[n + i][0] = seq
        self._n = n + count
        self._queued.append((seq, tokens))
        self._queued_len[seq] += count
        if not logits:
            return -1
        first = self._n - min(int(logits), count)
        for row in range(first, self._n):
            want[row] = 1
        return first

    def add_media(self, seq: int, prompt: Sequence[int], start: int) -> int:
        span = prompt_spans(prompt).get(start)
        if span is None:
            raise ValueError(f"no media chunk starts at position {start} of this prompt")
        held = self._tokens[seq]
        if self._queued_len[seq] or len(held) != start:
            raise ValueError(f"sequence {seq} is not at position {start} with nothing queued")
        if start + span.n > self.n_ctx_seq:
            raise ValueError(f"the media chunk does not fit in the cells of sequence {seq}")
        self._cores.step()
        try:
            # libmtmd decodes with batches of its own: the rows queued here (other sequences')
            # are untouched and go in the next decode.
            span_projector(prompt).evaluate(span, self._handle, start, seq, self.n_batch)
            self._copying.clear()
        except BaseException:
            self._ll.llama_memory_seq_rm(self._mem, seq, len(held), -1)
            raise
        held.extend(prompt[start : start + span.n])
        return span.n

    def decode(self, cancel: threading.Event | None = None) -> None:
        if not self._n:
            return
        self._batch.n_tokens = self._n
        self._cores.step()
        ll = self._ll
        if cancel is not None:  # the abort callback costs a Python call per graph node
            with self._weights.abort_on(cancel, self._handle):
                rc = int(ll.llama_decode(self._handle, self._batch))
        else:
            rc = int(ll.llama_decode(self._handle, self._batch))
        queued, self._queued, self._n = self._queued, [], 0
        self._copying.clear()
        self._queued_len = [0] * self.n_seq_max
        if rc == 0:
            for seq, tokens in queued:
                self._tokens[seq].extend(tokens)
            return
        for seq, _ in queued:  # drop whatever part of the batch reached the cache
            ll.llama_memory_seq_rm(self._mem, seq, len(self._tokens[seq]), -1)
        if rc == 2 or (cancel is not None and cancel.is_set()):
            raise Interrupted()
        raise EngineError(f"llama_decode failed on a batch (code {rc})")

    @property
    def lora(self) -> tuple[float, ...]:
        return self._lora.scales

    def set_lora(self, scales: tuple[float, ...]) -> None:
        if self._n:  # llama.cpp applies one set of adapters to a whole decode
            raise ValueError("adapter scales change between decodes only")
        self._lora.apply(scales)

    def logits(self, row: int, n: int) -> Any:
        # Rows that asked for logits are stored contiguously, in batch order.
        ptr = self._ll.llama_get_logits_ith(self._handle, row)
        if not ptr:
            raise EngineError(f"llama.cpp has no logits for batch row {row}")
        return (ctypes.c_float * (n * self._weights.n_vocab)).from_address(
            ctypes.addressof(ptr.contents)
        )

    def set_sampler(self, seq: int, params: SamplingParams, prompt: Sequence[int] = ()) -> None:
        if self._chains[seq] is not None:
            self._weights.free_sampler(self._chains[seq])
        self._chains[seq] = self._weights.sampler(params, prompt, self.n_ctx_seq)

    def sample(self, seq: int, row: int) -> int:
        return int(self._ll.llama_sampler_sample(self._chains[seq], self._handle, row))

    def sample_probs(
        self, seq: int, row: int, n: int
    ) -> tuple[int, float, list[tuple[int, float]]]:
        # What llama_sampler_sample does (every token a candidate, the chain applied, the pick
        # accepted), over candidates of our own whose probabilities stay readable afterwards.
        import numpy as np

        ll, n_vocab, chain = self._ll, self._weights.n_vocab, self._chains[seq]
        if self._candidates is None:
            self._candidates = (ll.llama_token_data * n_vocab)()
        view = np.frombuffer(self._candidates, dtype=_TOKEN_DATA)
        view["id"] = np.arange(n_vocab, dtype=np.int32)  # the chain reorders them
        view["logit"] = np.frombuffer(self.logits(row, 1), dtype=np.float32, count=n_vocab)
        view["p"] = 0.0
        cur = ll.llama_token_data_array(self._candidates, n_vocab, -1, False)
        ll.llama_sampler_apply(chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise EngineError("the sampler chain picked no token")
        left = np.frombuffer(
            (ll.llama_token_data * cur.size).from_address(ctypes.addressof(cur.data.contents)),
            dtype=_TOKEN_DATA,
        )
        token = int(left["id"][cur.selected])
        ll.llama_sampler_accept(chain, token)
        probs = left["p"]
        if not probs.any():  # a greedy chain sets no probability: its pick is certain
            return token, 1.0, [(token, 1.0)][:n]
        k = min(n, len(probs))
        # the k likeliest without sorting all (a chain without top-k leaves the whole vocabulary)
        pick = np.argpartition(-probs, k - 1)[:k] if 0 < k < len(probs) else np.arange(k)
        pick = pick[np.argsort(-probs[pick], kind="stable")]
        top = [(int(left["id"][i]), float(probs[i])) for i in pick if probs[i] > 0]
        return token, float(probs[cur.selected]), top

    def remove(self, seq: int, start: int = 0) -> None:
        if start and start >= len(self._tokens[seq]):
            return  # (from 0: always, in case a failed restore left cells we do not know of)
        if not self._ll.llama_memory_seq_rm(self._mem, seq, start, -1):
            # A partial removal llama.cpp refuses (recurrent models): drop the whole sequence.
            self._ll.llama_memory_seq_rm(self._mem, seq, -1, -1)
            start = 0
        del self._tokens[seq][start:]  # in place: a session's `tokens` is this list
        if start == 0 and self._chains[seq] is not None:
            self._weights.free_sampler(self._chains[seq])
            self._chains[seq] = None

    def copy(self, src: int, dst: int) -> None:
        # The cells only: dst keeps its sampler chain (a fork samples with its own).
        self._ll.llama_memory_seq_rm(self._mem, dst, -1, -1)
        self._ll.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        self._tokens[dst][:] = self._tokens[src]
        if src != dst:
            self._copying.update((src, dst))

    def identity(self) -> dict[str, Any]:
        e = self._weights
        return {
            "llama.cpp": e.state_identity(),
            # The micro-batch size and where layers run change the KV values' rounding.
            "n_ubatch": self.n_batch,
            "gpu_layers": e.offloaded_layers,
            "kv_type": self.kv_type,
            # The attention kernel, where one was chosen: the two round differently.
            **({"flash_attn": self.flash_attn} if self.flash_attn is not None else {}),
            # The adapters applied: a state read with them is not the model's own.
            **({"lora": self._lora.identity()} if self._lora.identity() else {}),
        }

    def save(self, seq: int, path: Path) -> int:
        ll, toks = self._ll, self._tokens[seq]
        arr = (ll.llama_token * len(toks))(*toks)
        return int(
            ll.llama_state_seq_save_file(self._handle, os.fsencode(path), seq, arr, len(toks))
        )

    def restore(self, seq: int, path: Path, tokens: Sequence[int]) -> bool:
        ll, n = self._ll, len(tokens)
        if seq in self._copying:
            # A restore writes the cells now, and the enqueued copy would overwrite them (or
            # copy them out) at the next decode: a caller's bug (the scheduler never does).
            raise ValueError(f"sequence {seq} is in a copy that the next decode makes")
        self.remove(seq)
        out, n_out = (ll.llama_token * n)(), ctypes.c_size_t(0)
        rc = ll.llama_state_seq_load_file(
            self._handle, os.fsencode(path), seq, out, n, ctypes.byref(n_out)
        )
        if rc == 0 or n_out.value != n or out[:n] != list(tokens):
            ll.llama_memory_seq_rm(self._mem, seq, -1, -1)
            return False
        self._tokens[seq][:] = tokens
        return True

    def sharing_cores(self) -> SharedCores:
        return self._cores

    def close(self) -> None:
        if getattr(self, "_handle", None):
            for chain in self._chains:
                if chain is not None:
                    self._weights.free_sampler(chain)
            self._chains = [None] * self.n_seq_max
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._handle)
            self._handle = None

    def __enter__(self) -> LlamaContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
