"""LoRA adapters over HTTP, as llama-server takes them: a request's `lora` field
(`[{"id": 0, "scale": 0.5}, ...]` on /v1/chat/completions and /v1/completions; parsed by
lora_fields.py), and
`GET /lora-adapters` (the adapters the server loaded, `[{id, path, scale}]`) and
`POST /lora-adapters` (`[{id, scale}]`: the scales every request without a `lora` field gets).

As in llama-server, an adapter a `lora` list leaves out is applied at scale 0, and an empty list
is no list (the server's scales). Unlike it, an id the model has no adapter for is a 400 rather
than ignored. `?model=NAME` picks another loaded model than the first one named at start.

    routes(backend, max_body, backend_error) -> [Route, Route]   # added to app.py's list
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import OptionError
from .access_log import record_of
from .backend import Backend
from .door import BackendError
from .lora_fields import parse_lora
from .request_fields import ApiError, invalid, kind_of
from .security import ClientGone, parse_json, read_body


def routes(backend: Backend, max_body: int, backend_error: BackendError) -> list[Route]:
    door = _Door(backend, max_body, backend_error)
    return [
        Route("/lora-adapters", door.list, methods=["GET"]),
        Route("/lora-adapters", door.set, methods=["POST"]),
    ]


class _Door:
    def __init__(self, backend: Backend, max_body: int, backend_error: BackendError) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error

    async def list(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            try:
                adapters = self.backend.lora_adapters(request.query_params.get("model"))
            except Exception as e:
                raise self.backend_error(e, record, "model") from None
        except ApiError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        return JSONResponse([{"id": a.id, "path": a.path, "scale": a.scale} for a in adapters])

    async def set(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body = parse_json(await read_body(request.receive, request.headers, self.max_body))
            if not isinstance(body, list):  # [] sets every adapter to 0, as llama-server does
                raise invalid(
                    "", f"the body must be an array of {{id, scale}} (got {kind_of(body)})"
                )
            try:
                scales = parse_lora(body, "") or {}
            except OptionError as e:
                raise invalid(e.option, f"'{e.option}' {e.problem}") from None
            try:
                self.backend.set_lora(request.query_params.get("model"), scales)
            except Exception as e:
                raise self.backend_error(e, record, "") from None
        except ApiError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=400)
        return JSONResponse({"success": True})
