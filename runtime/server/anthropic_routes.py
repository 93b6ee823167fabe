"""Anthropic's door on the server: `POST /v1/messages` and `/v1/messages/count_tokens`.

    routes(backend, max_body, backend_error) -> [Route, Route]   # added to app.py's list

A request walks the same way as an OpenAI chat: the body into a `TextRequest`
(anthropic_protocol), `backend.submit` (the same batch as every other door), `answer.Answer`
(whole, or streamed through `EventStream` in Anthropic's events). The app's middleware (access
log, Host check, CORS, API key) wraps these routes like every other; only the error shape is
Anthropic's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import anthropic_protocol as protocol
from . import media_parts
from .access_log import LogRecord, record_of
from .answer import Answer, EventStream, whole
from .backend import Backend
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import ApiError
from .security import ClientGone, parse_json, read_body

# app.backend_error: a backend's exception as the ApiError it deserves (passed in, as app.py
# imports this module).
BackendError = Callable[[Exception, LogRecord, str], ApiError]


def routes(
    backend: Backend, max_body: int, backend_error: BackendError, media: MediaPolicy = NO_URLS
) -> list[Route]:
    door = _Door(backend, max_body, backend_error, media)
    return [
        Route("/v1/messages", door.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", door.count_tokens, methods=["POST"]),
    ]


def error_response(error: ApiError) -> Response:
    return JSONResponse(protocol.error_body(error), error.status, headers=error.headers)


class _Door:
    def __init__(
        self, backend: Backend, max_body: int, backend_error: BackendError, media: MediaPolicy
    ) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error
        self.media = media

    def _refuse_media(self, parsed: protocol.ParsedMessages) -> None:
        """Images for a model that takes none: a 400 naming the image block."""
        refused = media_parts.refused(self.backend, parsed.model, parsed.request.messages)
        if refused:
            raise protocol.invalid(*refused)

    async def _body(self, request: Request) -> object:
        return parse_json(await read_body(request.receive, request.headers, self.max_body))

    async def messages(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body = await self._body(request)
            parsed = await media_parts.parse(protocol.parse_messages, body, self.media)
            record.model = parsed.model
            self._refuse_media(parsed)
            record.started = time.monotonic()
            try:
                job = await self.backend.submit(parsed.model, parsed.request)
            except Exception as e:
                raise self.backend_error(e, record, "messages") from None
        except ApiError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer([job], record, 1)
        if parsed.stream:

            def on_error(e: Exception) -> ApiError:
                return self.backend_error(e, record, "")

            shaper = protocol.EventShaper(
                answer.model, record.prompt_tokens, on_error, answer.stops
            )
            return EventStream(answer, shaper)
        choices = await whole(
            answer, request.receive, lambda e: error_response(self.backend_error(e, record, ""))
        )
        if isinstance(choices, Response):
            return choices
        used = record.prompt_tokens, record.completion_tokens
        stop = answer.stops.get(0)
        return JSONResponse(protocol.message_object(answer.model, choices[0], stop, *used))

    async def count_tokens(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body = await self._body(request)
            parsed = await media_parts.parse(protocol.parse_count, body, self.media)
            record.model = parsed.model
            self._refuse_media(parsed)
            try:
                tokens = await self.backend.count_tokens(parsed.model, parsed.request)
            except Exception as e:
                raise self.backend_error(e, record, "messages") from None
        except ApiError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        return JSONResponse({"input_tokens": tokens})
