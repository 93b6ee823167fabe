"""Anthropic's door on the server: `POST /v1/messages` and `/v1/messages/count_tokens`.

    routes(backend, max_body, backend_error) -> [Route, Route]   # added to app.py's list

A request walks the same way as an OpenAI chat: the body into a `TextRequest`
(anthropic_protocol), `backend.submit` (the same batch as every other door), `answer.Answer`
(whole, or streamed through `EventStream` in Anthropic's events). The app's middleware (access
log, Host check, CORS, API key) wraps these routes like every other; only the error shape is
Anthropic's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import anthropic_protocol as protocol
from .access_log import record_of
from .answer import Answer, EventStream, whole
from .backend import Backend
from .door import BackendError, Door
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import ApiError
from .security import ClientGone


def routes(
    backend: Backend, max_body: int, backend_error: BackendError, media: MediaPolicy = NO_URLS
) -> list[Route]:
    door = _Messages(backend, max_body, backend_error, media)
    return [
        Route("/v1/messages", door.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", door.count_tokens, methods=["POST"]),
    ]


def error_response(error: ApiError) -> Response:
    return JSONResponse(protocol.error_body(error), error.status, headers=error.headers)


class _Messages(Door):
    async def messages(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            _, parsed = await self.read(request, record, protocol.parse_messages)
            job = await self.submit(parsed, record, "messages")
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
            _, parsed = await self.read(request, record, protocol.parse_count)
            try:
                tokens = await self.backend.count_tokens(parsed.model, parsed.request)
            except Exception as e:
                raise self.backend_error(e, record, "messages") from None
        except ApiError as e:
            return error_response(e)
        except ClientGone:
            return Response(status_code=400)
        return JSONResponse({"input_tokens": tokens})
