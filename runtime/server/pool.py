"""The models a server holds (backend.Backend): loaded at start or on a request's demand,
unloaded least-recently-used beyond --max-models (as Ollama does), each decoded by its own
ModelWorker thread.

A request may name what `infer run` could use offline — an alias, a cached Hub model, a
quantized model — but never a file path: paths are served only when named at start (a client
must not make the server open files of its choosing). Nothing is downloaded unless the server
was started with --allow-pull.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime

from ..api import load, prompt_tokens
from ..errors import (
    BadReferenceError,
    EngineError,
    ModelFileError,
    ModelNotFoundError,
    OptionError,
    UsageError,
)
from ..generation.infill import infill_tokens
from ..generation.templates import Message
from ..generation.tool_plan import ToolPlan
from ..llama.embedder import (
    Embedder,
    embedding_tokens,
    gguf_pooling,
    is_embedding_model,
    makes_no_sentence_vectors,
)
from ..llama.embedder import default_ctx as embed_default_ctx
from ..llama.engine import KV_BUDGET_BYTES, backends, default_ctx
from ..llama.interface import Model
from ..llama.offload import describe_split
from ..llama.special import rerank_tokens
from ..llama.tokens import check_ids
from ..models.gguf import read_header
from ..models.refs import PathRef, parse_ref
from ..models.resolve import NotDownloadedError, ResolvedModel, ensure_local, resolve
from ..options import BY_NAME, Overrides
from ..options import sampling as layered
from ..params import GenerateOptions, SamplingParams
from ..tools.rerank import check_reranker
from .backend import (
    REQUEST_ID,
    AdapterInfo,
    DecodeCounts,
    Embeddings,
    LoadReport,
    ModelInfo,
    ModelUnavailable,
    Overloaded,
    PromptTooLong,
    ServerConfig,
    SlotInfo,
    TextRequest,
    TooManyChoices,
)
from .drafting import make_drafter
from .worker import EmbedRequest, ModelWorker, ServedJob


@dataclass
class _Served:
    resolved: ResolvedModel
    engine: Model
    worker: ModelWorker
    created: int
    # the vocabulary's end-of-generation tokens: what `ignore_eos` bans, as llama-server does
    eog: tuple[int, ...] = ()


class ModelPool:
    def __init__(self, config: ServerConfig, note: Callable[[str], None] | None = None) -> None:
        """`note` gets the server's own lines (loads, unloads, failures); stderr by default."""
        self.config = config
        self._note = note or _to_stderr
        self._served: OrderedDict[str, _Served] = OrderedDict()  # least recently used first
        self._names: dict[str, str] = {}  # what requests said -> the served model's key
        self._pinned: set[str] = set()
        self._expires: dict[str, float] = {}  # keep_alive: key -> Unix seconds to unload at
        self._timers: set[asyncio.Task[None]] = set()
        self._admitting: dict[str, int] = {}  # key -> submits tokenizing with its engine now
        self._lock: asyncio.Lock | None = None
        self._ready = False
        self._draining = False
        self._retired = DecodeCounts()  # what unloaded models decoded (/metrics counts it all)

    # -- Backend ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        for name in self.config.models:
            served = await self._get(name, from_start=True)
            self._pinned.add(served.resolved.name)
        self._ready = True

    def describe(self) -> list[str]:
        rpc = self.config.load.rpc
        servers = f", RPC ({', '.join(rpc)})" if rpc else ""
        lines = [f"backend: {', '.join(backends())}{servers}"]
        for name, s in self._served.items():
            e = s.engine
            where = describe_split(e.split) or (
                f"{e.offloaded_layers}/{e.n_layers} layers on the GPU"
                if e.offloaded_layers
                else "CPU only"
            )
            lines.append(
                f"{name}: {where}, {s.worker.slots} slots of {s.worker.n_ctx_seq} tokens, "
                f"{e.threads} threads"
            )
        return lines

    def models(self) -> list[ModelInfo]:
        from ..models import inventory
        from ..models.projector import capabilities_or_none, projector_for

        seen: dict[str, ModelInfo] = {}
        # Those named at start first, in that order: a request that names no model (/infill,
        # /v1/rerank) gets the first, whichever was used last.
        started = [self._names.get(n, n) for n in self.config.models]
        rank = {name: i for i, name in reversed(list(enumerate(started)))}
        order = sorted(self._served.items(), key=lambda kv: rank.get(kv[0], len(started)))
        for name, s in order:
            until, ctx = self._expires.get(name), s.worker.n_ctx_seq
            caps = tuple(capabilities_or_none(projector_for(s.resolved.path)))
            seen[name] = ModelInfo(name, s.created, _owner(s.resolved), True, until, ctx, caps)
        for row in inventory.aliases():
            if row["status"] != "not downloaded" and row["name"] not in seen:
                caps = tuple(row.get("capabilities") or ())
                seen[row["name"]] = ModelInfo(row["name"], 0, "library", False, capabilities=caps)
        for row in inventory.cached_models()["models"]:
            name = row["name"]
            if row.get("damaged") or not row.get("complete") or name in seen:
                continue
            owner = str(row.get("repo") or "local").split("/")[0]
            caps = tuple(row.get("capabilities") or ())
            seen[name] = ModelInfo(
                name, _epoch(row.get("modified")), owner, False, capabilities=caps
            )
        return list(seen.values())

    async def submit(self, model: str, request: TextRequest) -> ServedJob:
        self._check_room()
        served = await self._get(model)
        if is_embedding_model(served.engine):
            raise UsageError(
                f"{served.resolved.name} is an embedding model: it makes vectors, not text "
                "(POST /v1/embeddings)"
            )
        worker = served.worker
        if request.n > worker.slots:
            raise TooManyChoices(request.n, worker.slots)
        with self._using(served):
            tokens, tools = await asyncio.to_thread(self._tokens, served, request)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= worker.n_ctx_seq:
            raise PromptTooLong(len(tokens), worker.n_ctx_seq)
        options = GenerateOptions(
            max_tokens=request.max_tokens,
            stop=list(request.stop),
            ignore_eog=request.ignore_eos,
            logprobs=request.logprobs,
            post_sampling_probs=request.post_sampling_probs,
        )
        sampling = self._sampling(served, request)
        lora = None if request.lora is None else _scales(served, request.lora, "lora")
        job = ServedJob(
            served.resolved.name,
            tokens,
            [tools.constrain(s) for s in sampling] if tools else sampling,
            options.validate(),
            asyncio.get_running_loop(),
            tools=tools,
            lora=lora,
            progress=request.progress,
            request_id=REQUEST_ID.get(),
        )
        worker.submit(job)
        self._served.move_to_end(served.resolved.name)
        return job

    async def tokenize(
        self, model: str, text: str, *, add_special: bool, parse_special: bool
    ) -> list[int]:
        served = await self._get(model)
        engine = served.engine

        def work() -> list[int]:
            buffer, n = engine.tokenize_into_buffer(
                text, add_special=add_special, special=parse_special
            )
            return list(buffer[:n])

        with self._using(served):
            return await asyncio.to_thread(work)

    async def pieces(self, model: str, tokens: list[int]) -> list[bytes]:
        served = await self._get(model)
        engine = served.engine
        check_ids(engine.n_vocab, tokens, "tokens")
        # Control tokens as their markup, as llama.cpp's /detokenize writes them.
        return [engine.piece(t) or engine.token_text(t).encode() for t in tokens]

    async def render(
        self, model: str, request: TextRequest, *, add_generation_prompt: bool = True
    ) -> str:
        served = await self._get(model)
        with self._using(served):
            return await asyncio.to_thread(self._render, served, request, add_generation_prompt)

    async def count_tokens(self, model: str, request: TextRequest) -> int:
        served = await self._get(model)
        with self._using(served):  # as submit: keep_alive 0 must not unload it meanwhile
            tokens, _ = await asyncio.to_thread(self._tokens, served, request)
        return len(tokens)

    async def embed(self, model: str, inputs: list[str] | list[list[int]]) -> Embeddings:
        self._check_room()
        served = await self._get(model)
        engine = served.engine
        if makes_no_sentence_vectors(engine):
            raise UsageError(
                f"{served.resolved.name} makes no vector for a whole text (its pooling is "
                "'none'): use an embedding model"
            )
        if gguf_pooling(engine) == "rank":
            raise UsageError(
                f"{served.resolved.name} is a reranker: it scores documents for a query "
                "(POST /v1/rerank), it makes no vectors"
            )
        with self._using(served):
            tokens = await asyncio.to_thread(_embedding_tokens, engine, inputs)
        return await self._pooled(served, tokens)

    async def rerank(self, model: str, query: str, documents: list[str]) -> Embeddings:
        self._check_room()
        served = await self._get(model)
        engine = served.engine
        check_reranker(engine, served.resolved.name)
        with self._using(served):
            tokens = await asyncio.to_thread(
                lambda: [rerank_tokens(engine, query, d) for d in documents]
            )
        return await self._pooled(served, tokens)

    async def _pooled(self, served: _Served, tokens: list[list[int]]) -> Embeddings:
        """Pooled outputs (vectors, or a reranker's scores) for these inputs, computed on the
        model's decode thread together with the other pooled requests waiting there."""
        limit = self.config.load.ctx_size or embed_default_ctx(served.engine)
        for i, t in enumerate(tokens):
            if not t:
                raise UsageError(f"input {i} is empty")
            if len(t) > limit:
                raise PromptTooLong(len(t), limit)
        request = EmbedRequest(tokens, asyncio.get_running_loop())
        served.worker.submit_embed(request)
        self._served.move_to_end(served.resolved.name)
        vectors = await request.future
        return Embeddings(vectors, sum(len(t) for t in tokens))

    async def keep_alive(self, model: str, seconds: float | None) -> None:
        key = self._names.get(model)
        if seconds == 0 and key not in self._served:
            return  # unloading what is not loaded: nothing to do
        key = (await self._get(model)).resolved.name
        if key in self._pinned or seconds is None:
            self._expires.pop(key, None)
            return
        self._expires[key] = deadline = time.time() + seconds
        self._timers.add(task := asyncio.create_task(self._expire(key, deadline)))
        task.add_done_callback(self._timers.discard)

    @contextmanager
    def _using(self, served: _Served) -> Iterator[None]:
        """A submit tokenizing with the model's engine: keep_alive does not unload it meanwhile."""
        key = served.resolved.name
        self._admitting[key] = self._admitting.get(key, 0) + 1
        try:
            yield
        finally:
            self._admitting[key] -= 1

    async def _expire(self, key: str, deadline: float) -> None:
        """Unload `key` at `deadline`, or when it is next idle, unless a later keep_alive moved
        the deadline (or it was unloaded already)."""
        while self._expires.get(key) == deadline and key in self._served:
            busy = self._admitting.get(key, 0) or not self._served[key].worker.idle
            if time.time() < deadline or busy:
                await asyncio.sleep(min(max(deadline - time.time(), 0.05), 1.0))
                continue
            self._unload(key)

    def _check_room(self) -> None:
        if self._draining:
            raise Overloaded(0, message="the server is shutting down")
        queued = sum(
            len(s.worker.waiting) + len(s.worker.embed_waiting) for s in self._served.values()
        )
        if queued >= self.config.queue:
            raise Overloaded(queued)

    def load_report(self) -> LoadReport:
        workers = [s.worker for s in self._served.values()]
        decode = self._retired
        for w in workers:
            decode = decode.plus(w.decode_counts())
        return LoadReport(
            queue_depth=sum(len(w.waiting) for w in workers),
            busy_slots=sum(w.busy_slots for w in workers),
            slots=sum(w.slots for w in workers),
            decode=decode,
        )

    async def drain(self, timeout_s: float) -> None:
        self._draining = True
        deadline = time.monotonic() + max(0.0, timeout_s)
        while time.monotonic() < deadline and not self._idle():
            await asyncio.sleep(0.05)
        for s in self._served.values():
            s.worker.cancel_all()
        # The cancelled answers end within a step; give their last events time to go out.
        settle = time.monotonic() + 5.0
        while time.monotonic() < settle and not self._idle():
            await asyncio.sleep(0.02)

    def close(self) -> None:
        for key in list(self._served):
            self._unload(key)

    # -- models ----------------------------------------------------------------------------------

    def _idle(self) -> bool:
        return all(s.worker.idle for s in self._served.values())

    async def _get(self, name: str, *, from_start: bool = False) -> _Served:
        if not name:  # a request that names no model: the first one named at start
            if not self.config.models:
                raise UsageError(
                    "'model' is required: this server was started without a model to default to"
                )
            name = self.config.models[0]
        key = self._names.get(name)
        if key is not None and key in self._served:
            self._served.move_to_end(key)
            return self._served[key]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one load at a time; the event loop keeps answering
            key = self._names.get(name)
            if key is not None and key in self._served:
                return self._served[key]
            resolved = await asyncio.to_thread(self._resolve, name, from_start)
            if resolved.name in self._served:
                self._names[name] = resolved.name
                return self._served[resolved.name]
            self._make_room()
            served = await asyncio.to_thread(self._load, resolved, from_start)
            self._served[resolved.name] = served
            self._names[name] = resolved.name
            return served

    def _resolve(self, name: str, from_start: bool) -> ResolvedModel:
        try:
            if not from_start and isinstance(parse_ref(name), PathRef):
                raise ModelUnavailable(
                    name,
                    f"model '{name}' is not served here: a file is served only when "
                    "`infer serve` names it at start",
                )
            if self.config.allow_pull and not self.config.offline:
                return ensure_local(name, offline=False)
            return resolve(name)
        except (NotDownloadedError, ModelNotFoundError, BadReferenceError, ModelFileError) as e:
            if from_start:
                raise
            if self.config.any_name and self.config.models:  # --any-model-name
                return self._resolve(self.config.models[0], True)
            hint = "" if isinstance(e, NotDownloadedError) else f"; run: infer pull {name}"
            raise ModelUnavailable(name, f"{e}{hint}") from None

    def _make_room(self) -> None:
        """Unload least-recently-used idle models until one more fits under --max-models."""
        limit = self.config.max_models or 1 + len(self.config.models)
        while len(self._served) >= max(limit, len(self._pinned) + 1):
            victim = next(
                (k for k, s in self._served.items() if k not in self._pinned and s.worker.idle),
                None,
            )
            if victim is None:
                raise Overloaded(
                    len(self._served),
                    message=f"{len(self._served)} models are loaded and busy (--max-models "
                    f"{limit}); try again when one is idle",
                )
            self._unload(victim)

    def _unload(self, key: str) -> None:
        served = self._served.pop(key)
        self._expires.pop(key, None)
        for alias in [a for a, k in self._names.items() if k == key]:
            del self._names[alias]
        served.worker.stop()
        self._retired = self._retired.plus(served.worker.decode_counts())
        served.engine.close()
        self._note(f"unloaded {key}")

    def slot_report(self, model: str | None) -> list[SlotInfo]:
        return self._loaded(model).worker.slot_infos()

    def lora_adapters(self, model: str | None) -> list[AdapterInfo]:
        served = self._loaded(model)
        scales = served.worker.lora
        return [AdapterInfo(i, a.path, scales[i]) for i, a in enumerate(served.engine.adapters)]

    def set_lora(self, model: str | None, scales: dict[int, float]) -> None:
        served = self._loaded(model)
        served.worker.lora = _scales(served, scales, "")  # one assignment: the thread reads it

    def _loaded(self, model: str | None) -> _Served:
        """A loaded model by name, or the first one named at start."""
        if not model and not self.config.models:
            raise UsageError("no model was named at start: say which with ?model=NAME")
        name = model or self.config.models[0]
        key = self._names.get(name, name)
        if key not in self._served:
            raise ModelUnavailable(name, f"model '{name}' is not loaded on this server")
        return self._served[key]

    def _load(self, resolved: ResolvedModel, from_start: bool = False) -> _Served:
        config = self.config
        parallel = config.parallel
        ctx_seq = resolved.defaults.context(config.load.ctx_size)
        if not ctx_seq:
            ctx_seq = default_ctx(read_header(resolved.path), KV_BUDGET_BYTES // parallel)
        from ..models.projector import projector_for

        # Images and audio: the projector stored with the model (a library user may name one).
        # The model makes no context of its own: the worker's is the only one. Its offload and
        # memory checks are made for one sequence's window; the prompt cache is the worker's.
        mmproj = config.load.mmproj or projector_for(resolved.path)
        # --lora is for the models named at start; the others get their models.toml adapters.
        lora = config.load.lora if from_start and config.load.lora else resolved.defaults.lora
        options = replace(
            config.load, ctx_size=ctx_seq, prompt_cache=False, mmproj=mmproj, lora=lora
        )
        try:  # loaded in a child process first: a file llama.cpp aborts on fails only this
            engine = load(resolved, options, probe=True)
        except EngineError as e:
            self._note(f"{resolved.name} was not loaded: {e}")
            raise EngineError(f"model '{resolved.name}' cannot be loaded: {e}") from None
        n_batch = min(config.load.batch_size, ctx_seq)
        try:
            context = engine.new_context(parallel, ctx_seq, n_batch)
        except BaseException:
            engine.close()
            raise
        try:  # --draft: for the models named at start
            drafter = make_drafter(config, resolved, engine, context) if from_start else None
        except BaseException:
            context.close()
            engine.close()
            raise
        cache = None
        if config.load.prompt_cache:  # long prompts' states on disk, shared with `infer run`
            from ..generation.prompt_cache import PromptCache

            cache = PromptCache(resolved)
        encoder = is_embedding_model(engine)  # no text: nothing to warm up for
        embed_ctx = config.load.ctx_size or embed_default_ctx(engine)
        worker = ModelWorker(
            resolved.name, engine, context, self._note, cache,
            warm_up=None if encoder else max(engine.bos_id, 0),
            embedder=lambda: Embedder(engine, pooling=None, n_ctx=embed_ctx),
            drafter=drafter, draft_adapt=config.draft_adapt,
        )  # fmt: skip
        self._note(f"loaded {resolved.name} in {engine.load_s:.1f} s")
        eog = tuple(t for t in range(engine.n_vocab) if engine.is_eog(t))
        return _Served(resolved, engine, worker, _created(resolved), eog)

    # -- requests --------------------------------------------------------------------------------

    def _tokens(self, served: _Served, request: TextRequest) -> tuple[list[int], ToolPlan | None]:
        """The prompt's tokens, and the plan for the request's tools in this model's syntax."""
        engine, defaults = served.engine, served.resolved.defaults
        if request.infill is not None:  # the context per sequence and batch llama-server's has
            n_batch, n_ctx = self.config.load.batch_size, served.worker.n_ctx_seq
            fim = infill_tokens(
                engine,
                request.infill,
                n_batch=n_batch,
                n_ctx=n_ctx,
                field_name=request.infill_field,
            )
            return fim, None
        if request.messages is not None:
            messages = list(request.messages)
            if defaults.system and not any(m.role == "system" for m in messages):
                messages.insert(0, Message("system", defaults.system))
            tools = _tool_plan(request, defaults.chat_template or engine.chat_template)
            rendered = tools.rendered if tools else None
            tokens = prompt_tokens(
                engine, messages, template=defaults.chat_template, tools=rendered
            )
            return tokens, tools
        if request.prompt_tokens is not None:
            return _mixed_tokens(engine, request.prompt_tokens), None
        return prompt_tokens(engine, [Message("user", request.prompt or "")], raw=True), None

    def _render(self, served: _Served, request: TextRequest, generation_prompt: bool) -> str:
        """The chat prompt as text, rendered as _tokens renders it (system default, tools)."""
        from ..generation.templates import render

        engine, defaults = served.engine, served.resolved.defaults
        messages = list(request.messages or [])
        if defaults.system and not any(m.role == "system" for m in messages):
            messages.insert(0, Message("system", defaults.system))
        template = defaults.chat_template or engine.chat_template
        if not template:
            raise UsageError(f"{served.resolved.name} has no chat template")
        tools = _tool_plan(request, template)
        return render(
            template,
            messages,
            bos_token=engine.bos_text,
            eos_token=engine.eos_text,
            add_generation_prompt=generation_prompt,
            tools=tools.rendered if tools else None,
        )

    def _sampling(self, served: _Served, request: TextRequest) -> list[SamplingParams]:
        """The request's fields over the model's models.toml defaults over infer's; one per
        choice (with a seed, choice i uses seed + i: n equal answers would be pointless)."""
        given = {k: v for k, v in request.sampling.items() if k in BY_NAME}
        # grammar, logit_bias: not options of the table, SamplingParams fields all the same
        constraint = {k: v for k, v in request.sampling.items() if k not in BY_NAME}
        bias = constraint.get("logit_bias", ())
        bad = next((t for t, _ in bias if not 0 <= t < served.engine.n_vocab), None)
        if bad is not None:  # never handed to llama.cpp, which would write past its array
            raise OptionError(
                "logit_bias",
                f"has token {bad}, outside the vocabulary (0..{served.engine.n_vocab - 1})",
            )
        if request.ignore_eos:  # llama-server's way: never sampled, so the text goes on
            constraint["logit_bias"] = (*bias, *((t, -math.inf) for t in served.eog))
        base = layered(
            Overrides.of(given),
            served.resolved.defaults.sampling,
            base=SamplingParams(**constraint),
        )
        if base.seed is None:
            return [base] * request.n
        return [replace(base, seed=(base.seed + i) % 2**32) for i in range(request.n)]


def _scales(served: _Served, given: dict[int, float], field: str) -> tuple[float, ...]:
    """Each adapter's scale from {id: scale} (adapters left out: 0, as llama-server does);
    an id the model has no adapter for is a UsageError naming the field."""
    n = len(served.engine.adapters)
    for i, ident in enumerate(given):
        if ident >= n:
            has = f"adapters 0 to {n - 1}" if n else "no adapters (start it with --lora)"
            raise UsageError(
                f"{field}[{i}].id: no adapter {ident}; {served.resolved.name} has {has}"
            )
    return tuple(given.get(i, 0.0) for i in range(n))


def _tool_plan(request: TextRequest, template: str | None) -> ToolPlan | None:
    """The request's tools planned for the model's template (None: none offered): the syntax
    it writes calls in, and the grammar its tool_choice asks for (applied to each choice's
    sampling at submit, never written back into the request)."""
    from ..generation.tool_plan import plan

    if not request.tools:
        return None
    return plan(
        request.tools,
        request.tool_choice,
        template,
        only=request.forced_tool,
        parallel=request.parallel_tool_calls,
    )


def _mixed_tokens(engine: Model, parts: Sequence[int | str]) -> list[int]:
    """llama.cpp's prompt of token ids and text: text tokenized as a completion's prompt is
    (never parsed for control tokens), ids checked against the vocabulary; BOS added before a
    prompt that starts with text, as llama.cpp's tokenize_mixed does."""
    out: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            tokens = engine.tokenize(part, False)
            out.extend(engine.with_bos(tokens) if i == 0 else tokens)
        else:
            out.append(part)
    check_ids(engine.n_vocab, out, "prompt")
    return out


def _embedding_tokens(engine: Model, inputs: Sequence[str | list[int]]) -> list[list[int]]:
    """Texts tokenized as llama-embedding does (BOS/EOS/SEP as the vocabulary adds them);
    token arrays checked against the vocabulary."""
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            out.append(embedding_tokens(engine, item))
            continue
        check_ids(engine.n_vocab, item, f"input[{i}]")
        out.append(list(item))
    return out


def _to_stderr(line: str) -> None:
    with suppress(AttributeError, OSError, ValueError):  # stderr closed: the server goes on
        sys.stderr.write(f"infer: {line}\n")
        sys.stderr.flush()


def _owner(resolved: ResolvedModel) -> str:
    if resolved.spec is not None:
        return "library"
    if resolved.manifest is not None:
        return resolved.manifest.repo.split("/")[0]
    return "local"


def _created(resolved: ResolvedModel) -> int:
    if resolved.manifest is not None:
        return _epoch(resolved.manifest.pulled_at)
    if resolved.quantized is not None:
        return _epoch(resolved.quantized.created_at)
    try:
        return int(resolved.path.stat().st_mtime)
    except OSError:
        return 0


def _epoch(iso: object) -> int:
    try:
        return int(datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
