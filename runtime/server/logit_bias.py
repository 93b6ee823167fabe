"""The `logit_bias` field of the doors that have it, read into the one form the sampler takes
(`SamplingParams.logit_bias`: (token id, bias) pairs, -inf = never sampled), and shown back as
llama-server shows it in `generation_settings`.

OpenAI (openai_requests: /v1/chat/completions, /v1/completions): `{"<token id>": bias}`, each
bias -100..100, added to the token's logit (-100 all but bans a token, as with OpenAI, vLLM and
llama-server, which add it too).

llama.cpp's native /completion (llamacpp_protocol), as llama-server's server-schema.cpp reads
it: `[[token id, bias], ...]`, `[["text", bias], ...]` (the text is tokenized, every token gets
the bias), `{"<token id>": bias}` or `{"text": bias}`; a bias of `false` bans the token.
llama-server skips what it cannot read, and drops ids outside the vocabulary; here each is an
OptionError naming `logit_bias` (each door's 400), and an id outside the vocabulary never
reaches llama.cpp (the pool checks ids against the model's vocabulary, the sampler chain
again).

Ollama, Anthropic and the Responses API have no such field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import OptionError
from .backend import Backend

FIELD = "logit_bias"
OPENAI_LIMIT = 100.0  # OpenAI's range for a bias: -100..100
NATIVE_LIMIT = 1e6  # beyond any useful bias; a larger one would overflow float32 logits
MAX_ENTRIES = 4096  # more than a request has any use for (OpenAI allows 300)
_ID = re.compile(r"\s*[+-]?[0-9]+")  # strtol's digits, as llama-server tells an id from text

Pairs = tuple[tuple[int, float], ...]
# Before tokenization: a native request's text entries are resolved by `resolve`.
Entries = tuple[tuple[int | str, float], ...]


def _error(message: str) -> OptionError:
    """The door words it as its 400 naming the field (OptionError's option)."""
    return OptionError(FIELD, message)


def _json(value: Any) -> str:
    """A value as the client wrote it, cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _bias(value: Any, limit: float, ban: bool, where: str) -> float:
    """A bias: a number within ±limit, or (native only) `false`, a ban (-inf)."""
    if ban and value is False:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = "a number or false" if ban else "a number"
        raise _error(f"{where}: a bias must be {allowed} (got {_json(value)})")
    if not math.isfinite(value) or not -limit <= value <= limit:
        raise _error(f"{where}: a bias must be between {-limit:g} and {limit:g} (got {value!r})")
    return float(value)


def _count(value: Any) -> None:
    if len(value) > MAX_ENTRIES:
        raise _error(f"may hold at most {MAX_ENTRIES} entries (got {len(value)})")


def parse_openai(value: Any) -> Pairs:
    """OpenAI's `logit_bias` ({"<token id>": bias}); () for none (absent, null, {})."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _error(f"must be an object of token ids to biases (got {_json(value)})")
    _count(value)
    out = []
    for key, bias in value.items():
        if not _ID.fullmatch(key):
            raise _error(f"keys must be token ids (got {key!r})")
        token = int(key)
        if token < 0:
            raise _error(f"has token {token}, outside the vocabulary")
        out.append((token, _bias(bias, OPENAI_LIMIT, False, f"token {token}")))
    return tuple(out)


def parse_native(value: Any) -> Entries:
    """llama-server's `logit_bias` forms (see the module's note), text entries still text; ()
    for none."""
    if value is None:
        return ()
    entries: list[tuple[int | str, float]] = []
    if isinstance(value, dict):
        _count(value)
        for key, bias in value.items():
            token: int | str = int(key) if _ID.fullmatch(key) else key
            entries.append((token, _bias(bias, NATIVE_LIMIT, True, repr(key))))
    elif isinstance(value, list):
        _count(value)
        for i, entry in enumerate(value):
            if not isinstance(entry, list) or len(entry) != 2:
                raise _error(f"[{i}] must be a [token id or text, bias] pair")
            token = entry[0]
            if isinstance(token, bool) or not isinstance(token, (int, str)):
                raise _error(f"[{i}][0] must be a token id or a text (got {_json(token)})")
            entries.append((token, _bias(entry[1], NATIVE_LIMIT, True, f"[{i}]")))
    else:
        raise _error(f"must be an array of [token, bias] pairs or an object (got {_json(value)})")
    bad = next((t for t, _ in entries if isinstance(t, int) and t < 0), None)
    if bad is not None:
        raise _error(f"has token {bad}, outside the vocabulary")
    return tuple(entries)


async def resolve(entries: Entries, tokenize: Callable[[str], Awaitable[list[int]]]) -> Pairs:
    """The entries with each text replaced by its tokens, each with the text's bias (tokenized
    as llama-server's common_tokenize(vocab, text, false): no BOS, no control tokens)."""
    out: list[tuple[int, float]] = []
    for token, bias in entries:
        if isinstance(token, str):
            out.extend((t, bias) for t in await tokenize(token))
        else:
            out.append((token, bias))
    return tuple(out)


async def tokenized(backend: Backend, model: str, entries: Entries) -> Pairs:
    """`resolve` with the served model's tokenizer."""

    async def tokenize(text: str) -> list[int]:
        return await backend.tokenize(model, text, add_special=False, parse_special=False)

    return await resolve(entries, tokenize)


def has_text(entries: Entries) -> bool:
    return any(isinstance(token, str) for token, _ in entries)


def shown(pairs: Pairs) -> list[dict[str, Any]]:
    """`generation_settings.logit_bias` as llama-server writes it: [{bias, token}], a ban's
    -inf as null (its JSON library's way; JSON has no infinity)."""
    return [
        {"bias": bias if math.isfinite(bias) else None, "token": token} for token, bias in pairs
    ]
