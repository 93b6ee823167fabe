"""The local engine as an `Answerer` (runtime/answer.py): a loaded model answers requests
through `api.generate`, the same loop `infer run` always used. Its answer is the Generation
itself behind a thin view, so the per-token path gains nothing but the view's `iter()`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from .answer import Answerer, AnswerRequest, Stats, Window
from .errors import UsageError
from .media import Media, flatten
from .options import OPTIONS, Overrides, sampling
from .params import GenerateOptions

if TYPE_CHECKING:
    from .generation.infill import Infill
    from .generation.loop import Generation
    from .generation.templates import Message
    from .llama.interface import Session


class LocalAnswer:
    """A Generation seen as an Answer (a local answer makes no tool calls of its own: the tool
    run parses them from the text)."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.tool_calls: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[str]:
        return iter(self.gen)

    @property
    def text(self) -> str:
        return self.gen.text

    @property
    def stats(self) -> Stats:
        return self.gen.stats

    @property
    def logprobs(self) -> list[dict[str, Any]] | None:
        if self.gen.logprobs is None:
            return None
        from .generation.logprobs import as_json

        return as_json(self.gen.logprobs)


class LocalAnswerer:
    """`session` answering as `model` (its file `where`), with the model's `defaults` under
    each request's overrides, its chat `template` (None: the GGUF's), an optional `drafter`
    ("lookup" or a loaded draft model) and `options` (the drafting settings; each request
    sets its own max_tokens and stop)."""

    def __init__(
        self,
        session: Session,
        model: str,
        where: str,
        *,
        defaults: Overrides | None = None,
        template: str | None = None,
        drafter: Session | str | None = None,
        options: GenerateOptions | None = None,
    ) -> None:
        self.session, self.model, self.where = session, model, where
        self.defaults = defaults or Overrides()
        self.template, self.drafter = template, drafter
        self.options = options or GenerateOptions()

    def answer(self, request: AnswerRequest, cancel: threading.Event | None = None) -> LocalAnswer:
        from .api import generate

        if request.tools:  # the tool run parses calls itself (cli/tools), not through here
            raise UsageError("a local answer with tools offered goes through the tool run")
        params = sampling(request.overrides, self.defaults)
        grammar = request.grammar or _grammar(request.response_format)
        if grammar:
            params = replace(params, grammar=grammar)
        options = replace(
            self.options,
            max_tokens=request.max_tokens,
            stop=list(request.stop),
            logprobs=request.logprobs,
        )
        messages, media = _messages(request)
        gen = generate(
            self.session,
            messages,
            params,
            options,
            raw=request.raw,
            template=self.template,
            cancel=cancel,
            drafter=self.drafter,
            infill=_infill(request),
            media=media,
        )
        return LocalAnswer(gen)

    def settings(self, overrides: Overrides) -> dict[str, Any]:
        params = asdict(sampling(overrides, self.defaults))
        return {o.name: params[o.name] for o in OPTIONS}

    def window(self) -> Window:
        return Window(self.session.n_past, self.session.n_ctx)

    def count(self, request: AnswerRequest) -> int:
        from .api import prompt_tokens

        messages, media = _messages(request)
        tokens = prompt_tokens(
            self.session.model, messages, raw=request.raw, template=self.template, media=media
        )
        return len(tokens)

    def reset(self) -> None:
        self.session.reset()


def _grammar(response_format: dict[str, Any] | None) -> str:
    """OpenAI's response_format as the GBNF that enforces it here ("" for none)."""
    if not response_format:
        return ""
    from .llama.grammar import constraint

    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is not None:
        return constraint(json_schema=schema)
    return constraint(format="json" if response_format.get("type") == "json_object" else None)


def _infill(request: AnswerRequest) -> Infill | None:
    if request.suffix is None:
        return None
    from .generation.infill import Infill

    return Infill(request.prompt, request.suffix)


def _messages(request: AnswerRequest) -> tuple[list[Message], list[Media]]:
    """The messages as the template renders them (media as MARKERs) and the media in order."""
    from .generation.templates import Message

    messages, media = [], []
    for m in request.messages:
        text, found = flatten(m["content"])
        messages.append(Message(m["role"], text))
        media.extend(found)
    return messages, media


if TYPE_CHECKING:  # mypy checks here that a LocalAnswerer is an Answerer
    _ANSWERER: type[Answerer] = LocalAnswerer
