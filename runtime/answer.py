"""One way to ask for an answer, whoever gives it: the local engine (runtime/local.py) or a
remote server (runtime/remote.py). `run`, `chat`, `--batch` and `bench --remote` drive an
`Answerer` and never ask which kind it is; what only one kind can do (tell how full the context
window is, fit a conversation into it) is a capability that the other answers with None.

Shared base: imports no layer, so the remote client gets these types without loading llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from .options import Overrides


@dataclass
class Stats:
    """What one answer cost (`--stats`, `--json`). A remote fills what its client measures: the
    token counts from the response's usage, `prompt_s` and `ttft_s` the wait for the first
    piece, `generate_s` first piece to last; nothing loads there and it neither drafts nor
    splits layers here."""

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
    # Images and audio in the prompt (runtime/media.py): how many, the positions their chunks
    # fill (of prompt_tokens), how many were encoded now (the rest were held in the KV cache or
    # restored from the prompt cache) and the seconds encoding and decoding them took.
    media: int = 0
    media_tokens: int = 0
    media_encoded: int = 0
    encode_s: float = 0.0

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
        if not self.media:  # a text prompt: the same keys as before media existed
            for key in ("media", "media_tokens", "media_encoded", "encode_s"):
                del data[key]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


@dataclass(frozen=True)
class AnswerRequest:
    """What to answer and how: the conversation (OpenAI-shaped {"role", "content"} messages;
    with `raw`, their text as a plain completion prompt), the options the user set (the
    answerer's defaults for the rest), limits, a constraint and tools."""

    messages: tuple[dict[str, Any], ...]
    raw: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str = ""  # GBNF the local engine enforces (a remote is refused it by the CLI)
    response_format: dict[str, Any] | None = None  # OpenAI's JSON constraint, for a remote
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function definitions
    tool_choice: str | dict[str, Any] | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # protocol fields as they are (bench: ignore_eos)
    # Fill-in-the-middle (`infer run --suffix`): the messages' text is the code before the gap,
    # this the code after it; the local engine builds the model's FIM prompt from both.
    suffix: str | None = None
    logprobs: int | None = None  # each token's log-probability and N alternatives (None: none)

    @classmethod
    def of(cls, text: str, system: str | None = None, **kwargs: Any) -> AnswerRequest:
        """One user message, after the system prompt if any."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return cls(tuple(messages), **kwargs)

    @property
    def prompt(self) -> str:
        """The raw completion prompt: the messages' text, a blank line between them."""
        return "\n\n".join(str(m.get("content") or "") for m in self.messages)


class Answer(Protocol):
    """Iterate for the text pieces as they come; afterwards `text`, `stats` (finish_reason
    among them) and `tool_calls` (OpenAI-shaped; empty when none were made)."""

    @property
    def text(self) -> str: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def tool_calls(self) -> list[dict[str, Any]]: ...

    @property
    def logprobs(self) -> list[dict[str, Any]] | None:
        """Each token's log-probabilities as JSON objects (generation/logprobs.py's as_json
        shape; a remote's as its server sent them) when the request asked; else None."""
        ...

    def __iter__(self) -> Iterator[str]: ...


@dataclass(frozen=True)
class Window:
    """The local context window: tokens in use of `size`."""

    used: int
    size: int


@runtime_checkable
class Answerer(Protocol):
    """Answers requests with one model: `model` is its name, `where` its file or the remote's
    URL. Raises Interrupted when `cancel` is set mid-answer."""

    @property
    def model(self) -> str: ...

    @property
    def where(self) -> str: ...

    def answer(self, request: AnswerRequest, cancel: threading.Event | None = None) -> Answer: ...

    def settings(self, overrides: Overrides) -> dict[str, Any]:
        """The sampling values an answer with `overrides` uses, by option name (a remote: only
        those given; it keeps its own defaults for the rest)."""
        ...

    def window(self) -> Window | None:
        """The context window's use; None when the answerer keeps no window here (a remote)."""
        ...

    def count(self, request: AnswerRequest) -> int:
        """The prompt tokens of `request` (only where window() is not None)."""
        ...

    def reset(self) -> None:
        """Forget cached state after an answer was abandoned mid-step (a second Ctrl-C)."""
        ...
