"""The starlette app: OpenAI's endpoints over a `Backend`, /health and /metrics, behind the
access log, the Host allow-list, CORS (cors.py: pages on this machine by default) and the API
key.

    create_app(backend, HttpSettings(...)) -> Starlette

Layers, outermost first: AccessLog (request id, one line per request, a bug becomes a 500
here and never kills the server) → HostCheck → CORS → ApiKeyCheck → routes.

A generation request walks one way: route → openai_requests.parse_* (the body into
TextRequests) → backend.submit (Jobs) → answer.Answer (their events into choices), shaped by
openai_answers (answer_object, or ChunkStream frames through answer.EventStream).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import (
    BadReferenceError,
    InferError,
    InputError,
    ModelNotFoundError,
    OptionError,
    TemplateError,
    UsageError,
)
from . import (
    anthropic_routes,
    infill_routes,
    llamacpp_routes,
    lora_routes,
    media_parts,
    ollama_routes,
    openai_answers,
    openai_requests,
    rerank_routes,
    responses_routes,
    slots_routes,
    telemetry,
)
from .access_log import AccessLog, LogRecord, record_of
from .answer import Answer, EventStream, whole
from .backend import (
    Backend,
    Job,
    ModelUnavailable,
    Overloaded,
    PromptTooLong,
    TooManyChoices,
)
from .connections import Admission, ConnectionLimits
from .cors import CorsPolicy, cors_middleware
from .door import refuse_media
from .llamacpp_protocol import timings
from .media_parts import MediaPolicy
from .metrics import CONTENT_TYPE, Metrics
from .openapi import openapi_route
from .request_fields import ApiError
from .security import ApiKeyCheck, ClientGone, HostCheck, is_loopback, parse_json, read_body

DEFAULT_MAX_BODY = 8 * 1024 * 1024


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class HttpSettings:
    """What the HTTP side was started with."""

    host: str = "127.0.0.1"  # the address listened on: on loopback, the Host allow-list applies
    api_key: str | None = None  # None: no key asked for
    cors: CorsPolicy = field(default_factory=CorsPolicy)  # web pages allowed (--cors-origin)
    max_body: int = DEFAULT_MAX_BODY  # bytes
    log_format: str = "text"  # or "json": the access log
    shutdown_timeout: float = 10.0  # seconds running answers get to finish on SIGTERM/SIGINT
    log: Callable[[str], None] = _stderr_line  # where access-log lines go
    allow_pull: bool = False  # Ollama's /api/pull may download models (--allow-pull)
    allow_delete: bool = False  # Ollama's /api/delete may remove models (--allow-delete)
    allow_image_urls: bool = False  # requests' http(s) image URLs are fetched (--allow-image-urls)
    slots: bool = True  # GET /slots, llama-server's slot monitor (--no-slots: off)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)  # per connection

    @property
    def media(self) -> MediaPolicy:
        """How the doors take images and audio (media_parts.py)."""
        return MediaPolicy(allow_urls=self.allow_image_urls)


class Lifecycle:
    """The backend's start (in the background, so /health answers 503 meanwhile), drain and
    close. The runner starts the drain as soon as shutdown begins; the lifespan's end waits."""

    def __init__(self, backend: Backend, shutdown_timeout: float) -> None:
        self.backend, self.shutdown_timeout = backend, shutdown_timeout
        self.start_task: asyncio.Task[None] | None = None
        self.start_error: BaseException | None = None
        self.drain_task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        try:
            await self.backend.start()
        except Exception as e:  # the runner reports it and stops the server
            self.start_error = e

    def begin(self) -> None:
        self.start_task = asyncio.create_task(self._start())

    def begin_drain(self) -> None:
        if self.drain_task is None:
            self.drain_task = asyncio.create_task(self.backend.drain(self.shutdown_timeout))

    async def end(self) -> None:
        if self.start_task is not None and not self.start_task.done():
            self.start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.start_task
        self.begin_drain()
        assert self.drain_task is not None
        try:
            await self.drain_task
        finally:
            self.backend.close()


