"""Ollama's native API on the same port as OpenAI's (`routes(...)`, added to the app's route
list): what Ollama's clients call (the `ollama` package, Copilot's and Zed's model lists,
Continue, Open WebUI), over the same backend, answer assembly and middleware as /v1 — an
/api/chat and a /v1/chat/completions decode together in one batch.

A generation walks as OpenAI's does: ollama_protocol.parse_* → backend.submit → answer.Answer,
shaped by ollama_protocol (answer_object, or NdjsonStream through answer.EventStream). Errors
are Ollama's `{"error": "..."}` with the status the OpenAI door would give.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import media_parts
from .access_log import LogRecord, record_of
from .answer import Answer, EventStream, whole
from .backend import Backend, Job, ModelInfo
from .door import BackendError
from .ollama_models import facts, find, process, show, tag
from .ollama_protocol import (
    MEDIA_TYPE,
    VERSION,
    EmbedRequest,
    NdjsonStream,
    OllamaError,
    OllamaRequest,
    Timing,
    Unset,
    answer_object,
    empty_answer,
    invalid,
    line,
    model_ref,
    parse_chat,
    parse_embed,
    parse_generate,
)
from .request_fields import ApiError
from .security import ClientGone, parse_json, read_body


class Settings(Protocol):
    """What the routes read of app.HttpSettings."""

    max_body: int
    allow_pull: bool
    allow_delete: bool


def routes(backend: Backend, settings: Settings, backend_error: BackendError) -> list[Route]:
    """The Ollama API's routes. /api/pull and /api/delete change the model store: each only
    when `infer serve` allows it (--allow-pull, --allow-delete), else a 403."""
    api = _OllamaApi(
        backend, settings.max_body, backend_error, settings.allow_pull, settings.allow_delete
    )
    return [
        Route("/", api.running, methods=["GET", "HEAD"]),
        Route("/api/version", api.version, methods=["GET", "HEAD"]),
        Route("/api/tags", api.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", api.ps, methods=["GET"]),
        Route("/api/show", api.show, methods=["POST"]),
        Route("/api/chat", api.chat, methods=["POST"]),
        Route("/api/generate", api.generate, methods=["POST"]),
        Route("/api/embed", api.embed, methods=["POST"]),
        Route("/api/embeddings", api.embeddings, methods=["POST"]),
        Route("/api/pull", api.pull, methods=["POST"]),
        Route("/api/delete", api.delete, methods=["DELETE"]),
    ]


def error_response(error: OllamaError) -> Response:
    return JSONResponse(error.body(), error.status, headers=error.headers)


def _ollama(error: ApiError) -> OllamaError:
    return OllamaError(error.status, error.message, error.headers)


class _OllamaApi:
    def __init__(
        self,
        backend: Backend,
        max_body: int,
        backend_error: BackendError,
        allow_pull: bool,
        allow_delete: bool,
    ) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error
        self.allow_pull, self.allow_delete = allow_pull, allow_delete

    async def _body(self, request: Request) -> Any:
        try:
            return parse_json(await read_body(request.receive, request.headers, self.max_body))
        except ApiError as e:
            raise _ollama(e) from None

    def _error(self, e: Exception, record: LogRecord, param: str) -> OllamaError:
        return _ollama(self.backend_error(e, record, param))

    # --- what the server is and has -------------------------------------------------------
    async def running(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:
        models = self.backend.models()
        found = await asyncio.to_thread(lambda: [tag(m, facts(m)) for m in models])
        return JSONResponse({"models": found})

    async def ps(self, request: Request) -> Response:
        loaded = [m for m in self.backend.models() if m.loaded]
        found = await asyncio.to_thread(lambda: [process(m, facts(m)) for m in loaded])
        return JSONResponse({"models": found})

    async def show(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            info = self._listed(body)
        except OllamaError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        return JSONResponse(await asyncio.to_thread(lambda: show(info, facts(info))))

    def _listed(self, body: Any) -> ModelInfo:
        name = body.get("model", body.get("name")) if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise OllamaError(400, "model: required")
        info = find(self.backend.models(), model_ref(name))
        if info is None:
            raise OllamaError(404, f"model '{name}' not found (GET /api/tags lists them)")
        return info

    # --- generation -----------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def generate(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response:
        record, timing = record_of(request.scope), Timing()
        try:
            body = await self._body(request)
            parsed = parse_chat(body) if chat else parse_generate(body)
            record.model = parsed.model
            if parsed.request is None:
                return await self._load_or_unload(parsed, chat, record)
            self._refuse_media(parsed)
            job = await self._submit(parsed, record, "messages" if chat else "prompt")
            timing.load_s = time.monotonic() - timing.started
        except OllamaError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer([job], record, 1, logprobs=parsed.request.logprobs is not None)
        if parsed.stream:
            on_error = functools.partial(self._error, record=record, param="")
            ttft = functools.partial(getattr, job, "ttft_s")
            shaper = NdjsonStream(parsed.model, chat, timing, ttft, on_error)
            return EventStream(answer, shaper)
        choices = await whole(
            answer, request.receive, lambda e: error_response(self._error(e, record, ""))
        )
        if isinstance(choices, Response):
            return choices
        timing.ttft_s = job.ttft_s
        metrics = timing.metrics(record.prompt_tokens, record.completion_tokens)
        return JSONResponse(answer_object(chat, parsed.model, choices[0], metrics))

    def _refuse_media(self, parsed: OllamaRequest) -> None:
        """Images for a model without a projector: Ollama's 400, naming the images field."""
        assert parsed.request is not None
        messages = parsed.request.messages
        refused = media_parts.refused(self.backend, parsed.ref, messages, find)
        if refused:
            raise invalid(*refused)

    async def _submit(self, parsed: OllamaRequest, record: LogRecord, param: str) -> Job:
        assert parsed.request is not None
        record.started = time.monotonic()
        try:
            job = await self.backend.submit(parsed.ref, parsed.request)
        except Exception as e:
            raise self._error(e, record, param) from None
        try:
            await self._keep_alive(parsed.ref, parsed.keep_alive, record)
        except OllamaError:
            job.cancel()
            raise
        return job

    async def _keep_alive(self, ref: str, value: float | Unset | None, record: LogRecord) -> None:
        if isinstance(value, Unset):
            return
        try:
            await self.backend.keep_alive(ref, value)
        except Exception as e:
            raise self._error(e, record, "model") from None

    async def _load_or_unload(
        self, parsed: OllamaRequest, chat: bool, record: LogRecord
    ) -> Response:
        """Nothing to generate: Ollama's way to load a model (or, with keep_alive 0, unload
        it once idle)."""
        alive = parsed.keep_alive
        try:
            await self._keep_alive(parsed.ref, None if isinstance(alive, Unset) else alive, record)
        except OllamaError as e:
            return error_response(e)
        return JSONResponse(empty_answer(chat, parsed.model, "unload" if alive == 0 else "load"))

    # --- embeddings -----------------------------------------------------------------------
    async def embed(self, request: Request) -> Response:
        return await self._embed(request, legacy=False)

    async def embeddings(self, request: Request) -> Response:
        return await self._embed(request, legacy=True)

    async def _embed(self, request: Request, *, legacy: bool) -> Response:
        record, timing = record_of(request.scope), Timing()
        try:
            parsed = parse_embed(await self._body(request), legacy)
            record.model = parsed.model
            result = await self._vectors(parsed, record)
        except OllamaError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        record.prompt_tokens = result.prompt_tokens
        if legacy:
            return JSONResponse({"embedding": result.vectors[0]})
        metrics = timing.metrics(result.prompt_tokens, 0)
        return JSONResponse(
            {
                "model": parsed.model,
                "embeddings": result.vectors,
                "total_duration": metrics["total_duration"],
                "load_duration": metrics["load_duration"],
                "prompt_eval_count": result.prompt_tokens,
            }
        )

    async def _vectors(self, parsed: EmbedRequest, record: LogRecord) -> Any:
        record.started = time.monotonic()
        try:
            result = await self.backend.embed(parsed.ref, parsed.inputs)
        except Exception as e:
            raise self._error(e, record, "prompt" if parsed.legacy else "input") from None
        await self._keep_alive(parsed.ref, parsed.keep_alive, record)
        return result

    # --- the model store ------------------------------------------------------------------
    async def pull(self, request: Request) -> Response:
        from .ollama_store import pull_lines

        try:
            body = await self._body(request)
            name = _name(body)
            if not self.allow_pull:
                hint = f"start `infer serve` with --allow-pull, or run `infer pull {name}` on it"
                raise OllamaError(403, f"pulling models is off on this server ({hint})")
        except OllamaError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        lines = pull_lines(model_ref(name))
        if isinstance(body, dict) and body.get("stream") is False:
            last = [x async for x in lines][-1]
            status = 200 if "error" not in last else 500
            return JSONResponse(last, status)
        return StreamingResponse(_ndjson(lines), media_type=MEDIA_TYPE)

    async def delete(self, request: Request) -> Response:
        from .ollama_store import remove

        try:
            name = _name(await self._body(request))
            if not self.allow_delete:
                hint = "start `infer serve` with --allow-delete"
                raise OllamaError(403, f"deleting models is off on this server ({hint})")
            record = record_of(request.scope)
            await self._keep_alive(model_ref(name), 0.0, record)  # unloaded once idle
            await asyncio.to_thread(remove, model_ref(name))
        except OllamaError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        return Response(status_code=200)


def _name(body: Any) -> str:
    name = body.get("model", body.get("name")) if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise OllamaError(400, "model: required")
    return name


async def _ndjson(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for payload in lines:
        yield line(payload)
