"""`POST /v1/embeddings` in OpenAI's shapes: the request checked field by field, the answer as
the `openai` client parses it (floats, or base64 of little-endian float32)."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from .backend import Embeddings
from .request_fields import invalid, model_name

MAX_INPUTS = 2048  # as OpenAI's limit on one request


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str] | list[list[int]]
    encoding_format: str  # float | base64
    dimensions: int | None


def parse(body: Any) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise invalid("dimensions", "'dimensions' must be a positive integer")
    return EmbeddingRequest(model, _inputs(body.get("input")), fmt, dimensions)


def _inputs(value: Any) -> list[str] | list[list[int]]:
    """A string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid(
            "input", "'input' must be a string, or a non-empty array of strings or tokens"
        )
    if len(value) > MAX_INPUTS:
        raise invalid("input", f"at most {MAX_INPUTS} inputs per request")
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(_is_token(v) for v in value):
        return [list(value)]
    if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
        return [list(v) for v in value]
    raise invalid(
        "input", "'input' must be a string, an array of strings, or token arrays (integers)"
    )


def _is_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def answer(request: EmbeddingRequest, model: str, result: Embeddings) -> dict[str, Any]:
    dim = len(result.vectors[0]) if result.vectors else 0
    if request.dimensions is not None and request.dimensions != dim:
        raise invalid(
            "dimensions",
            f"'dimensions' {request.dimensions} is not supported: {model} makes {dim}-dimensional "
            "vectors and cannot shorten them",
        )
    data = []
    for index, vector in enumerate(result.vectors):
        encoded: Any = vector
        if request.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
