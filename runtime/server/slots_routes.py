"""llama-server's slot monitor, `GET /slots`: one object per sequence slot of a loaded model
(`?model=NAME`; without: the first model named at start), in llama-server's shape
(server-context.cpp, server_slot::to_json), so the monitoring tools and scripts written for it
read infer's.

    [{"id": 0, "n_ctx": 2048, "speculative": false, "is_processing": true, "id_task": 7,
      "n_prompt_tokens": 31, "n_prompt_tokens_processed": 3, "n_prompt_tokens_cache": 28,
      "params": {"temperature": 0.8, ..., "n_predict": 64}, "next_token": [{"has_next_token":
      true, "has_new_line": false, "n_remain": 52, "n_decoded": 12}]}, ...]

What infer does not keep is left out rather than made up: an idle slot shows no request (llama-
server shows its previous one's), and no slot shows its prompt or text (llama-server's `prompt`
and `generated`): one API key is often shared by many people, who would read each other's
conversations here. `?fail_on_no_slot=1` answers 503 when every slot is busy, as llama-server.
`infer serve --no-slots` turns the route off (501, as llama-server without `--slots`).

    routes(backend, enabled, backend_error) -> [Route]   # added to app.py's list
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..options import OPTIONS
from .access_log import record_of
from .backend import Backend, SlotInfo
from .door import BackendError
from .request_fields import ApiError


def routes(backend: Backend, enabled: bool, backend_error: BackendError) -> list[Route]:
    async def slots(request: Request) -> Response:
        try:
            if not enabled:
                raise ApiError(
                    501,
                    "this server's slot monitor is off (it was started with --no-slots)",
                    code="not_supported",
                    type="not_supported_error",
                )
            try:
                infos = backend.slot_report(request.query_params.get("model"))
            except Exception as e:
                raise backend_error(e, record_of(request.scope), "model") from None
            if request.query_params.get("fail_on_no_slot") and all(
                i.request is not None for i in infos
            ):
                raise ApiError(503, "no slot available", code="unavailable")
        except ApiError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        return JSONResponse([slot_object(i) for i in infos])

    return [Route("/slots", slots, methods=["GET"])]


def slot_object(info: SlotInfo) -> dict[str, Any]:
    """One slot in llama-server's shape."""
    out: dict[str, Any] = {
        "id": info.id,
        "n_ctx": info.n_ctx,
        "speculative": info.speculative,
        "is_processing": info.request is not None,
    }
    if info.request is None:
        return out
    limit = -1 if info.max_tokens is None else info.max_tokens
    params: dict[str, Any] = {}
    if info.sampling is not None:  # llama-server's names, from the one option table
        for option in OPTIONS:
            value = getattr(info.sampling, option.name)
            if option.llama_cpp and value is not None:
                params[option.llama_cpp] = value
    params |= {
        "n_predict": limit,
        "max_tokens": limit,
        "ignore_eos": info.ignore_eos,
        "stop": list(info.stop),
    }
    return out | {
        "id_task": info.request,
        "n_prompt_tokens": info.prompt_tokens,
        "n_prompt_tokens_processed": info.read_tokens,
        "n_prompt_tokens_cache": info.cached_tokens,
        "params": params,
        "next_token": [
            {
                "has_next_token": True,
                "has_new_line": info.new_line,
                "n_remain": -1 if info.max_tokens is None else info.max_tokens - info.generated,
                "n_decoded": info.generated,
            }
        ],
    }
