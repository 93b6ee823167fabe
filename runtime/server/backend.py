"""The contract between the HTTP side of the server and the models behind it.

The HTTP side validates a request into a `TextRequest` and calls `Backend.submit`, which
returns a `Job` once the request is admitted (queued or running). The job's `events()` yields
`Piece`s and one `Finished` per choice (`n` of them), then ends. `Job.cancel()` (a client that
disconnected) takes the sequences out of the batch within one decode step. Everything here is
plain data: no HTTP, no llama.cpp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ..errors import InferError
from ..generation.infill import Infill
from ..generation.logprobs import TokenLogprob
from ..generation.templates import Message
from ..generation.tool_calls import ToolCall
from ..generation.tool_plan import ToolPlan
from ..params import LoadOptions, SamplingParams

# The id of the HTTP request being handled (access_log sets it), read by the model half when it
# admits a job: a decode thread names its requests in the line an unforeseen abort prints.
REQUEST_ID: ContextVar[str] = ContextVar("infer_request_id", default="")


@dataclass
class ServerConfig:
    """What `infer serve` was started with, for the model side (pool.ModelPool(config))."""

    models: list[str] = field(default_factory=list)  # loaded at start, never unloaded
    load: LoadOptions = field(default_factory=LoadOptions)  # ctx_size: per sequence
    parallel: int = 4  # sequences decoded together per model
    queue: int = 64  # requests waiting for a slot, per server; beyond: Overloaded
    max_models: int | None = None  # loaded at once; None: 1 + len(models)
    allow_pull: bool = False  # a request may name a model that is not cached yet
    offline: bool = False  # never touch the network (resolving names included)
    # a request naming a model this server cannot find gets the first model named at start
    # (as llama-server, which serves one model under any name); off: a 404
    any_name: bool = False
    # Speculative decoding for the models named at start: "lookup" or a draft model's name.
    draft: str | None = None
    draft_max: int | None = None  # drafted tokens per sequence and step; None: the default
    draft_adapt: bool = True  # False: verify every draft, even where it is measured not to pay


@dataclass
class TextRequest:
    """One validated request. `messages` for a chat (rendered with the model's template),
    `prompt` for a completion (plain text, BOS added as the vocabulary wants)."""

    messages: list[Message] | None = None
    prompt: str | None = None
    # llama.cpp's native prompt: token ids, maybe mixed with text (tokenized as `prompt` is);
    # used instead of `prompt` when set (/completion)
    prompt_tokens: list[int | str] | None = None
    # SamplingParams fields the request set (temperature, top_p, top_k, min_p, seed,
    # repeat_penalty, presence_penalty, frequency_penalty); the model's models.toml defaults and
    # then infer's fill the rest.
    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None  # None: until end of generation or the sequence's context
    stop: list[str] = field(default_factory=list)
    n: int = 1  # choices, decoded as parallel sequences
    ignore_eos: bool = False  # llama.cpp's extension: generate past end-of-generation tokens
    # OpenAI tool calling: the offered functions ({"type": "function", "function": {...}}),
    # "auto" | "required" (tool_choice "none" offers none); forced_tool: the named function
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"
    forced_tool: str | None = None
    parallel_tool_calls: bool = True
    # Fill-in-the-middle (/infill, Ollama's suffix): the prompt is built from this, by
    # generation/infill.py, for the model's FIM tokens; `messages` and `prompt` are unused.
    infill: Infill | None = None
    infill_field: str = "input_suffix"  # the request's word for the suffix, for a 400 naming it
    # The log-probability of each generated token and of its `logprobs` most likely
    # alternatives (generation/logprobs.py); None: none computed.
    logprobs: int | None = None
    # llama-server's post_sampling_probs: the probabilities after the sampler chain instead
    # (of the sampled token and the `logprobs` likeliest candidates left)
    post_sampling_probs: bool = False
    # llama-server's per-request LoRA scales, {adapter id: scale} (adapters left out: 0);
    # None: the scales the server applies now (POST /lora-adapters).
    lora: dict[int, float] | None = None
    # llama-server's return_progress: the job's events report the prompt's reading (Progress)
    progress: bool = False


@dataclass(frozen=True)
class Piece:
    index: int  # the choice
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens of `text`, when the request asked


@dataclass(frozen=True)
class Progress:
    """How far the prompt's reading is (llama-server's `prompt_progress`), for a request that
    asked: once when its first choice takes a slot, then after each decode that read some."""

    total: int  # prompt tokens
    cache: int  # of them, found in the slot's cells
    processed: int  # of them, in the slot's cells now (the cached ones included)
    time_ms: int  # since the request took its slot
    read_ms: float  # from taking the slot to the end of the last decode that read some


class FinishReason(str, Enum):
    """Why a choice ended: one set for the backend and answer assembly; each protocol module
    maps it to its own words (OpenAI's has no "cancelled": a cut answer is "length")."""

    STOP = "stop"  # end of generation or a stop string
    LENGTH = "length"  # max_tokens or the sequence's context
    CANCELLED = "cancelled"  # Job.cancel or shutdown
    TOOL_CALLS = "tool_calls"  # the answer is tool calls (answer assembly, never a backend)


@dataclass(frozen=True)
class Choice:
    """One choice of a whole answer. `content` is the text before any calls (None when empty
    and there are calls); `reason` the backend's Finished.reason, "tool_calls" with calls."""

    text: str
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)
    reason: FinishReason = FinishReason.STOP
    logprobs: tuple[TokenLogprob, ...] | None = None  # every token's, when the request asked


