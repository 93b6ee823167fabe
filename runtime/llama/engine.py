"""The llama.cpp engine, on llama-cpp-python's low-level calls.

Why not the high-level `Llama` class: it copies the logits into numpy and samples in Python on
every token (about a quarter of the generation speed on small models), and it cannot interrupt a
long prompt evaluation. Here sampling runs in llama.cpp's sampler chain, the prompt is decoded in
chunks of at most n_batch (a larger batch is a GGML_ASSERT that aborts the process), Ctrl-C
reaches llama_decode through the context's abort callback, and the per-token path is a handful of
ctypes calls on preallocated buffers.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import EngineError, InferWarning, InputError, Interrupted
from ..models.gguf import GGUFHeader
from ..params import LoadOptions, SamplingParams, physical_cores
from .aborts import doing
from .bindings import bindings
from .core_share import CoreShare
from .cpu_kernels import repack_is_safe
from .offload import (
    check_kv_fits,
    default_gpu_layers,
    device_split,
    has_offload_devices,
    kv_bytes_per_layer,
)
from .rpc import add_servers, rpc_servers
from .tokens import common_prefix

if TYPE_CHECKING:
    from .cpu_kernels import repack_is_safe
from .context import LlamaContext

KV_BUDGET_BYTES = 4 << 30  # default context is capped so its KV cache stays within this
ALL_LAYERS = 999


class Engine(Protocol):
    """What the rest of infer needs from a backend. tests/fakes.py has a scripted one."""

    n_ctx: int
    n_ctx_train: int
    chat_template: str | None
    bos_text: str
    eos_text: str
    gpu_layers: int
    load_s: float

    @property
    def n_past(self) -> int: ...

    def tokenize(self, text: str, special: bool) -> list[int]: ...

    def with_bos(self, tokens: list[int]) -> list[int]: ...

    def generate(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Generator[bytes, None, None]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def default_ctx(header: GGUFHeader, budget: int = KV_BUDGET_BYTES) -> int:
    """The model's trained context, capped so an f16 KV cache fits in `budget` bytes."""
    trained = header.context_length or 4096
    n_layer = header.arch_int("block_count")
    per_token = n_layer * kv_bytes_per_layer(header)
    if not per_token:
        return min(trained, 8192)
    cap = max(2048, budget // max(per_token, 1) // 256 * 256)
    return min(trained, cap)


_log_state: dict[str, Any] = {"verbose": False}
_captured = threading.local()  # .lines: llama.cpp's log of this thread's model load, when kept


def _install_log_callback(verbose: bool) -> None:
    """Route llama.cpp's logs through one callback: silent unless --verbose. The callback object
    must live as long as the process, so it is kept in a module global. It must not raise: ctypes
    prints an exception in a callback ("Exception ignored on calling ctypes callback function")
    and drops it, and llama.cpp carries on. (Ctrl-C during a load never lands here as an
    exception: see _DeferredSigint.)"""
    llama_cpp = bindings()
    _log_state["verbose"] = verbose
    if "callback" not in _log_state:

        @llama_cpp.llama_log_callback
        def _log(level: int, text: bytes, user_data: Any) -> None:
            lines = getattr(_captured, "lines", None)
            if lines is not None and text:
                lines.append(text)
            if _log_state["verbose"] and text:
                try:
                    sys.stderr.write(text.decode("utf-8", errors="replace"))
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):  # stderr None, closed or full
                    pass

        _log_state["callback"] = _log
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))


def _check_ctx_size(ll: Any, header: GGUFHeader, n_ctx: int, gpu: bool) -> None:
    """Refuse a context whose KV cache cannot fit in memory (llama.cpp would try to allocate
    it, for a minute, before failing), and warn about one longer than the model was trained
    on (allowed: a user may know the model copes, e.g. with RoPE scaling). `gpu`: layers go to
    GPU or RPC devices."""
    check_kv_fits(ll, header, n_ctx, gpu=gpu)
    trained = header.context_length
    if trained and n_ctx > trained:
        warnings.warn(
            f"--ctx-size {n_ctx} is more than the {trained} tokens {header.path.name} was trained "
            "on: answers past that may lose coherence",
            InferWarning,
            stacklevel=3,
        )


def supports_gpu_offload() -> bool:
    """Whether this build has a device to offload layers to (a GPU; RPC servers once added).
    Not llama_supports_gpu_offload(): that is true for any build with the RPC backend."""
    return has_offload_devices(bindings())


def system_info() -> str:
    """llama.cpp's build line: backends and CPU features, e.g. "CPU : AVX2 = 1 | ..."."""
    return bindings().llama_print_system_info().decode("utf-8", errors="replace")