def create_app(backend: Backend, settings: HttpSettings) -> Starlette:
    """The server's ASGI app. `app.state.lifecycle` is the backend's start/drain/close."""
    metrics = Metrics()
    lifecycle = Lifecycle(backend, settings.shutdown_timeout)
    api = _Api(backend, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        lifecycle.begin()
        yield
        await lifecycle.end()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/embeddings", api.embeddings, methods=["POST"]),
            *anthropic_routes.routes(backend, settings.max_body, backend_error, settings.media),
            Route("/v1/models", api.list_models, methods=["GET"]),
            Route("/v1/models/{id:path}", api.get_model, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            # llama-server's paths: the OpenAI routes without /v1, and its own (llamacpp_routes)
            Route("/v1/health", api.health, methods=["GET"]),
            Route("/chat/completions", api.chat, methods=["POST"]),
            Route("/models", api.list_models, methods=["GET"]),
            *llamacpp_routes.routes(backend, settings.max_body, backend_error),
            Route("/metrics", api.prometheus, methods=["GET"]),
            Route("/openapi.json", openapi_route, methods=["GET"]),
            *responses_routes.routes(backend, settings.max_body, backend_error, settings.media),
            *ollama_routes.routes(backend, settings, backend_error),
            *infill_routes.routes(backend, settings.max_body, backend_error),
            *rerank_routes.routes(backend, settings.max_body, backend_error),
            *lora_routes.routes(backend, settings.max_body, backend_error),
            *slots_routes.routes(backend, settings.slots, backend_error),
        ],
        middleware=[
            Middleware(AccessLog, metrics=metrics, log=settings.log, fmt=settings.log_format),
            Middleware(Admission),
            Middleware(HostCheck, enabled=is_loopback(settings.host)),
            *cors_middleware(settings.cors),
            Middleware(ApiKeyCheck, key=settings.api_key),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.lifecycle = lifecycle
    return app


async def _http_exception(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = f"no such endpoint: {request.method} {request.url.path}"
    if request.url.path.startswith("/api/"):  # Ollama's clients read {"error": "..."}
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)
    error = ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
    return _error_response(error, dict(exc.headers or {}))


def _error_response(error: ApiError, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(error.body(), error.status, headers={**error.headers, **(headers or {})})


def backend_error(e: Exception, record: LogRecord, prompt_param: str) -> ApiError:
    """A backend's exception as the answer it deserves (and, for a bug, one log line)."""
    if isinstance(e, ModelUnavailable | ModelNotFoundError):
        name = getattr(e, "name", "")
        message = f"{e}; run `infer pull {name}` on the server, or start it with --allow-pull"
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(e, BadReferenceError):
        return ApiError(400, str(e), param="model", code="model_not_found")
    if isinstance(e, PromptTooLong):
        return ApiError(400, str(e), param=prompt_param, code="context_length_exceeded")
    if isinstance(e, Overloaded):
        retry = str(max(1, e.retry_after_s))
        return ApiError(503, str(e), code="overloaded", headers={"Retry-After": retry})
    if isinstance(e, TooManyChoices):
        return ApiError(400, str(e), param="n")
    if isinstance(e, OptionError):  # a field only the model can check (logit_bias's tokens)
        return ApiError(400, str(e), param=e.option)
    if isinstance(e, UsageError | TemplateError | InputError):
        return ApiError(400, str(e))
    record.error = f"{type(e).__name__}: {e}"
    if isinstance(e, InferError):
        return ApiError(500, f"{e} (request id {record.request_id})")
    return ApiError(
        500, f"internal server error (request id {record.request_id}; see the server's log)"
    )


class _Api:
    def __init__(self, backend: Backend, settings: HttpSettings, metrics: Metrics) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics

    # --- plain endpoints --------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.backend.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "loading"}, 503)

    async def prometheus(self, request: Request) -> Response:
        text = self.metrics.render(self.backend.load_report())
        started = {"Process-Start-Time-Unix": str(self.metrics.started)}  # as llama-server
        return Response(text, media_type=CONTENT_TYPE, headers=started)

    async def list_models(self, request: Request) -> Response:
        data = [_model_object(m) for m in self.backend.models()]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        wanted = request.path_params["id"]
        for m in self.backend.models():
            if m.id == wanted:
                return JSONResponse(_model_object(m))
        error = ApiError(
            404,
            f"the model '{wanted}' is not on this server (GET /v1/models lists them)",
            param="model",
            code="model_not_found",
        )
        return _error_response(error)

    async def embeddings(self, request: Request) -> Response:
        from . import embeddings

        record = record_of(request.scope)
        try:
            raw = await read_body(request.receive, request.headers, self.settings.max_body)
            parsed = embeddings.parse(parse_json(raw))
            record.model = parsed.model
            record.started = time.monotonic()
            try:
                result = await self.backend.embed(parsed.model, parsed.inputs)
            except Exception as e:
                raise backend_error(e, record, "input") from None
            record.prompt_tokens = result.prompt_tokens
            return JSONResponse(embeddings.answer(parsed, parsed.model, result))
        except ApiError as e:
            return _error_response(e)
        except ClientGone:
            return Response(status_code=400)

    # --- generation -------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response:
        record = record_of(request.scope)
        try:
            raw = await read_body(request.receive, request.headers, self.settings.max_body)
            body = parse_json(raw)
            if chat:
                parsed = await media_parts.parse(
                    openai_requests.parse_chat, body, self.settings.media
                )
                refuse_media(self.backend, parsed)
            else:
                parsed = openai_requests.parse_completion(body)
            asked = telemetry.requested(body, parsed.stream)
            parsed.request.progress = asked.progress
            record.model = parsed.model
            jobs = await self._submit(parsed, record, "messages" if chat else "prompt")
        except ApiError as e:
            return _error_response(e)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer(
            jobs, record, parsed.request.n, logprobs=parsed.request.logprobs is not None
        )
        if parsed.stream:
            on_error = functools.partial(backend_error, record=record, prompt_param="")
            shaper = openai_answers.ChunkStream(answer.model, chat, parsed.include_usage, on_error)
            shaper.timings = functools.partial(timings, record)
            shaper.telemetry = functools.partial(
                telemetry.progress_fields, per_token=asked.per_token
            )
            return EventStream(answer, shaper)
        choices = await whole(
            answer, request.receive, lambda e: _error_response(backend_error(e, record, ""))
        )
        if isinstance(choices, Response):
            return choices
        used = openai_answers.usage(record.prompt_tokens, record.completion_tokens)
        body = openai_answers.answer_object(chat, answer.model, choices, used)
        body["timings"] = timings(record)  # as llama-server adds them
        if asked.verbose:
            body["__verbose"] = await telemetry.verbose(self.backend, parsed, answer, choices)
        return JSONResponse(body)

    async def _submit(
        self, parsed: openai_requests.ParsedRequest, record: LogRecord, param: str
    ) -> list[Job]:
        jobs: list[Job] = []
        record.started = time.monotonic()
        try:
            for text_request in parsed.text_requests():
                jobs.append(await self.backend.submit(parsed.model, text_request))
        except Exception as e:
            for job in jobs:
                job.cancel()
            raise backend_error(e, record, param) from None
        return jobs


def _model_object(m: Any) -> dict[str, Any]:
    out = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
    if m.capabilities:  # what it takes besides text ("vision", "audio"), for model pickers
        out["capabilities"] = list(m.capabilities)
    return out
