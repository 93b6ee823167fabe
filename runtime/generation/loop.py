"""From prompt tokens to text: UTF-8-safe pieces, stop strings, token limits and timings."""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import ContextOverflowError, Interrupted
from ..llama.engine import Engine
from ..llama.tokens import common_prefix
from ..params import GenerateOptions, SamplingParams

if TYPE_CHECKING:
    from .speculative import DraftCounts


@dataclass
class Stats:
    load_s: float = 0.0
    prompt_tokens: int = 0  # tokens in the prompt
    prompt_eval_tokens: int = 0  # of those, evaluated now (the rest came from the KV cache)
    prompt_s: float = 0.0
    ttft_s: float = 0.0  # request start -> first token sampled (prompt evaluation included)
    generated_tokens: int = 0
    generate_s: float = 0.0
    finish_reason: str = ""  # stop | length | context | interrupted
    draft: str = ""  # speculative decoding: "lookup" or the draft model; "" when off
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, accepted (emitted without a decode of their own)
    # Where the model's layers are when not all on this CPU, e.g. "RPC0 10.0.0.2:50052 15 layers
    # (40.1 MiB), CPU 1 layers (13.4 MiB)" (llama/offload.py); "" when all are local.
    split: str = ""

    @property
    def prompt_tps(self) -> float:
        return self.prompt_eval_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def generate_tps(self) -> float:
        # The first token is sampled from the prompt's logits; the rate counts the decode steps.
        steps = self.generated_tokens - 1
        return steps / self.generate_s if self.generate_s > 0 and steps > 0 else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        data: dict[str, float | int | str] = asdict(self)
        data["prompt_tokens_per_s"] = round(self.prompt_tps, 2)
        data["generate_tokens_per_s"] = round(self.generate_tps, 2)
        if self.draft:
            data["draft_acceptance"] = round(self.acceptance, 4)
        else:  # plain decoding: the same keys as before drafting existed
            for key in ("draft", "drafted", "accepted"):
                del data[key]
        if not self.split:
            del data["split"]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


def check_fits(engine: Engine, prompt: list[int]) -> None:
    if len(prompt) >= engine.n_ctx:
        raise ContextOverflowError(len(prompt), engine.n_ctx, engine.n_ctx_train)


class Generation:
    """Iterate for text pieces as they are generated; afterwards `.text` and `.stats` hold the
    whole answer. Stop strings never leak: text that could begin a stop string is held back
    until it is known not to. With a `drafter` ("lookup" or a draft model from
    api.load_draft()) the tokens come from speculative decoding."""

    def __init__(
        self,
        engine: Engine,
        prompt: list[int],
        sampling: SamplingParams,
        options: GenerateOptions,
        cancel: threading.Event | None = None,
        stats: Stats | None = None,
        drafter: Engine | str | None = None,
    ) -> None:
        check_fits(engine, prompt)
        self.engine, self.prompt, self.sampling, self.options = engine, prompt, sampling, options
        self.drafter = drafter
        self.cancel = cancel or threading.Event()
        self.stats = stats or Stats()
        self.pieces: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __iter__(self) -> Iterator[str]:
        stats, stops, limit = self.stats, self.options.stop, self.options.max_tokens
        stats.prompt_tokens = len(self.prompt)
        stats.prompt_eval_tokens = len(self.prompt) - self._common_prefix()
        stats.finish_reason = "length" if limit == 0 else "stop"
        if limit == 0:
            return
        stream = TextStream(stops)
        start = first = time.perf_counter()
        counts: DraftCounts | None = None
        if self.drafter is None:
            tokens = self.engine.generate(self.prompt, self.sampling, self.cancel)
        else:
            from .speculative import generate

            tokens, counts = generate(
                self.engine, self.prompt, self.sampling, self.cancel, self.options, self.drafter
            )
        try:
            for raw in tokens:
                if stats.generated_tokens == 0:
                    first = time.perf_counter()
                    stats.ttft_s = stats.prompt_s = first - start
                stats.generated_tokens += 1
                out = stream.feed(raw)
                if out:
                    self.pieces.append(out)
                    yield out
                if stream.hit:
                    break
                if limit is not None and stats.generated_tokens >= limit:
                    stats.finish_reason = "length"
                    break
            else:
                if self.engine.n_past >= self.engine.n_ctx:
                    stats.finish_reason = "context"
        except Interrupted:
            stats.finish_reason = "interrupted"
            raise Interrupted(self.text) from None
        finally:
            tokens.close()
            if counts is not None:  # speculative decoding's own counts, merged into ours
                stats.draft = counts.drafter
                stats.drafted, stats.accepted = counts.drafted, counts.accepted
            now = time.perf_counter()
            if stats.generated_tokens == 0:
                stats.prompt_s = stats.ttft_s = now - start
            stats.generate_s = now - first if stats.generated_tokens else 0.0
            # The engine knows best: a prompt cache on disk may have filled its KV meanwhile.
            evaluated = getattr(self.engine, "prompt_eval_tokens", None)
            stats.prompt_eval_tokens = stats.prompt_eval_tokens if evaluated is None else evaluated
        tail = stream.tail()
        if tail:
            self.pieces.append(tail)
            yield tail

    def _common_prefix(self) -> int:
        held = getattr(self.engine, "tokens", None)
        if not held:
            return 0
        return common_prefix(held, self.prompt, len(self.prompt) - 1)


class TextStream:
    """Token bytes to text that is safe to show: a UTF-8 character split across tokens is joined
    (invalid bytes become U+FFFD), and text that could begin a stop string is held back until it
    is known not to. Shared by `Generation` and the batch decoder, so both emit the same text."""

    __slots__ = ("_decode", "held", "hit", "matched", "stops")

    def __init__(self, stops: list[str]) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self.stops = stops
        self.held = ""
        self.hit = False  # a stop string was found: nothing more is emitted
        self.matched: str | None = None  # ... which one (the server reports it)

    def feed(self, raw: bytes) -> str:
        """The text this token's bytes release (may be empty)."""
        text = self.held + self._decode(raw)
        out, self.held, self.hit = _split_stop(text, self.stops)
        if self.hit:
            self.matched = min((s for s in self.stops if s in text), key=text.find)
        return out

    def tail(self) -> str:
        """At the end: text held back as a possible stop-string start, and an unfinished UTF-8
        sequence; nothing after a stop string."""
        return "" if self.hit else self.held + self._decode(b"", True)


def _split_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """Split `text` into (safe to emit, held back, stop string found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False