@dataclass(frozen=True)
class Finished:
    index: int
    reason: FinishReason
    stop: str | None = None  # the stop string that ended the choice (reason STOP)


class Job(Protocol):
    model: str  # the id the answer names
    prompt_tokens: int  # known at admission
    # The request's tools as this model's template writes and reads them (None: none offered):
    # the answer's text is parsed into calls with it.
    tools: ToolPlan | None

    def events(self) -> AsyncIterator[Piece | Finished | Progress]:
        """Pieces as they are generated, a Finished per choice; ends after the last Finished.
        With `TextRequest.progress`, Progress events while the prompt is read."""
        ...

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (final once events() ended)."""
        ...

    @property
    def ttft_s(self) -> float | None:
        """Seconds from submit to the first generated token; None before it."""
        ...

    def cancel(self) -> None:
        """Stop generating (idempotent; from the event loop's thread)."""
        ...


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]  # one per input, in order
    prompt_tokens: int  # over all inputs


@dataclass(frozen=True)
class ModelInfo:
    id: str
    created: int  # Unix seconds: when the model was pulled or made
    owned_by: str  # "library", the Hub owner, or "local"
    loaded: bool
    expires_at: float | None = None  # Unix seconds it unloads at (keep_alive); None: no deadline
    context: int | None = None  # tokens per sequence, once loaded
    # What it takes besides text, from its projector's header: "vision", "audio" (projector.py)
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter a served model was loaded with, as GET /lora-adapters lists it."""

    id: int
    path: str
    scale: float  # what requests without a `lora` field get now


@dataclass(frozen=True)
class SlotInfo:
    """One sequence slot of a loaded model, as llama-server's GET /slots shows it: the
    request it runs now, if any (its prompt and generation counts, what it samples with)."""

    id: int
    n_ctx: int  # tokens per sequence
    speculative: bool  # the model drafts (--draft)
    request: int | None = None  # the running request's id in this model's thread; None: idle
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of them, found in the slot's cells (or copied from another's)
    read_tokens: int = 0  # of them, decoded so far
    generated: int = 0  # tokens generated so far
    max_tokens: int | None = None  # its limit; None: none but the context
    new_line: bool = False  # its text so far has a line break
    sampling: SamplingParams | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class DecodeCounts:
    """What the decode threads did since the server started, as llama-server counts it for its
    `llamacpp:*` metrics: written by a model's decode thread, summed for /metrics."""

    decodes: int = 0  # decode steps (each one llama_decode; media and embeddings apart)
    busy_slots: int = 0  # over those steps: the sequences running in each, summed
    prompt_tokens: int = 0  # prompt tokens decoded (those found in a slot's cells excluded)
    prompt_s: float = 0.0  # seconds of the steps that decoded prompt tokens
    cached_tokens: int = 0  # prompt tokens found in a slot's cells or the prompt cache
    max_tokens: int = 0  # the longest sequence seen (prompt + generated), in tokens
    drafted: int = 0  # speculative decoding: draft tokens verified
    accepted: int = 0  # ... of those, accepted
    verified: int = 0  # ... verification steps (a sequence's drafts checked in one decode)

    def plus(self, other: DecodeCounts) -> DecodeCounts:
        """The two added up (the longest sequence: the longer)."""
        summed = {k: v + getattr(other, k) for k, v in vars(self).items()}
        summed["max_tokens"] = max(self.max_tokens, other.max_tokens)
        return DecodeCounts(**summed)


@dataclass(frozen=True)
class LoadReport:
    """How busy the backend is: what /metrics reports besides the HTTP side's own counters."""

    queue_depth: int  # admitted requests waiting for a slot
    busy_slots: int  # sequences decoding now
    slots: int  # all sequences of the loaded models
    decode: DecodeCounts = field(default_factory=DecodeCounts)  # since the server started


