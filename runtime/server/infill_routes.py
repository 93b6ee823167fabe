"""llama-server's fill-in-the-middle door: `POST /infill`, what llama.vim and llama.vscode call.

    routes(backend, max_body, backend_error) -> [Route]   # added to app.py's list

The body (input_prefix, input_suffix, input_extra [{filename, text}], prompt, and llama.cpp's
native sampling fields: temperature, top_k, top_p, min_p, seed, n_predict, stop, stream,
logit_bias, n_probs…)
becomes a `TextRequest` whose `infill` the backend turns into tokens with generation/infill.py
(llama-server's format_prompt_infill), then walks as every other request does. The answer is
llama.cpp's native completion object (`content`, `stop`, `tokens_predicted`, `timings`…) and
its stream (one `data: {…}` event per piece and a last one with `"stop": true`, no `[DONE]`),
both shaped by llamacpp_protocol as /completion's are.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import OptionError
from ..generation.infill import Infill
from .access_log import record_of
from .answer import Answer, EventStream, whole
from .anthropic_routes import BackendError
from .backend import Backend, TextRequest
from .llamacpp_protocol import (
    NativeRequest,
    NativeStream,
    generation_settings,
    n_predict_of,
    probs_and_bias,
    result,
    sampling_of,
    with_bias,
)
from .llamacpp_routes import tokenize_bias
from .request_fields import ApiError, boolean, invalid, kind_of, model_name, stop_strings
from .security import ClientGone, parse_json, read_body

MAX_EXTRA = 1024  # input_extra chunks per request


def routes(backend: Backend, max_body: int, backend_error: BackendError) -> list[Route]:
    door = _Door(backend, max_body, backend_error)
    return [Route("/infill", door.infill, methods=["POST"])]


def parse(body: Any) -> NativeRequest:
    """An /infill body → llama.cpp's native request (one TextRequest, its `infill` set), or an
    ApiError naming the field. A body without `model` gets "": the server's first model."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    prefix, suffix = _text(body, "input_prefix", None), _text(body, "input_suffix", None)
    infill = Infill(prefix, suffix, _extra(body.get("input_extra")), _text(body, "prompt", ""))
    request = TextRequest(sampling=sampling_of(body), infill=infill, infill_field="input_suffix")
    bias = probs_and_bias(body, request)  # n_probs, post_sampling_probs, logit_bias
    n_predict = n_predict_of(body)
    request.max_tokens = None if n_predict < 0 else n_predict
    request.stop = stop_strings(body, drop_empty=True)
    stream = boolean(body, "stream")
    settings = generation_settings(request, n_predict, stream)
    parsed = NativeRequest(model, [request], stream, n_predict, settings, prompts=[infill.prompt])
    with_bias(parsed, bias)
    return parsed


def _text(body: dict[str, Any], name: str, default: str | None) -> str:
    value = body.get(name, default)
    if value is None:
        raise invalid(name, f"'{name}' is required")
    if not isinstance(value, str):
        raise invalid(name, f"'{name}' must be a string (got {kind_of(value)})")
    return value


def _extra(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_EXTRA:
        raise invalid(
            "input_extra",
            f"'input_extra' must be an array of at most {MAX_EXTRA} "
            '{"filename": string, "text": string}',
        )
    chunks = []
    for i, chunk in enumerate(value):
        where = f"input_extra[{i}]"
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise invalid(where, f"'{where}' must hold a \"text\" string")
        filename = chunk.get("filename", "tmp")  # llama-server's default name
        if not isinstance(filename, str):
            raise invalid(where, f"'{where}.filename' must be a string")
        chunks.append((filename, chunk["text"]))
    return tuple(chunks)


class _Door:
    def __init__(self, backend: Backend, max_body: int, backend_error: BackendError) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error

    async def infill(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body = parse_json(await read_body(request.receive, request.headers, self.max_body))
            parsed = parse(body)
            record.model = parsed.model
            if parsed.bias:
                await tokenize_bias(self.backend, parsed, self.backend_error, record)
            try:
                job = await self.backend.submit(parsed.model, parsed.requests[0])
            except OptionError as e:  # not a FIM model: name the field, as the CLI names --suffix
                raise invalid(e.option, str(e)) from None
            except Exception as e:
                raise self.backend_error(e, record, "input_prefix") from None
        except ApiError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer([job], record, 1, logprobs=parsed.probs)
        if parsed.stream:
            shaper = NativeStream(
                parsed,
                answer.model,
                record,
                answer.stops,
                lambda e: self.backend_error(e, record, ""),
            )
            return EventStream(answer, shaper)

        def failed(e: Exception) -> Response:
            error = self.backend_error(e, record, "")
            return JSONResponse(error.body(), error.status)

        choices = await whole(answer, request.receive, failed)
        if isinstance(choices, Response):
            return choices
        choice = choices[0]
        counts = (job.prompt_tokens, job.completion_tokens)
        stop = answer.stops.get(0)
        body_out = result(
            parsed,
            0,
            choice.text,
            choice.reason,
            stop,
            answer.model,
            record,
            counts,
            choice.logprobs,
        )
        return JSONResponse(body_out)
