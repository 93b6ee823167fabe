"""llama-server's own routes, for its clients and its test suite: the native `/completion`
(also `/completions`, as llama-server answers it), `/tokenize`, `/detokenize`,
`/apply-template`, `/props` and the native `/embeddings`. The OpenAI routes without `/v1`
(`/chat/completions`, `/models`, `/v1/health`) are app.py's own handlers under a second path.

Each handler: body → llamacpp_protocol.parse_* → the backend → answer assembly (answer.py),
shaped by llamacpp_protocol. Errors are OpenAI-shaped, as on every route but Ollama's.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import llamacpp_protocol as protocol
from . import logit_bias, openai_requests, telemetry
from .access_log import LogRecord, record_of
from .answer import Answer, EventStream, whole
from .backend import Backend, Job, TextRequest
from .door import BackendError
from .request_fields import ApiError
from .security import ClientGone, parse_json, read_body


def routes(backend: Backend, max_body: int, backend_error: BackendError) -> list[Route]:
    doors = _Routes(backend, max_body, backend_error)
    return [
        Route("/completion", doors.completion, methods=["POST"]),
        Route("/completions", doors.completion, methods=["POST"]),
        Route("/tokenize", doors.tokenize, methods=["POST"]),
        Route("/detokenize", doors.detokenize, methods=["POST"]),
        Route("/apply-template", doors.apply_template, methods=["POST"]),
        Route("/chat/completions/input_tokens", doors.input_tokens, methods=["POST"]),
        Route("/v1/chat/completions/input_tokens", doors.input_tokens, methods=["POST"]),
        Route("/embeddings", doors.embeddings, methods=["POST"]),
        Route("/embedding", doors.embeddings, methods=["POST"]),
        Route("/props", doors.props, methods=["GET"]),
    ]


async def tokenize_bias(
    backend: Backend, parsed: protocol.NativeRequest, failed: BackendError, record: LogRecord
) -> None:
    """A native request's logit_bias texts as the served model's tokens (llama-server tokenizes
    them with the model: no BOS, no control tokens), set on its requests (/completion, /infill)."""
    try:
        pairs = await logit_bias.tokenized(backend, parsed.model, parsed.bias)
    except Exception as e:
        raise failed(e, record, "logit_bias") from None
    protocol.set_logit_bias(parsed, pairs)


def _error(e: ApiError) -> Response:
    return JSONResponse(e.body(), e.status, headers=e.headers)


class _Routes:
    def __init__(self, backend: Backend, max_body: int, backend_error: BackendError) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error

    async def _body(self, request: Request) -> Any:
        raw = await read_body(request.receive, request.headers, self.max_body)
        return parse_json(raw)

    def _failed(self, e: Exception, record: LogRecord, param: str = "") -> ApiError:
        return self.backend_error(e, record, param)

    # --- /completion ------------------------------------------------------------------------
    async def completion(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            body = await self._body(request)
            parsed = protocol.parse_completion(body)
            asked = telemetry.requested(body, parsed.stream)
            for text_request in parsed.requests:
                text_request.progress = asked.progress
            record.model = parsed.model
            if parsed.bias:
                await tokenize_bias(self.backend, parsed, self._failed, record)
            jobs = await self._submit(parsed.model, parsed.requests, record, "prompt")
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)
        answer = Answer(jobs, record, 1, logprobs=parsed.probs)
        if parsed.stream:
            failed = functools.partial(self._failed, record=record)
            stream = protocol.NativeStream(parsed, answer.model, record, answer.stops, failed)
            stream.telemetry = functools.partial(
                telemetry.progress_fields, per_token=asked.per_token
            )
            if asked.per_token:
                stream.per_token = functools.partial(protocol.live_timings, record, jobs)
            return EventStream(answer, stream)
        choices = await whole(answer, request.receive, lambda e: _error(self._failed(e, record)))
        if isinstance(choices, Response):
            return choices
        results = [
            protocol.result(
                parsed,
                i,
                choice.text,
                choice.reason,
                answer.stops.get(i),
                answer.model,
                record,
                (jobs[i].prompt_tokens, jobs[i].completion_tokens),
                choice.logprobs,
            )
            for i, choice in enumerate(choices)
        ]
        if parsed.fields:
            results = [protocol.only_fields(r, parsed.fields) for r in results]
        return JSONResponse(results if parsed.several else results[0])

    async def _submit(
        self, model: str, requests: list[TextRequest], record: LogRecord, param: str
    ) -> list[Job]:
        jobs: list[Job] = []
        record.started = time.monotonic()
        try:
            for text_request in requests:
                jobs.append(await self.backend.submit(model, text_request))
        except Exception as e:
            for job in jobs:
                job.cancel()
            raise self._failed(e, record, param) from None
        return jobs

    # --- tokens -----------------------------------------------------------------------------
    async def tokenize(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            parsed = protocol.parse_tokenize(await self._body(request))
            try:
                tokens = await self.backend.tokenize(
                    parsed.model,
                    parsed.content,
                    add_special=parsed.add_special,
                    parse_special=parsed.parse_special,
                )
                pieces = None
                if parsed.with_pieces:
                    pieces = await self.backend.pieces(parsed.model, tokens)
            except Exception as e:
                raise self._failed(e, record, "content") from None
            return JSONResponse(protocol.tokens_answer(tokens, pieces))
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)

    async def detokenize(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            model, tokens = protocol.parse_detokenize(await self._body(request))
            try:
                pieces = await self.backend.pieces(model, tokens)
            except Exception as e:
                raise self._failed(e, record, "tokens") from None
            content = b"".join(pieces).decode("utf-8", errors="replace")
            return JSONResponse({"content": content})
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)

    async def apply_template(self, request: Request) -> Response:
        """The prompt a chat request renders to (what /v1/chat/completions would read)."""
        record = record_of(request.scope)
        try:
            body = await self._body(request)
            generation_prompt = True
            if isinstance(body, dict):  # here a rendering choice, not a generation's
                generation_prompt = body.pop("add_generation_prompt", True) is not False
            parsed = openai_requests.parse_chat(body)
            try:
                prompt = await self.backend.render(
                    parsed.model, parsed.request, add_generation_prompt=generation_prompt
                )
            except Exception as e:
                raise self._failed(e, record, "messages") from None
            return JSONResponse({"prompt": prompt})
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)

    async def input_tokens(self, request: Request) -> Response:
        """The prompt tokens a chat request would take: {"input_tokens": n}."""
        record = record_of(request.scope)
        try:
            parsed = openai_requests.parse_chat(await self._body(request))
            try:
                n = await self.backend.count_tokens(parsed.model, parsed.request)
            except Exception as e:
                raise self._failed(e, record, "messages") from None
            return JSONResponse({"input_tokens": n})
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)

    # --- embeddings, props ------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        """llama-server's own /embeddings: `input` or `content`; one result per input, its
        vector in a list ([{index, embedding: [[...]]}]), as llama-server writes pooled ones."""
        from . import embeddings

        record = record_of(request.scope)
        try:
            body = await self._body(request)
            if isinstance(body, dict) and "input" not in body and "content" in body:
                body = {**body, "input": body["content"]}
            parsed = embeddings.parse(body)
            record.model = parsed.model
            try:
                result = await self.backend.embed(parsed.model, parsed.inputs)
            except Exception as e:
                raise self._failed(e, record, "input") from None
            record.prompt_tokens = result.prompt_tokens
            data = [{"index": i, "embedding": [v]} for i, v in enumerate(result.vectors)]
            return JSONResponse(data)
        except ApiError as e:
            return _error(e)
        except ClientGone:
            return Response(status_code=400)

    async def props(self, request: Request) -> Response:
        """What llama.cpp's clients read of /props: the slots, each slot's context, the model."""
        loaded = [m for m in self.backend.models() if m.loaded]
        report = self.backend.load_report()
        first = loaded[0] if loaded else None
        return JSONResponse(
            {
                "default_generation_settings": {
                    "n_ctx": first.context if first else 0,
                    "params": {"seed": -1, "n_predict": -1},
                },
                "total_slots": report.slots,
                "model_alias": first.id if first else "",
                "model_path": first.id if first else "",
                "modalities": {"vision": False, "audio": False},
                "build_info": "infer",
                "is_sleeping": False,
            }
        )
