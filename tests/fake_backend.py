"""A scripted `Backend` for the HTTP side's tests: pieces per choice, delays, errors on
demand, and a record of every submit and cancel. No model, no llama.cpp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from infer.runtime.errors import UsageError
from infer.runtime.generation.tool_plan import ToolPlan, plan
from infer.runtime.server.backend import (
    AdapterInfo,
    Backend,
    Embeddings,
    Finished,
    FinishReason,
    LoadReport,
    ModelInfo,
    ModelUnavailable,
    Overloaded,
    Piece,
    SlotInfo,
    TextRequest,
    TooManyChoices,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_K_M"
BOS = 256  # the fake vocabulary: bytes 0..255, then BOS


@dataclass
class Script:
    """What each job does: the same pieces for every choice, `delay_s` before each."""

    pieces: list[str] = field(default_factory=lambda: ["Paris", " is", " the", " capital."])
    delay_s: float = 0.0
    reason: str = "stop"
    stop: str | None = None  # the stop string that ended each choice (with reason "stop")
    prompt_tokens: int = 7
    fail_after: int | None = None  # raise RuntimeError from events() after this many pieces


class FakeJob:
    def __init__(self, backend: FakeBackend, model: str, request: TextRequest, script: Script):
        self.backend, self.model, self.request, self.script = backend, model, request, script
        self.prompt_tokens = script.prompt_tokens
        # Planned as the pool plans it, for the template the backend pretends its model has.
        self.tools: ToolPlan | None = (
            None
            if not request.tools
            else plan(
                request.tools,
                request.tool_choice,
                backend.template,
                only=request.forced_tool,
                parallel=request.parallel_tool_calls,
            )
        )
        self.generated = 0
        self.first_token_s: float | None = None
        self.cancelled = threading.Event()
        self.finished = False
        self.loop = asyncio.get_running_loop()
        self.submitted_at = self.loop.time()

    @property
    def completion_tokens(self) -> int:
        return self.generated

    @property
    def ttft_s(self) -> float | None:
        return self.first_token_s

    def cancel(self) -> None:
        assert asyncio.get_running_loop() is self.loop  # from the event loop's thread
        if not self.cancelled.is_set():
            self.backend.cancels.append(self)
        self.cancelled.set()

    async def events(self) -> AsyncIterator[Piece | Finished]:
        try:
            async for event in self._events():
                yield event
        finally:
            self.finished = True

    async def _events(self) -> AsyncIterator[Piece | Finished]:
        s = self.script
        n = self.request.n
        limit = self.request.max_tokens
        for k, text in enumerate(s.pieces):
            if s.fail_after is not None and k == s.fail_after:
                raise RuntimeError("the decode loop fell over")
            if limit is not None and k >= limit:
                for i in range(n):
                    yield Finished(i, FinishReason.LENGTH)
                return
            for i in range(n):
                waited = 0.0
                while waited < s.delay_s and not self.cancelled.is_set():
                    await asyncio.sleep(0.01)
                    waited += 0.01
                if self.cancelled.is_set():
                    for j in range(n):
                        yield Finished(j, FinishReason.CANCELLED)
                    return
                self.generated += 1
                if self.first_token_s is None:
                    self.first_token_s = self.loop.time() - self.submitted_at
                yield Piece(i, text)
        for i in range(n):
            yield Finished(i, FinishReason(s.reason), s.stop)


class FakeBackend:
    def __init__(self, *, slots: int = 4, start_delay_s: float = 0.0) -> None:
        self.slots = slots
        self.start_delay_s = start_delay_s
        self.script = Script()
        self.known = {MODEL: True, "smollm2": True, "qwen3:0.6b": False}
        self.raise_on_submit: Exception | None = None  # raised by the next submit
        self.submits: list[tuple[str, TextRequest]] = []
        self.jobs: list[FakeJob] = []
        self.cancels: list[FakeJob] = []
        self.counted: list[tuple[str, TextRequest]] = []  # count_tokens calls
        self.started = False
        self.drained: list[float] = []
        self.closed = False
        self.queue_depth = 0
        self.busy_slots = 0
        self.draining = False
        self.start_error: Exception | None = None  # raised by start()
        self.template: str | None = None  # the model's chat template (None: generic calls)
        self.kept: list[tuple[str, float | None]] = []  # keep_alive calls
        self.embedded: list[tuple[str, list[str] | list[list[int]]]] = []  # embed calls
        self.adapters: list[AdapterInfo] = []  # LoRA adapters (GET/POST /lora-adapters)
        self.tokenized: list[tuple[str, str, bool, bool]] = []  # tokenize calls
        self.detokenized: list[tuple[str, list[int]]] = []  # pieces calls
        self.rendered: list[tuple[str, TextRequest]] = []  # render calls
        self.reranked: list[tuple[str, str, list[str]]] = []  # rerank calls

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay_s)
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    def describe(self) -> list[str]:
        return [f"fake backend: {self.slots} slots"]

    def close(self) -> None:
        self.closed = True

    @property
    def ready(self) -> bool:
        return self.started

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(m, 1_700_000_000, "local", loaded) for m, loaded in self.known.items()]

    async def submit(self, model: str, request: TextRequest) -> FakeJob:
        model = model or MODEL  # none named: the first model named at start, as the pool does
        self.submits.append((model, request))
        if self.draining:
            raise Overloaded(0)
        if self.raise_on_submit is not None:
            error, self.raise_on_submit = self.raise_on_submit, None
            raise error
        if model not in self.known:
            raise ModelUnavailable(model, f"'{model}' is not in the local cache")
        if request.n > self.slots:
            raise TooManyChoices(request.n, self.slots)
        job = FakeJob(self, model, request, self.script)
        self.jobs.append(job)
        return job

    async def count_tokens(self, model: str, request: TextRequest) -> int:
        """The script's prompt_tokens, plus one per message: enough to tell conversations apart."""
        self.counted.append((model, request))
        if model not in self.known:
            raise ModelUnavailable(model, f"'{model}' is not in the local cache")
        return self.script.prompt_tokens + len(request.messages or [])

    def _known(self, model: str) -> str:
        model = model or MODEL  # none named: the first model named at start
        if model not in self.known:
            raise ModelUnavailable(model, f"'{model}' is not in the local cache")
        return model

    async def tokenize(
        self, model: str, text: str, *, add_special: bool, parse_special: bool
    ) -> list[int]:
        """A byte-level vocabulary: one token per UTF-8 byte (its value), BOS (256) first when
        `add_special`; `parse_special` only recorded."""
        self.tokenized.append((model, text, add_special, parse_special))
        self._known(model)
        return ([BOS] if add_special else []) + list(text.encode())

    async def pieces(self, model: str, tokens: list[int]) -> list[bytes]:
        """The byte each token stands for (BOS as "<s>"); a UsageError outside 0..256."""
        self.detokenized.append((model, tokens))
        self._known(model)
        if any(not 0 <= t <= BOS for t in tokens):
            raise UsageError(
                f"token {next(t for t in tokens if not 0 <= t <= BOS)} is not in the vocabulary"
            )
        return [b"<s>" if t == BOS else bytes([t]) for t in tokens]

    async def render(
        self, model: str, request: TextRequest, *, add_generation_prompt: bool = True
    ) -> str:
        """Each message as "role: content" on a line of its own (a generic template), then
        "assistant:" when the answer's turn is opened."""
        self.rendered.append((model, request))
        self._known(model)
        turns = "".join(f"{m.role}: {m.text}\n" for m in request.messages or [])
        return turns + ("assistant:" if add_generation_prompt else "")

    async def rerank(self, model: str, query: str, documents: list[str]) -> Embeddings:
        """A score per document: the words it shares with `query`, so order is testable."""
        self.reranked.append((model, query, documents))
        self._known(model)
        words = set(query.lower().split())
        scores = [[float(len(words & set(d.lower().split())))] for d in documents]
        return Embeddings(scores, prompt_tokens=sum(len(query) + len(d) for d in documents))

    async def keep_alive(self, model: str, seconds: float | None) -> None:
        if model not in self.known:
            raise ModelUnavailable(model, f"'{model}' is not in the local cache")
        self.kept.append((model, seconds))

    def slot_report(self, model: str | None) -> list[SlotInfo]:
        """`slots` idle slots of 2048 tokens each, `busy_slots` of them running a request."""
        if model is not None and model not in self.known:
            raise ModelUnavailable(model, f"model '{model}' is not loaded on this server")
        return [
            SlotInfo(i, 2048, False, request=i if i < self.busy_slots else None)
            for i in range(self.slots)
        ]

    def lora_adapters(self, model: str | None) -> list[AdapterInfo]:
        if model is not None and model not in self.known:
            raise ModelUnavailable(model, f"model '{model}' is not loaded on this server")
        return list(self.adapters)

    def set_lora(self, model: str | None, scales: dict[int, float]) -> None:
        if any(i >= len(self.adapters) for i in scales):
            raise UsageError("no such adapter")
        self.adapters = [replace(a, scale=scales.get(a.id, 0.0)) for a in self.adapters]

    def load_report(self) -> LoadReport:
        return LoadReport(
            queue_depth=self.queue_depth, busy_slots=self.busy_slots, slots=self.slots
        )

    async def embed(self, model: str, inputs: list[str] | list[list[int]]) -> Embeddings:
        """One 4-dimensional vector per input, made from its length (texts and token arrays
        alike), so a test can tell the inputs' vectors and their order apart."""
        self.embedded.append((model, inputs))
        if model not in self.known:
            raise ModelUnavailable(model, f"'{model}' is not in the local cache")
        sizes = [len(x) for x in inputs]
        return Embeddings([[float(n), 1.0, 0.0, 0.0] for n in sizes], prompt_tokens=sum(sizes))

    async def drain(self, timeout_s: float) -> None:
        """As the contract says: admit nothing more, wait for running answers up to
        `timeout_s`, then cancel the rest (each ends with Finished "cancelled")."""
        self.drained.append(timeout_s)
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(not j.finished for j in self.jobs) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for job in self.jobs:
            if not job.finished:
                job.cancel()


if TYPE_CHECKING:  # mypy checks that the fake stands in for the Protocol it fakes

    def _conforms(b: FakeBackend) -> Backend:
        return b
