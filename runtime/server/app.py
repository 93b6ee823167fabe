"""The starlette app: OpenAI's endpoints over a `Backend`, /health and /metrics, behind the
access log, the Host allow-list, CORS (only when asked for) and the API key.

    create_app(backend, HttpSettings(...)) -> Starlette

Layers, outermost first: AccessLog (request id, one line per request, a bug becomes a 500
here and never kills the server) → HostCheck → CORS → ApiKeyCheck → routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import (
    BadReferenceError,
    InferError,
    InputError,
    ModelNotFoundError,
    TemplateError,
    UsageError,
)
from . import openai_protocol as schema
from .access_log import AccessLog, LogRecord, record_of
from .backend import (
    Backend,
    Finished,
    Job,
    ModelUnavailable,
    Overloaded,
    Piece,
    PromptTooLong,
    TooManyChoices,
)
from .metrics import CONTENT_TYPE, Metrics
from .openai_protocol import ApiError
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
    cors_origins: list[str] = field(default_factory=list)  # none: no CORS headers at all
    max_body: int = DEFAULT_MAX_BODY  # bytes
    log_format: str = "text"  # or "json": the access log
    shutdown_timeout: float = 10.0  # seconds running answers get to finish on SIGTERM/SIGINT
    log: Callable[[str], None] = _stderr_line  # where access-log lines go


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

    cors = []
    if settings.cors_origins:
        cors = [
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                max_age=600,
            )
        ]
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/embeddings", api.embeddings, methods=["POST"]),
            Route("/v1/models", api.list_models, methods=["GET"]),
            Route("/v1/models/{id:path}", api.get_model, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.prometheus, methods=["GET"]),
        ],
        middleware=[
            Middleware(AccessLog, metrics=metrics, log=settings.log, fmt=settings.log_format),
            Middleware(HostCheck, enabled=is_loopback(settings.host)),
            *cors,
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
        text = self.metrics.render(self.backend.load())
        return Response(text, media_type=CONTENT_TYPE)

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
            parsed = schema.parse_chat(body) if chat else schema.parse_completion(body)
            record.model = parsed.model
            jobs = await self._submit(parsed, record, "messages" if chat else "prompt")
        except ApiError as e:
            return _error_response(e)
        except ClientGone:
            return Response(status_code=400)
        answer = _Answer(parsed, jobs, record, chat=chat)
        if parsed.stream:
            return _EventStream(answer)
        try:
            result = await _race_disconnect(answer.collect(), request.receive)
        except Exception as e:
            answer.cancel()
            return _error_response(backend_error(e, record, ""))
        if result is None:  # the client went away: nobody to answer
            answer.cancel()
            record.disconnected = True
            return Response(status_code=400)
        return JSONResponse(result)

    async def _submit(
        self, parsed: schema.ParsedRequest, record: LogRecord, param: str
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
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}


async def _race_disconnect(work: Any, receive: Any) -> Any:
    """`work`'s result, or None as soon as the client disconnects (work is then cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Answer:
    """The jobs of one request (several for a completions list of prompts), their events
    merged with each job's choices numbered after the previous job's."""

    def __init__(
        self, parsed: schema.ParsedRequest, jobs: list[Job], record: LogRecord, *, chat: bool
    ) -> None:
        self.parsed, self.jobs, self.record, self.chat = parsed, jobs, record, chat
        prefix = "chatcmpl-" if chat else "cmpl-"
        self.id = prefix + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = jobs[0].model
        self.choices = parsed.request.n * len(jobs)
        self.done = False
        record.prompt_tokens = sum(j.prompt_tokens for j in jobs)

    def cancel(self) -> None:
        if not self.done:
            for job in self.jobs:
                job.cancel()

    def usage(self) -> dict[str, int]:
        return schema.usage(self.record.prompt_tokens, self.record.completion_tokens)

    async def events(self) -> AsyncIterator[Piece | Finished]:
        try:
            if len(self.jobs) == 1:
                async for event in self.jobs[0].events():
                    self._seen(event)
                    yield event
            else:
                async for event in self._merged():
                    self._seen(event)
                    yield event
            self.done = True
        finally:
            self._account()

    def _seen(self, event: Piece | Finished) -> None:
        if self.record.ttft_s is None and isinstance(event, Piece):
            self.record.ttft_s = time.monotonic() - self.record.started

    def _account(self) -> None:
        self.record.completion_tokens = sum(j.completion_tokens for j in self.jobs)
        ttfts = [j.ttft_s for j in self.jobs if j.ttft_s is not None]
        if ttfts:
            self.record.ttft_s = min(ttfts)
        if self.record.ttft_s is not None:
            total = time.monotonic() - self.record.started
            self.record.generation_s = max(0.0, total - self.record.ttft_s)

    async def _merged(self) -> AsyncIterator[Piece | Finished]:
        queue: asyncio.Queue[Piece | Finished | BaseException | None] = asyncio.Queue()
        n = self.parsed.request.n

        async def pump(k: int, job: Job) -> None:
            try:
                async for e in job.events():
                    moved = (
                        Piece(e.index + k * n, e.text)
                        if isinstance(e, Piece)
                        else Finished(e.index + k * n, e.reason)
                    )
                    queue.put_nowait(moved)
            except Exception as e:
                queue.put_nowait(e)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(k, job)) for k, job in enumerate(self.jobs)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> dict[str, Any]:
        texts = [[] for _ in range(self.choices)]  # type: list[list[str]]
        reasons = ["stop"] * self.choices
        async for event in self.events():
            if isinstance(event, Piece):
                texts[event.index].append(event.text)
            else:
                reasons[event.index] = event.reason
        joined = ["".join(t) for t in texts]
        if not self.chat:
            return schema.completion_answer(
                self.id, self.created, self.model, joined, reasons, self.usage()
            )
        calls: list[list[dict[str, Any]]] = []
        contents: list[str | None] = []
        for text in joined:
            parsed = self._parse_calls(text)
            calls.append([c.openai() for c in parsed.calls] if parsed else [])
            contents.append(parsed.content if parsed else text)
        return schema.chat_answer(
            self.id, self.created, self.model, joined, reasons, self.usage(), calls, contents
        )

    def _parse_calls(self, text: str) -> Any:
        """The model's answer parsed for calls of the offered tools (None: none offered)."""
        request = self.parsed.request
        if not self.chat or not request.tools:
            return None
        from ..generation import tool_calls

        names = {t["function"]["name"] for t in request.tools}
        parsed = tool_calls.parse(text, request.tool_format, names)
        if not request.parallel_tool_calls and len(parsed.calls) > 1:
            parsed = tool_calls.Parsed(parsed.content, parsed.calls[:1])
        return parsed

    async def sse(self) -> AsyncGenerator[bytes, None]:
        """The answer as server-sent events, ending with `data: [DONE]`."""
        chunks = schema.ChunkMaker(self.id, self.created, self.model, self.chat)
        for i in range(self.choices):
            role = chunks.role(i)
            if role is not None:
                yield _event(role)
        tools = self.chat and bool(self.parsed.request.tools)
        held = [""] * self.choices  # with tools: each choice's text so far
        sent = [0] * self.choices  # ... and how much of it went out as content
        markers: tuple[str, ...] = ()
        if tools:
            from ..generation import tool_calls

            markers = tool_calls.start_markers(self.parsed.request.tool_format)
        try:
            async for event in self.events():
                i = event.index
                if isinstance(event, Piece):
                    if not tools:
                        if event.text:
                            yield _event(chunks.text(i, event.text))
                        continue
                    held[i] += event.text
                    cut = tool_calls.emittable(held[i], markers)
                    if cut > sent[i]:
                        yield _event(chunks.text(i, held[i][sent[i] : cut]))
                        sent[i] = cut
                    continue
                reason = event.reason
                if tools:
                    parsed = self._parse_calls(held[i])
                    if parsed is not None and parsed.calls:
                        for k, call in enumerate(parsed.calls):
                            yield _event(chunks.tool_call(i, k, call.openai(), True))
                            yield _event(chunks.tool_call(i, k, call.openai(), False))
                        reason = "tool_calls"
                    elif len(held[i]) > sent[i]:
                        yield _event(chunks.text(i, held[i][sent[i] :]))
                yield _event(chunks.finish(i, reason))
        except Exception as e:  # the status line is sent: say it in the stream, as OpenAI does
            self.cancel()
            yield _event(backend_error(e, self.record, "").body())
            return
        if self.parsed.include_usage:
            yield _event(chunks.usage(self.usage()))
        yield b"data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


class _EventStream(Response):
    """A text/event-stream answer that cancels its jobs the moment the client disconnects:
    a watcher waits on `receive()` for http.disconnect while the events are sent."""

    media_type = "text/event-stream"

    def __init__(self, answer: _Answer) -> None:  # no Content-Length: the length is unknown
        self.status_code, self.background = 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.answer = answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        stream = self.answer.sse()

        async def pump() -> bool:
            async for data in stream:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True

        try:
            finished = await _race_disconnect(pump(), receive)
        except OSError:  # a write to a closed connection
            finished = None
        if finished is None:
            self.answer.record.disconnected = True
            self.answer.cancel()
        await stream.aclose()
