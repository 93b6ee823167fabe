"""The Responses door's routes: `POST /v1/responses` through the same backend and answer
assembly as the chat door (so its requests decode in the same batches), and a clear 404 for
the endpoints that read stored responses, which a stateless server has none of.

    routes(backend, max_body, backend_error) -> list[Route]   # added to app.py's route list

`backend_error` is app.py's mapping of a backend's exception to an ApiError, handed in (this
module is imported by app.py, so it cannot import it back).
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import responses_protocol as protocol
from . import telemetry
from .access_log import record_of
from .answer import Answer, EventStream, whole
from .backend import Backend
from .door import BackendError, Door
from .llamacpp_protocol import live_timings, timings
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import ApiError
from .security import ClientGone


def routes(
    backend: Backend, max_body: int, backend_error: BackendError, media: MediaPolicy = NO_URLS
) -> list[Route]:
    door = _Responses(backend, max_body, backend_error, media)
    return [
        Route("/v1/responses", door.create, methods=["POST"]),
        Route("/responses", door.create, methods=["POST"]),  # llama-server's path too
        Route("/v1/responses/{id:path}", door.stored, methods=["GET", "POST", "DELETE"]),
    ]


def _error(error: ApiError) -> Response:
    return JSONResponse(error.body(), error.status, headers=error.headers)


class _Responses(Door):
    async def create(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body, parsed = await self.read(request, record, protocol.parse)
            asked = telemetry.requested(body, parsed.stream)
            parsed.request.progress = asked.progress
            job = await self.submit(parsed, record, "input")
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer([job], record, 1, logprobs=parsed.request.logprobs is not None)
        if parsed.stream:

            def on_error(e: Exception) -> ApiError:
                return self.backend_error(e, record, "")

            frames = protocol.EventFrames(answer.model, parsed.echo, on_error)
            frames.telemetry = functools.partial(
                telemetry.progress_fields, per_token=asked.per_token
            )
            frames.timings = functools.partial(timings, record)  # as llama-server's last event
            if asked.per_token:
                frames.per_token = functools.partial(live_timings, record, [job])
            return EventStream(answer, frames)
        choices = await whole(
            answer, request.receive, lambda e: _error(self.backend_error(e, record, ""))
        )
        if isinstance(choices, Response):
            return choices
        used = protocol.usage(record.prompt_tokens, record.completion_tokens)
        return JSONResponse(protocol.whole(answer.model, parsed.echo, choices[0], used))

    async def stored(self, request: Request) -> Response:
        """GET/DELETE /v1/responses/{id}, …/cancel, …/input_items: nothing is ever stored."""
        message = "this server is stateless: it stores no responses, so none can be read back"
        return _error(ApiError(404, message, code="not_found"))
