"""From prompt tokens to text: UTF-8-safe pieces, stop strings, token limits and timings."""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..answer import Stats
from ..errors import ContextOverflowError, Interrupted, UsageError
from ..llama.interface import Session
from ..llama.tokens import common_prefix
from ..llama.vision import media_counts, media_stats
from ..params import GenerateOptions, SamplingParams

if TYPE_CHECKING:
    from .logprobs import TokenLogprob, Trail
    from .speculative import DraftCounts


def check_fits(session: Session, prompt: list[int]) -> None:
    if len(prompt) >= session.n_ctx:
        raise ContextOverflowError(len(prompt), session.n_ctx, session.model.n_ctx_train)


class Generation:
    """Iterate for text pieces as `session` generates them; afterwards `.text` and `.stats` hold
    the whole answer. Stop strings never leak: text that could begin a stop string is held back
    until it is known not to. With a `drafter` ("lookup" or a draft model from
    api.load_draft()) the tokens come from speculative decoding. With `options.logprobs`,
    `.logprobs` holds afterwards each token's log-probabilities (generation/logprobs.py)."""

    def __init__(
        self,
        session: Session,
        prompt: list[int],
        sampling: SamplingParams,
        options: GenerateOptions,
        cancel: threading.Event | None = None,
        stats: Stats | None = None,
        drafter: Session | str | None = None,
    ) -> None:
        check_fits(session, prompt)
        if options.logprobs is not None and drafter is not None:
            # Verification samples several rows per decode; their logits are not kept.
            raise UsageError("logprobs are not computed with speculative decoding (--draft)")
        self.session, self.prompt, self.sampling, self.options = session, prompt, sampling, options
        self.drafter = drafter
        self.cancel = cancel or threading.Event()
        self.stats = stats or Stats()
        self.pieces: list[str] = []
        self.logprobs: list[TokenLogprob] | None = None  # with options.logprobs, once done

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
        encoded = media_counts(self.prompt)
        start = first = time.perf_counter()
        counts: DraftCounts | None = None
        trail, sampled = self._trail()
        if self.drafter is None:
            tokens = self.session.generate(
                self.prompt,
                self.sampling,
                self.cancel,
                ignore_eog=self.options.ignore_eog,
                on_sample=None if trail is None else (lambda *s: sampled.append(s)),
            )
        else:
            from .speculative import generate

            tokens, counts = generate(
                self.session, self.prompt, self.sampling, self.cancel, self.options, self.drafter
            )
        try:
            for raw in tokens:
                if stats.generated_tokens == 0:
                    first = time.perf_counter()
                    stats.ttft_s = stats.prompt_s = first - start
                stats.generated_tokens += 1
                out = stream.feed(raw)
                if trail is not None:  # the row is valid until the generator resumes
                    token, row = sampled.pop()
                    trail.add(row, token, raw, stream.decoded)
                    trail.release(out)
                if out:
                    self.pieces.append(out)
                    yield out
                if stream.hit:
                    break
                if limit is not None and stats.generated_tokens >= limit:
                    stats.finish_reason = "length"
                    break
            else:
                if self.session.n_past >= self.session.n_ctx:
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
            # The session knows best: a prompt cache on disk may have filled its KV meanwhile.
            stats.prompt_eval_tokens = self.session.prompt_eval_tokens
            if encoded is not None:
                media_stats(stats, self.prompt, encoded)
        tail = stream.tail()
        if trail is not None:
            trail.release(tail, end=not stream.hit)
            self.logprobs = trail.tokens
        if tail:
            self.pieces.append(tail)
            yield tail

    def _trail(self) -> tuple[Trail | None, list[tuple[int, Any]]]:
        """With options.logprobs: the trail the tokens go through, and the list the session's
        on_sample fills (one token and its logits row at a time)."""
        if self.options.logprobs is None:
            return None, []
        from .logprobs import LogprobReader, Trail

        return Trail(LogprobReader(self.session.model, self.options.logprobs)), []

    def _common_prefix(self) -> int:
        held = self.session.tokens
        if not held:
            return 0
        return common_prefix(held, self.prompt, len(self.prompt) - 1)


class TextStream:
    """Token bytes to text that is safe to show: a UTF-8 character split across tokens is joined
    (invalid bytes become U+FFFD), and text that could begin a stop string is held back until it
    is known not to. Shared by `Generation` and the batch decoder, so both emit the same text."""

    __slots__ = ("_decode", "decoded", "held", "hit", "matched", "stops")

    def __init__(self, stops: list[str]) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self.stops = stops
        self.held = ""
        self.hit = False  # a stop string was found: nothing more is emitted
        self.matched: str | None = None  # ... which one (the server reports it)
        self.decoded = ""  # the text the last token's bytes completed (logprobs report it)

    def feed(self, raw: bytes) -> str:
        """The text this token's bytes release (may be empty)."""
        self.decoded = self._decode(raw)
        text = self.held + self.decoded
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
