"""A loaded llama_model: weights, vocabulary, sampler chains, and what every context made over
it shares (its threads, the abort callback). It owns no context: llama/model.py's LlamaModel
(this, plus the contexts it makes) is what `load()` returns; llama/context.py and
llama/session.py run on it.

Why not the high-level `Llama` class: it copies the logits into numpy and samples in Python on
every token (about a quarter of the generation speed on small models), and it cannot interrupt a
long prompt evaluation. Here sampling runs in llama.cpp's sampler chain and Ctrl-C reaches
llama_decode through the context's abort callback.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, InputError, Interrupted, MediaError, OptionError
from ..media import Media
from ..models.gguf import GGUFHeader
from ..params import LoadOptions, SamplingParams, physical_cores
from .aborts import doing
from .bindings import bindings
from .core_share import CoreShare, FixedCores
from .cpu_kernels import repack_is_safe
from .engine import (
    ALL_LAYERS,
    _captured,
    _check_ctx_size,
    _DeferredSigint,
    _install_log_callback,
    default_ctx,
    system_info,
)
from .lora import LoadedAdapter, check_adapter, load_adapters
from .offload import default_gpu_layers, device_split, has_offload_devices
from .rpc import add_servers, rpc_servers
from .tokens import check_ids

if TYPE_CHECKING:
    from .interface import Context, PromptCache, Session
    from .vision import Projector


def _gpu_layers(ll: Any, header: GGUFHeader, options: LoadOptions, n_ctx: int) -> int:
    """--gpu-layers, or all that fit on GPU/RPC devices (runtime/llama/offload.py), else none."""
    gpu = options.gpu_layers
    if gpu is None:
        fit = default_gpu_layers(ll, header, n_ctx) if has_offload_devices(ll) else 0
        gpu = ALL_LAYERS if fit is None else fit
    return ALL_LAYERS if gpu == -1 else gpu


def _model_params(ll: Any, gpu_layers: int, sigint: _DeferredSigint) -> Any:
    mparams = ll.llama_model_default_params()
    mparams.n_gpu_layers = gpu_layers
    mparams.progress_callback = sigint.progress
    mparams.use_extra_bufts = repack_is_safe(system_info())  # llama/cpu_kernels.py
    # mmap on. Recent bindings have no use_mmap field (assigning it would only add a Python
    # attribute): there the default load_mode AUTO maps the file wherever the devices can.
    if any(name == "use_mmap" for name, *_ in mparams._fields_):
        mparams.use_mmap = True
    return mparams


class Weights(ABC):
    """A model loaded by llama.cpp, built complete by its constructor (`load_s` included).
    `n_ctx` and `n_batch` are the window and batch a session over it gets by default (the
    offload and memory checks were made for that window); `prompt_cache` (a PromptCache, or
    None) is what its sessions restore long prompts from."""

    prompt_cache: PromptCache | None

    def __init__(
        self,
        path: Path,
        header: GGUFHeader,
        options: LoadOptions,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        started = time.perf_counter()
        self._ll = ll = bindings()
        self._model: Any = None
        _install_log_callback(options.verbose)
        self.header, self.prompt_cache = header, prompt_cache
        self.n_ctx = options.ctx_size or default_ctx(header)
        for adapter in options.lora:  # a bad adapter is refused before the weights load
            check_adapter(adapter.path, header)
        self._load(path, options)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._read_vocabulary()
        # Before any context: a context sizes its graph for the model's adapters.
        try:
            self.adapters: list[LoadedAdapter] = load_adapters(
                ll, self._model, header, options.lora
            )
        except BaseException:
            self.close()
            raise
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self._model))
        # llama.cpp offloads the repeating layers plus the output layer: "offloaded 31/31".
        self.n_layers = int(ll.llama_model_n_layer(self._model)) + 1
        offloading = self.gpu_layers > 0 and has_offload_devices(ll)
        self.offloaded_layers = min(self.gpu_layers, self.n_layers) if offloading else 0
        self.threads = options.threads or physical_cores()
        self._fixed_threads = options.threads is not None
        self.batch_size = options.batch_size  # a session's n_batch: this, at most its window
        self.deterministic = options.deterministic  # for the contexts made over it
        self.chat_template = header.chat_template
        self._cancel: threading.Event | None = None
        self._abort_cb = ll.ggml_abort_callback(self._should_abort)
        self._no_abort_cb = ll.ggml_abort_callback()
        self.projector: Projector | None = None
        if options.mmproj is not None:
            from .vision import Projector

            n_embd = int(ll.llama_model_n_embd(self._model))
            try:
                gpu = self.offloaded_layers > 0
                self.projector = Projector(options.mmproj, self._model, n_embd, self.threads, gpu)
            except BaseException:
                self.close()
                raise
        self.load_s = time.perf_counter() - started  # llama.cpp's model load, mostly

    def _load(self, path: Path, options: LoadOptions) -> None:
        """Backend, RPC servers, the GPU layers, then the weights (Ctrl-C abandons the load)."""
        ll, header = self._ll, self.header
        sigint = _DeferredSigint(ll)
        with sigint:
            ll.llama_backend_init()
        if options.rpc:  # their devices join the GPUs before the split is worked out
            add_servers(ll, options.rpc)
        self.gpu_layers = _gpu_layers(ll, header, options, self.n_ctx)
        devices = has_offload_devices(ll)
        if options.ctx_size:  # before llama.cpp allocates it (the default is capped already)
            _check_ctx_size(ll, header, self.n_ctx, self.gpu_layers > 0 and devices)
        mparams = _model_params(ll, self.gpu_layers, sigint)
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

    def _read_vocabulary(self) -> None:
        ll, vocab = self._ll, self._vocab
        self.n_vocab = int(ll.llama_vocab_n_tokens(vocab))
        self.bos_id = int(ll.llama_vocab_bos(vocab))
        self.eos_id = int(ll.llama_vocab_eos(vocab))
        self.add_bos = bool(ll.llama_vocab_get_add_bos(vocab))
        self.bos_text = self.token_text(self.bos_id)
        self.eos_text = self.token_text(self.eos_id)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # is_eog(token): whether a token ends generation (the bound ctypes call: no Python frame)
        self.is_eog: Callable[[int], bool] = partial(ll.llama_vocab_is_eog, vocab)

    # -- what a Model makes (llama/model.py) ----------------------------------------------------

    @abstractmethod
    def new_context(
        self, n_seq_max: int, n_ctx_seq: int, n_batch: int, *, flash_attn: bool | None = None
    ) -> Context: ...

    @abstractmethod
    def new_session(self, n_ctx: int | None = None) -> Session: ...

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

    # -- threads and Ctrl-C, for every context over this model ----------------------------------

    def core_share(self, ctx: Any) -> CoreShare | FixedCores:
        """The threads of `ctx` (a context over this model), shared with other decoding infer
        processes (runtime/llama/core_share.py). A --threads choice is kept as is;
        INFER_SHARE_CORES=0 turns sharing off (for measuring the alternatives)."""
        if self._fixed_threads or self.threads <= 1 or os.environ.get("INFER_SHARE_CORES") == "0":
            return FixedCores()
        ll = self._ll
        return CoreShare(self.threads, lambda n: ll.llama_set_n_threads(ctx, n, n))

    def _should_abort(self, _data: Any) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    @contextmanager
    def abort_on(self, cancel: threading.Event, ctx: Any) -> Iterator[None]:
        """Inside `with`, llama.cpp polls `cancel` between the graph nodes of a decode on `ctx`
        (a context over this model), so Ctrl-C stops a long prompt (llama_decode returns 2).
        Only around prompt decodes: the callback costs a Python call per graph node, so the
        no-op one is put back after."""
        self._cancel = cancel
        self._ll.llama_set_abort_callback(ctx, self._abort_cb, None)
        try:
            yield
        finally:
            self._ll.llama_set_abort_callback(ctx, self._no_abort_cb, None)
            self._cancel = None

    # -- the vocabulary -------------------------------------------------------------------------

    def token_text(self, token: int) -> str:
        if not 0 <= token < self.n_vocab:  # llama.cpp's .at() would throw: std::terminate
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
            check_ids(self.n_vocab, (token,), "token")  # llama.cpp's .at(): std::terminate
            n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    # -- sampler chains -------------------------------------------------------------------------

    def sampler(self, p: SamplingParams, prompt: Sequence[int] = (), n_ctx: int = 0) -> Any:
        """A sampler chain for `p`, its penalties primed with `prompt` (the tokens the answer
        follows); repeat_last_n -1 looks back over `n_ctx` tokens (the sequence's context), as
        llama.cpp's tools resolve it. Free it with free_sampler."""
        if p.repeat_last_n < 0 or 0 < n_ctx < p.repeat_last_n:
            # A window past the context sees no more tokens, and llama.cpp allocates its ring
            # buffer at the size asked: 2**31 would be an 8 GB allocation (or std::bad_alloc).
            p = replace(p, repeat_last_n=n_ctx)
        if not p.grammar:
            return self._plain_sampler(p, prompt)
        from .grammar import constrained_chain

        # The prompt primes the penalties only: llama.cpp's grammar sees generated tokens alone
        inner = self._plain_sampler(p, prompt)
        # greedy: the inner chain changes no logit, so a rejected pick needs no saved copy of
        # the candidates (a bias or a penalty would be applied twice without one)
        greedy = p.temperature <= 0 and not (
            p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty or p.logit_bias
        )
        chain = constrained_chain(
            self._ll,
            self._vocab,
            p.grammar,
            inner,
            self.eos_id,
            greedy=greedy,
            triggers=p.grammar_triggers,
        )
        if chain is None:  # checked before the load (llama/grammar.py); a vocabulary clash
            self._ll.llama_sampler_free(inner)
            raise EngineError("llama.cpp could not parse the grammar with this vocabulary")
        return chain

    def free_sampler(self, chain: Any) -> None:
        self._ll.llama_sampler_free(chain)

    def _plain_sampler(self, p: SamplingParams, prompt: Sequence[int]) -> Any:
        ll = self._ll
        bias = self._logit_bias(p.logit_bias) if p.logit_bias else None  # checked first
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if bias is not None:  # first, as common_sampler_init puts it: every later sampler sees it
            ll.llama_sampler_chain_add(chain, bias)
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            penalties = ll.llama_sampler_init_penalties(
                self.n_vocab,
                p.repeat_last_n,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            )
            for token in penalty_window(prompt, p.repeat_last_n):
                ll.llama_sampler_accept(penalties, token)
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

    def _logit_bias(self, pairs: Sequence[tuple[int, float]]) -> Any:
        """llama.cpp's logit-bias sampler for (token, bias) pairs (it copies them). An id past
        the vocabulary would be written past llama.cpp's candidate array: refused here, the
        last line behind the server's own check."""
        bad = next((t for t, _ in pairs if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise OptionError(
                "logit_bias", f"has token {bad}, outside the vocabulary (0..{self.n_vocab - 1})"
            )
        ll = self._ll
        array = (ll.llama_logit_bias * len(pairs))()
        for entry, (token, bias) in zip(array, pairs, strict=True):
            entry.token, entry.bias = token, bias
        return ll.llama_sampler_init_logit_bias(self.n_vocab, len(pairs), array)

    def media_prompt(self, pieces: Sequence[list[int] | Media]) -> list[int]:
        """Token lists and media in prompt order as one prompt (llama/vision.py)."""
        if self.projector is None:
            raise MediaError(
                "this model takes no images or audio: it has no projector (mmproj) beside it"
            )
        return self.projector.prompt(pieces)

    def close(self) -> None:
        if getattr(self, "projector", None) is not None:
            self.projector.close()  # type: ignore[union-attr]
            self.projector = None
        if self._model:
            self._ll.llama_model_free(self._model)
            self._model = None


def penalty_window(prompt: Sequence[int], last_n: int) -> list[int]:
    """The prompt tokens a penalties sampler must have seen before the first sample, as
    llama-server and llama-completion feed it (common_sampler_accept over the whole prompt, its
    window keeping the last `last_n`): text tokens only (media positions, negative ids here,
    are llama.cpp's LLAMA_TOKEN_NULL, which it skips). 0: none."""
    if last_n <= 0:
        return []
    return [t for t in prompt if t >= 0][-last_n:]
