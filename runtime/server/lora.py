"""LoRA adapters over HTTP, as llama-server takes them: a request's `lora` field
(`[{"id": 0, "scale": 0.5}, ...]` on /v1/chat/completions and /v1/completions), and
`GET /lora-adapters` (the adapters the server loaded, `[{id, path, scale}]`) and
`POST /lora-adapters` (`[{id, scale}]`: the scales every request without a `lora` field gets).

As in llama-server, an adapter a `lora` list leaves out is applied at scale 0, and an empty list
is no list (the server's scales). Unlike it, an id the model has no adapter for is a 400 rather
than ignored. `?model=NAME` picks another loaded model than the first one named at start.

    routes(backend, max_body, backend_error) -> [Route, Route]   # added to app.py's list
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import OptionError
from ..params import check_lora_scale
from .access_log import LogRecord, record_of
from .backend import Backend
from .openai_protocol import ApiError, invalid, kind_of
from .security import ClientGone, parse_json, read_body

MAX_ADAPTERS = 64  # entries in one list: more than any server loads

BackendError = Callable[[Exception, LogRecord, str], ApiError]


def parse_lora(value: Any, field: str = "lora") -> dict[int, float] | None:
    """A `lora` field ([{id, scale}, ...]) as {id: scale}; None when absent or empty (the
    server's scales apply). OptionError naming the entry's field otherwise."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise OptionError(field, f"must be an array of {{id, scale}} (got {kind_of(value)})")
    if len(value) > MAX_ADAPTERS:
        raise OptionError(field, f"at most {MAX_ADAPTERS} entries")
    scales: dict[int, float] = {}
    for i, entry in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise OptionError(where, f"must be an object {{id, scale}} (got {kind_of(entry)})")
        unknown = set(entry) - {"id", "scale"}
        if unknown:
            raise OptionError(where, f"has an unknown field '{sorted(unknown)[0]}'")
        ident = entry.get("id")
        if not isinstance(ident, int) or isinstance(ident, bool) or ident < 0:
            raise OptionError(
                f"{where}.id", f"must be an adapter's id, an integer >= 0 (got {ident!r})"
            )
        try:
            scales[ident] = check_lora_scale(entry.get("scale", 0.0))
        except OptionError as e:
            raise OptionError(f"{where}.scale", e.problem.removeprefix("scale ")) from None
    return scales


def checked_field(body: dict[str, Any]) -> dict[int, float] | None:
    """The body's `lora`, or an ApiError (400) naming the field."""
    try:
        return parse_lora(body.get("lora"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


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
