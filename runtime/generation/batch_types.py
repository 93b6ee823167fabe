"""The types of continuous batching (generation/scheduler.py): a request, its result, what a
step did, and a request running in a slot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..params import GenerateOptions, SamplingParams
from .logprobs import TokenLogprob, Trail
from .loop import TextStream

# A token's probability after the sampler chain, and its likeliest candidates' (post-sampling)
Probs = tuple[float, list[tuple[int, float]]]


@dataclass
class BatchRequest:
    """One prompt; `index` names it in the results (they come in finishing order)."""

    index: int
    tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: GenerateOptions = field(default_factory=GenerateOptions)
    # The scale of each of the model's adapters (None: the scales the model was loaded with).
    lora: tuple[float, ...] | None = None


@dataclass
class BatchResult:
    index: int
    text: str = ""
    # stop | length | context | interrupted (Ctrl-C) | cancelled (Scheduler.cancel) | error
    finish_reason: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error: str | None = None
    stop: str | None = None  # the stop string that ended it
    logprobs: list[TokenLogprob] | None = None  # with options.logprobs: each released token


@dataclass
class StepCounts:
    prompt_tokens: int = 0  # evaluated
    generated_tokens: int = 0
    tokens: int = 0  # decoded in this step

    def add(self, other: StepCounts) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.tokens += other.tokens


class Seq:
    """A request running in a slot. `n_past` counts its tokens in the slot's cells (queued
    included); `token` is the sampled token to decode next (None while reading the prompt)."""

    __slots__ = (
        "drafts",
        "forks",
        "generated",
        "lora",
        "n_past",
        "on_text",
        "parent",
        "pieces",
        "req",
        "reused",
        "row",
        "share",
        "slot",
        "stream",
        "token",
        "trail",
    )

    def __init__(self, req: BatchRequest, slot: int, on_text: TextSink | None):
        self.req, self.slot, self.on_text = req, slot, on_text
        self.n_past = 0
        self.reused = 0  # prompt tokens its slot held already (or the prompt cache restored)
        self.token: int | None = None
        self.row = -1  # this step's batch row whose logits to sample from
        self.generated = 0
        self.pieces: list[str] = []
        self.stream = TextStream(req.options.stop)
        self.parent: Seq | None = None
        self.forks: list[Seq] = []
        self.share = 0  # while waiting on `parent`: the prompt tokens it will copy from it
        self.trail: Trail | None = None  # with options.logprobs
        self.lora: tuple[float, ...] = ()
        self.drafts: list[int] = []  # queued after `token` in this step, to verify

    def emit(self, text: str, *, end: bool = False) -> None:
        """Release `text` (with the log-probabilities of its tokens, when asked for)."""
        entries = self.trail.release(text, end=end) if self.trail is not None else ()
        if text:
            self.pieces.append(text)
        if self.on_text is not None and (text or entries):
            self.on_text(text, entries)


# Gets a sequence's text as it is released, with the log-probabilities of the tokens it holds
# (empty unless the request asked for them).
TextSink = Callable[[str, Sequence[TokenLogprob]], None]