def backends(info: str | None = None) -> list[str]:
    """Backends compiled into llama.cpp ("CUDA", "Metal", "CPU"…), from its system-info line,
    whose sections read "NAME : FEATURE = 1 | …"."""
    info = system_info() if info is None else info
    names = re.findall(r"(?:^|\|)\s*([A-Za-z][\w-]*) : ", info)
    return list(dict.fromkeys(names)) or ["CPU"]


class _FixedCores:
    """The user chose --threads: keep them, whoever else is decoding."""

    def __enter__(self) -> _FixedCores:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def step(self) -> None:
        pass


class _DeferredSigint:
    """Ctrl-C while llama.cpp loads a model or creates a context. Python runs a signal handler
    when the main thread next runs Python code, which during a load is inside llama.cpp's log or
    progress callback: an exception raised there is printed and dropped by ctypes, and the load
    went on. So, inside `with`, Ctrl-C only sets `requested`; `progress` (for the model params)
    then returns False, which makes llama.cpp abandon the model load and return NULL; the loader
    raises Interrupted once llama.cpp has returned. Only on the main thread (the only one that
    may set a handler), and never where SIGINT is ignored."""

    def __init__(self, ll: Any) -> None:
        self.requested = False
        self.progress = ll.llama_progress_callback(self._progress)
        self._previous: Any = None

    def _progress(self, _fraction: float, _data: Any) -> bool:
        return not self.requested

    def _handler(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def __enter__(self) -> _DeferredSigint:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class LlamaCppEngine:
    """A loaded model and one context (sequence 0). `n_past` tracks what the KV cache holds, so a
    follow-up prompt that extends the last one decodes only its new tokens."""

    load_s = 0.0  # set by the loader: seconds spent in llama.cpp's model + context load
    prompt_cache: Any = None  # runtime.prompt_cache.PromptCache, set by the loader when wanted
    prompt_eval_tokens = 0  # tokens the last prompt evaluated (the rest were already in the KV)

    def __init__(self, path: Path, header: GGUFHeader, options: LoadOptions) -> None:
        self._ll = ll = bindings()
        _install_log_callback(options.verbose)
        sigint = _DeferredSigint(ll)
        with sigint:
            ll.llama_backend_init()
        if options.rpc:  # their devices join the GPUs before the split is worked out
            add_servers(ll, options.rpc)
        self.header = header
        n_ctx = options.ctx_size or default_ctx(header)
        gpu = options.gpu_layers
        devices = has_offload_devices(ll)
        if gpu is None:  # all that fit on GPU/RPC devices (runtime/llama/offload.py), else none
            fit = default_gpu_layers(ll, header, n_ctx) if devices else 0
            gpu = ALL_LAYERS if fit is None else fit
        self.gpu_layers = ALL_LAYERS if gpu == -1 else gpu
        if options.ctx_size:  # before llama.cpp allocates it (the default is capped already)
            _check_ctx_size(ll, header, n_ctx, self.gpu_layers > 0 and devices)
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = self.gpu_layers
        mparams.progress_callback = sigint.progress
        mparams.use_extra_bufts = repack_is_safe(system_info())  # llama/cpu_kernels.py
        # mmap on. Recent bindings have no use_mmap field (assigning it would only add a Python
        # attribute): there the default load_mode AUTO maps the file wherever the devices can.
        if any(name == "use_mmap" for name, *_ in mparams._fields_):
            mparams.use_mmap = True
        # The load's log says which device got which layer: kept only when there is a choice.
        _captured.lines = [] if devices else None
        try:
            with sigint, doing(f"loading {path.name}"):
                self._model = ll.llama_model_load_from_file(os.fsencode(path), mparams)
            log = b"".join(_captured.lines or []).decode("utf-8", "replace")
            self.split = device_split(log, rpc_servers(ll) if options.rpc else None)
        finally:
            _captured.lines = None
        if sigint.requested:
            self.close()
            raise Interrupted()
        if not self._model:
            hint = "" if options.verbose else " (run with --verbose for details)"
            raise EngineError(f"llama.cpp could not load {path}{hint}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self._model))
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        # llama.cpp offloads the repeating layers plus the output layer: "offloaded 31/31".
        self.n_layers = int(ll.llama_model_n_layer(self._model)) + 1
        offloading = self.gpu_layers > 0 and devices
        self.offloaded_layers = min(self.gpu_layers, self.n_layers) if offloading else 0
        threads = options.threads or physical_cores()
        self.n_batch = min(options.batch_size, n_ctx)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        with sigint:
            self._ctx = ll.llama_init_from_model(self._model, cparams)
        if sigint.requested:
            self.close()
            raise Interrupted()
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise EngineError(
                f"llama.cpp could not create a {n_ctx}-token context (out of memory? "
                "try a smaller --ctx-size)"
            )
        # llama.cpp rounds the context up to a multiple of 256 (--ctx-size 16 gave 256 tokens):
        # the window is the size asked for; the KV cache merely has room to spare.
        self.n_ctx = min(n_ctx, int(ll.llama_n_ctx(self._ctx)))
        self.threads = threads
        self._fixed_threads = options.threads is not None
        # This context as the engine interface's Context (sequence 0), for the features that
        # run on it (speculative verification); it owns the llama_context from here on.
        from .context import LlamaContext

        self.context = LlamaContext(self, self._ctx, 1, self.n_batch)
        self.context.n_ctx_seq = self.n_ctx
        self.cores = self.context._cores  # one CoreShare per llama_context
        self._mem = ll.llama_get_memory(self._ctx)
        # What the KV cache holds, in order: the context's own list for sequence 0 (one truth;
        # changed in place only).
        self.tokens: list[int] = self.context.held(0)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._cancel: threading.Event | None = None
        self._abort_cb = ll.ggml_abort_callback(self._should_abort)
        self._no_abort_cb = ll.ggml_abort_callback()
        self.chat_template = header.chat_template
        self.bos_id = int(ll.llama_vocab_bos(self._vocab))
        self.eos_id = int(ll.llama_vocab_eos(self._vocab))
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self.bos_text = self.token_text(self.bos_id)
        self.eos_text = self.token_text(self.eos_id)
        # is_eog(token): whether a token ends generation (the bound ctypes call: no Python frame)
        self.is_eog: Callable[[int], bool] = partial(ll.llama_vocab_is_eog, self._vocab)

    # -- the model ------------------------------------------------------------------------------

    @property
    def is_recurrent(self) -> bool:
        return bool(self._ll.llama_model_is_recurrent(self._model))

    def state_identity(self) -> dict[str, Any]:
        """The llama.cpp library in use and its state format: another build may lay out or
        compute a saved sequence state otherwise."""
        ll = self._ll
        lib = getattr(getattr(ll, "_lib", None), "_name", None)
        ident: dict[str, Any] = {"state_version": int(ll.LLAMA_STATE_SEQ_VERSION)}
        if lib:
            st = os.stat(lib)
            ident.update(lib=str(lib), size=st.st_size, mtime_ns=st.st_mtime_ns)
        return ident

    def new_context(self, n_seq_max: int, n_ctx_seq: int, n_batch: int) -> LlamaContext:
        """Another context over this model, with `n_seq_max` separate sequences of
        `n_ctx_seq` cells each (llama/context.py)."""
        from .context import LlamaContext

        return LlamaContext.create(self, n_seq_max, n_ctx_seq, n_batch)

    # -- samplers and batches -------------------------------------------------------------------

    def sampler(self, params: SamplingParams) -> Any:
        """A sampler chain for `params`; free it with free_sampler."""
        return self._sampler(params)

    def free_sampler(self, chain: Any) -> None:
        self._ll.llama_sampler_free(chain)

    # -- this engine's context (sequence 0) -----------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def core_share(self, ctx: Any) -> CoreShare | _FixedCores:
        """The threads of `ctx` (this engine's or another over its model), shared with other
        decoding infer processes (runtime/llama/core_share.py). A --threads choice is kept as is;
        INFER_SHARE_CORES=0 turns sharing off (for measuring the alternatives)."""
        if self._fixed_threads or self.threads <= 1 or os.environ.get("INFER_SHARE_CORES") == "0":
            return _FixedCores()
        ll = self._ll
        return CoreShare(self.threads, lambda n: ll.llama_set_n_threads(ctx, n, n))

    def _should_abort(self, _data: Any) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    @contextmanager
    def abort_on(self, cancel: threading.Event, ctx: Any = None) -> Iterator[None]:
        """Inside `with`, llama.cpp polls `cancel` between the graph nodes of a decode on `ctx`
        (this engine's context, or another over its model), so Ctrl-C stops a long prompt
        (llama_decode returns 2). Only around prompt decodes: the callback costs a Python call
        per graph node, so the no-op one is put back after."""
        ctx = self._ctx if ctx is None else ctx
        self._cancel = cancel
        self._ll.llama_set_abort_callback(ctx, self._abort_cb, None)
        try:
            yield
        finally:
            self._ll.llama_set_abort_callback(ctx, self._no_abort_cb, None)
            self._cancel = None

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self._ll.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def tokenize(self, text: str, special: bool) -> list[int]:
        """Tokens of `text`, no BOS added. `special=False` keeps control-token markup as text."""
        if not text:
            return []
        out, n = self.tokenize_into_buffer(text, add_special=False, special=special)
        return list(out[:n])

    def tokenize_into_buffer(
        self, text: str, *, add_special: bool, special: bool
    ) -> tuple[Any, int]:
        """llama_tokenize: a ctypes array of llama_token and how many of it are `text`'s tokens
        (for a caller that wants them as a numpy array, without a Python list in between).
        `add_special` adds BOS/EOS as the vocabulary does; `special` parses control-token
        markup. InputError for text that is not valid Unicode (a lone surrogate, such as
        Python makes of an argument's undecodable bytes)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"the text is not valid Unicode: {text[e.start]!r} at character {e.start} "
                "(bytes that are not UTF-8?)"
            ) from None
        ll, cap = self._ll, len(data) + 8
        for _ in range(2):
            out = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, data, len(data), out, cap, add_special, special)
            if n >= 0:
                return out, n
            # Too small: a byte-fallback vocabulary can need more tokens than there are bytes
            # (SPM's "▁" prefix is three bytes); llama.cpp returns minus the size it needs.
            cap = -n
        raise EngineError("tokenization failed")

    def with_bos(self, tokens: list[int]) -> list[int]:
        """Prepend BOS when the vocabulary wants one and the prompt lacks it."""
        if self.add_bos and self.bos_id >= 0 and (not tokens or tokens[0] != self.bos_id):
            return [self.bos_id, *tokens]
        return tokens

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is None:
            n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

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
        cache = self.prompt_cache if not self.tokens else None
        if cache is not None:
            cache.restore(self.context, 0, prompt)  # may fill the KV cache (and `tokens`)
        self._truncate(common_prefix(self.tokens, prompt, len(prompt) - 1))
        common = len(self.tokens)  # 0 when the memory could not be trimmed and was reset
        self.prompt_eval_tokens = len(prompt) - common
        ll = self._ll
        with self.abort_on(cancel):
            for start in range(common, len(prompt), self.n_batch):
                self.cores.step()
                chunk = prompt[start : start + self.n_batch]
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

    def _sampler(self, p: SamplingParams) -> Any:
        if not p.grammar:
            return self._plain_sampler(p)
        from .grammar import constrained_chain

        inner = self._plain_sampler(p)
        greedy = p.temperature <= 0 and not (
            p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        )
        chain = constrained_chain(
            self._ll, self._vocab, p.grammar, inner, self.eos_id, greedy=greedy,
            triggers=p.grammar_triggers,
        )  # fmt: skip
        if chain is None:  # checked before the load (llama/grammar.py); a vocabulary clash
            self._ll.llama_sampler_free(inner)
            raise EngineError("llama.cpp could not parse the grammar with this vocabulary")
        return chain

    def _plain_sampler(self, p: SamplingParams) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            penalties = ll.llama_sampler_init_penalties(
                self.n_vocab,
                p.repeat_last_n,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            )
            ll.llama_sampler_chain_add(chain, penalties)
        if p.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        seed = 0xFFFFFFFF if p.seed is None else p.seed  # LLAMA_DEFAULT_SEED: random
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def generate(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        cancel: threading.Event,
        *,
        ignore_eog: bool = False,
    ) -> Generator[bytes, None, None]:
        """Decode `prompt` (reusing the cache), then yield each sampled token's bytes until an
        end-of-generation token, the context is full, or `cancel` is set (raises Interrupted).
        The first `next()` includes prompt evaluation. Stops silently at a full context: the
        caller compares n_past with n_ctx to tell the user. `ignore_eog` keeps going past
        end-of-generation tokens (benchmarks need an exact token count)."""
        if len(prompt) > self.n_ctx:
            raise EngineError("prompt longer than the context")  # callers check this first
        with self.cores:
            yield from self._generate(prompt, sampling, cancel, ignore_eog)

    def _generate(
        self, prompt: list[int], sampling: SamplingParams, cancel: threading.Event, ignore_eog: bool
    ) -> Generator[bytes, None, None]:
        self.decode_prompt(prompt, cancel)
        ll = self._ll
        chain = self._sampler(sampling)
        try:
            sample, is_eog, decode = ll.llama_sampler_sample, ll.llama_vocab_is_eog, ll.llama_decode
            share_cores = self.cores.step
            ctx, vocab, pieces, tokens = self._ctx, self._vocab, self._pieces, self.tokens
            one = (ll.llama_token * 1)()
            batch = ll.llama_batch_get_one(one, 1)  # reused: positions come from the KV cache
            while len(tokens) < self.n_ctx:
                token = sample(chain, ctx, -1)
                if is_eog(vocab, token) and not ignore_eog:
                    return
                piece = pieces.get(token)
                yield piece if piece is not None else self.piece(token)
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
        if getattr(self, "context", None) is not None:
            self.context.close()  # frees the llama_context
            self._ctx = None
        elif getattr(self, "_ctx", None):
            self._ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