class Backend(Protocol):
    async def start(self) -> None:
        """Load the models named at start (in a worker thread: the event loop stays free, so
        /health answers 503 meanwhile). An InferError here: the server says why and exits 1."""
        ...

    def describe(self) -> list[str]:
        """Lines for `--stats` at start: the backend, each model's offload split and slots."""
        ...

    def close(self) -> None:
        """Free every model (after drain)."""
        ...

    @property
    def ready(self) -> bool:
        """The models named at start are loaded (/health: 200, else 503)."""
        ...

    def models(self) -> list[ModelInfo]:
        """Every model a request may name: the loaded ones and the rest of the local cache."""
        ...

    async def submit(self, model: str, request: TextRequest) -> Job:
        """Admit a request (`model` "": the first model named at start, as llama-server and
        vLLM answer a request that names none): load `model` if needed (LRU unload beyond
        --max-models), render and tokenize, queue it. Raises ModelUnavailable (404),
        PromptTooLong (400), Overloaded (503 with Retry-After), TooManyChoices (400: n over the
        slots) or InferError (a one-line reason: 400 for a UsageError/TemplateError, 500
        otherwise)."""
        ...

    async def tokenize(
        self, model: str, text: str, *, add_special: bool, parse_special: bool
    ) -> list[int]:
        """`text` as `model`'s token ids (llama.cpp's /tokenize): `add_special` adds BOS/EOS as
        the vocabulary does, `parse_special` reads control-token markup as those tokens."""
        ...

    async def pieces(self, model: str, tokens: list[int]) -> list[bytes]:
        """The bytes each token stands for (control tokens as their markup); a UsageError (400)
        names a token outside the vocabulary."""
        ...

    async def render(
        self, model: str, request: TextRequest, *, add_generation_prompt: bool = True
    ) -> str:
        """The chat prompt `request.messages` (and tools) make with `model`'s template: what
        submit would tokenize (llama.cpp's /apply-template); without the assistant turn's
        opening when `add_generation_prompt` is false."""
        ...

    async def count_tokens(self, model: str, request: TextRequest) -> int:
        """The prompt tokens `request` would take on `model` (rendered and tokenized as submit
        does, tools included), generating nothing. Raises as submit does."""
        ...

    def load_report(self) -> LoadReport:
        """Queue depth and slots in use, now (for /metrics)."""
        ...

    def slot_report(self, model: str | None) -> list[SlotInfo]:
        """The slots of a loaded `model` (None: the first named at start), now.
        ModelUnavailable when it is not loaded."""
        ...

    def lora_adapters(self, model: str | None) -> list[AdapterInfo]:
        """The LoRA adapters of a loaded `model` (None: the first named at start) and their
        scales now. ModelUnavailable when it is not loaded."""
        ...

    def set_lora(self, model: str | None, scales: dict[int, float]) -> None:
        """The scales requests without a `lora` field get from now on (adapters left out: 0);
        answers already running keep theirs. UsageError for an id the model lacks."""
        ...

    async def keep_alive(self, model: str, seconds: float | None) -> None:
        """Load `model` if needed, then unload it once idle `seconds` from now (0: as soon as it
        is idle, not loading it for that; None: no deadline). Models named at start stay."""
        ...

    async def embed(self, model: str, inputs: list[str] | list[list[int]]) -> Embeddings:
        """Vectors for texts (or token arrays), batched with other embedding requests for the
        same model. Raises as submit does; a model that makes no sentence vectors (its GGUF
        says pooling "none") is a UsageError (400)."""
        ...

    async def rerank(self, model: str, query: str, documents: list[str]) -> Embeddings:
        """A relevance score per document (each a one-number vector), for a reranker (its GGUF's
        pooling is "rank"), batched with the model's other pooled requests. Raises as embed
        does; a model that is not a reranker is an OptionError naming "model" (400)."""
        ...

    async def drain(self, timeout_s: float) -> None:
        """Shutdown: admit nothing more (submit raises Overloaded); wait up to `timeout_s` for
        running and queued answers, then cancel them: each ends with Finished(reason=
        "cancelled"), which the HTTP side reports as finish_reason "length" (a cut answer)."""
        ...


class ModelUnavailable(InferError):
    """The model is not in the local cache (or cannot be resolved offline): a 404."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name


class PromptTooLong(InferError):
    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; this server's context per sequence is "
            f"{n_ctx} tokens (it must be started with a larger context size)"
        )
        self.prompt_tokens, self.n_ctx = prompt_tokens, n_ctx


class Overloaded(InferError):
    """The queue is full: a 503 with Retry-After."""

    def __init__(self, queued: int, retry_after_s: int = 1, *, message: str | None = None):
        super().__init__(message or f"the server is busy: {queued} requests are waiting already")
        self.retry_after_s = retry_after_s


class TooManyChoices(InferError):
    def __init__(self, n: int, slots: int) -> None:
        super().__init__(f"n={n} is more than this server's {slots} parallel sequences")
        self.n, self.slots = n, slots
