"""Reranking: `POST /v1/rerank` (also `/rerank`, `/v1/reranking`, `/reranking`, as
llama-server answers them, and Cohere's `/v2/rerank`), for a reranker GGUF (its pooling is
"rank").

    routes(backend, max_body, backend_error) -> [Route, ...]   # added to app.py's list

Jina/Cohere's shape: {model, query, documents, top_n, return_documents} → {id, model, object,
results: [{index, relevance_score, document?: {text}}] best first, usage}. With `texts`
instead of `documents` it is Hugging Face TEI's: a bare list of {index, score, text?}
(`return_text`). The scores are llama.cpp's own: each (query, document) pair built as
llama-server builds it (llama/special.py) and pooled on the model's decode thread with its
other embedding requests (backend.rerank → the worker's Embedder).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import OptionError
from ..tools.rerank import ranked
from .access_log import record_of
from .anthropic_routes import BackendError
from .backend import Backend
from .request_fields import ApiError, invalid, kind_of
from .security import ClientGone, parse_json, read_body

MAX_DOCUMENTS = 1024
# llama-server's four, and Cohere's v2 client's (its v1 client posts to /v1/rerank).
PATHS = ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking", "/v2/rerank")


@dataclass
class RerankRequest:
    model: str | None  # None: the server's first model
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    tei: bool  # Hugging Face TEI's request (`texts`) and answer (a bare list)


def parse(body: Any) -> RerankRequest:
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise invalid("model", "'model' must be a non-empty string")
    query = body.get("query")
    if not isinstance(query, str):
        raise invalid("query", f"'query' must be a string (got {kind_of(query)})")
    tei = "texts" in body and "documents" not in body
    name = "texts" if tei else "documents"
    documents = _documents(body.get(name), name)
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise invalid("top_n", f"'top_n' must be a positive integer (got {top_n!r})")
    flag = "return_text" if tei else "return_documents"
    keep = body.get(flag, False)
    if not isinstance(keep, bool):
        raise invalid(flag, f"'{flag}' must be true or false (got {kind_of(keep)})")
    return RerankRequest(model or None, query, documents, top_n, keep, tei)


def _documents(value: Any, name: str) -> list[str]:
    """Strings, or Cohere's {"text": ...} objects."""
    if not isinstance(value, list) or not value:
        raise invalid(name, f"'{name}' must be a non-empty array of strings")
    if len(value) > MAX_DOCUMENTS:
        raise invalid(name, f"at most {MAX_DOCUMENTS} {name} per request")
    out = []
    for i, doc in enumerate(value):
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise invalid(name, f"'{name}[{i}]' must be a string (got {kind_of(doc)})")
        out.append(doc)
    return out


def answer(request: RerankRequest, model: str, scores: list[float], tokens: int) -> Any:
    """The results, best first, cut to top_n, in the request's shape."""
    results = []
    for index, score in ranked(scores, request.top_n):
        if request.tei:
            item: dict[str, Any] = {"index": index, "score": score}
            if request.return_documents:
                item["text"] = request.documents[index]
        else:
            item = {"index": index, "relevance_score": score}
            if request.return_documents:
                item["document"] = {"text": request.documents[index]}
        results.append(item)
    if request.tei:
        return results
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": model,
        "object": "list",
        "results": results,
        "usage": usage,
        "meta": {"billed_units": {"search_units": 1}},  # Cohere's clients read it
    }


def routes(backend: Backend, max_body: int, backend_error: BackendError) -> list[Route]:
    door = _Door(backend, max_body, backend_error)
    return [Route(path, door.rerank, methods=["POST"]) for path in PATHS]


class _Door:
    def __init__(self, backend: Backend, max_body: int, backend_error: BackendError) -> None:
        self.backend, self.max_body, self.backend_error = backend, max_body, backend_error

    async def rerank(self, request: Request) -> Response:
        record = record_of(request.scope)
        try:
            raw = await read_body(request.receive, request.headers, self.max_body)
            parsed = parse(parse_json(raw))
            record.model = model = parsed.model or self._first_model()
            record.started = time.monotonic()
            try:
                result = await self.backend.rerank(model, parsed.query, parsed.documents)
            except OptionError as e:  # not a reranker
                raise invalid(e.option, str(e)) from None
            except Exception as e:
                raise self.backend_error(e, record, "documents") from None
            record.prompt_tokens = result.prompt_tokens
            scores = [v[0] for v in result.vectors]
            return JSONResponse(answer(parsed, model, scores, result.prompt_tokens))
        except ApiError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=400)

    def _first_model(self) -> str:
        loaded = [m.id for m in self.backend.models() if m.loaded]
        if not loaded:
            raise invalid("model", "'model' is required: no model is loaded on this server")
        return loaded[0]
