"""The `logprobs` fields of the doors that have them: read from a request, and the tokens'
log-probabilities (generation/logprobs.py) shaped as each door answers them. The values are
llama-server's on every door (the log-softmax of the raw logits, before sampling).

OpenAI (openai_requests, openai_answers):
- /v1/chat/completions: `logprobs: true` and `top_logprobs` 0..20 (OpenAI's range; without
  `logprobs: true` a 400, as OpenAI and llama-server answer) →
  `choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob,
  bytes}]}]}`. Each entry also has llama-server's `id` (the token id).
- /v1/completions: `logprobs: N` alternatives (OpenAI allows 0..5; llama-server any number; here
  up to 100) → `{tokens, token_logprobs, top_logprobs: [{text: logprob}], text_offset}` as
  OpenAI answers, plus llama-server's `content` list (the chat shape), which its clients read.
Where OpenAI and llama-server differ in shape, OpenAI is followed: `logprobs: true` without
`top_logprobs` gives no alternatives (llama-server gives 20) and `top_logprobs: 0` still gives
the tokens' own log-probabilities (llama-server gives none); the end-of-generation token is not
part of the answer's text and has no entry (llama-server lists it with an empty text).

llama.cpp's native /completion (llamacpp_protocol): `n_probs` N (or its alias `logprobs`, as
llama-server reads it; up to 100) → `completion_probabilities: [{id, token, bytes, logprob,
top_logprobs: [{id, token, bytes, logprob}]}]` on the answer and on each stream frame (its own
tokens'). With `post_sampling_probs: true` the values are the probabilities after the sampler
chain instead (top-k, top-p, min-p, temperature...: `prob` and `top_probs`, only candidates the
chain left; at temperature 0 the pick alone, with probability 1), as llama-server gives them.

Responses (responses_protocol): `include: ["message.output_text.logprobs"]` and `top_logprobs`
0..20 → the output_text part's `logprobs: [{token, logprob, bytes, top_logprobs}]`, and each
`response.output_text.delta` event's for its own text.

Ollama (ollama_protocol, api/types.go): `logprobs: true` and `top_logprobs` 0..20 on /api/chat
and /api/generate → `"logprobs": [{token, logprob, bytes, top_logprobs: [{token, logprob,
bytes}]}]` beside the message (each stream line: its own tokens').
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..generation.logprobs import MAX_TOP, MAX_TOP_COMPLETIONS, TokenLogprob, as_json

# A door's 400 for a field: invalid(field, message) (request_fields.invalid, ollama's...).
Invalid = Callable[[str, str], Exception]


def openai_requested(body: dict[str, Any], completions: bool, invalid: Invalid) -> int | None:
    """How many alternatives the body asks for per token (None: no logprobs). `invalid(field,
    message)` makes the protocol's 400."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if completions:
        if top is not None:
            raise invalid(
                "top_logprobs",
                "'top_logprobs' is a chat field: on /v1/completions 'logprobs' is the number of "
                "alternatives per token",
            )
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid("logprobs", "'logprobs' must be an integer: alternatives per token")
        if not 0 <= value <= MAX_TOP_COMPLETIONS:
            raise invalid(
                "logprobs", f"'logprobs' must be between 0 and {MAX_TOP_COMPLETIONS} (got {value})"
            )
        return value
    if value is not None and not isinstance(value, bool):
        raise invalid("logprobs", "'logprobs' must be true or false")
    if top is not None:
        if value is not True:
            raise invalid("top_logprobs", "'top_logprobs' requires 'logprobs': true")
        if not isinstance(top, int) or isinstance(top, bool):
            raise invalid("top_logprobs", "'top_logprobs' must be an integer")
        if not 0 <= top <= MAX_TOP:
            raise invalid("top_logprobs", f"'top_logprobs' must be between 0 and {MAX_TOP}")
        return top
    return 0 if value else None


def chat(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs` object."""
    return {"content": as_json(tokens)}


def completion(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """A completion choice's (or chunk's) `logprobs` object; `offset`: where the first token's
    text starts in the choice's text (a stream's later chunks)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    tops = []
    for t in tokens:
        top: dict[str, float] = {}
        for a in t.top:  # two alternatives with one text: the likelier one's value
            top.setdefault(a.text, a.logprob)
        tops.append(top)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": tops,
        "text_offset": offsets,
        "content": as_json(tokens),
    }


def native_requested(body: dict[str, Any], invalid: Invalid) -> int | None:
    """llama-server's `n_probs` (its alias `logprobs` when n_probs is absent): alternatives per
    token, or None for none (absent or 0)."""
    name = "n_probs" if body.get("n_probs") is not None else "logprobs"
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(name, f"'{name}' must be an integer: alternatives per token")
    if not 0 <= value <= MAX_TOP_COMPLETIONS:
        raise invalid(name, f"'{name}' must be between 0 and {MAX_TOP_COMPLETIONS} (got {value})")
    return value or None


def native(tokens: Sequence[TokenLogprob], post_sampling: bool) -> list[dict[str, Any]]:
    """`completion_probabilities` as llama-server writes them; `post_sampling`: the chain's
    probabilities (kept as logarithms, TokenLogprob's values) written as `prob`/`top_probs`."""
    if not post_sampling:
        return as_json(tokens)
    return [
        {
            "id": t.token,
            "token": t.text,
            "bytes": list(t.raw),
            "prob": math.exp(t.logprob),
            "top_probs": [
                {"id": a.token, "token": a.text, "bytes": list(a.raw), "prob": math.exp(a.logprob)}
                for a in t.top
            ],
        }
        for t in tokens
    ]


def ollama_requested(body: dict[str, Any], invalid: Invalid) -> int | None:
    """Ollama's `logprobs` (bool) and `top_logprobs` (0..20): alternatives per token, or None."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if value is not None and not isinstance(value, bool):
        raise invalid("logprobs", f"must be true or false (got {value!r})")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)):
        raise invalid("top_logprobs", f"must be an integer (got {top!r})")
    top = top or 0
    if not 0 <= top <= MAX_TOP:
        raise invalid("top_logprobs", f"must be between 0 and {MAX_TOP}")
    if top and not value:  # Ollama would compute nothing: say so rather than answer without
        raise invalid("top_logprobs", "requires logprobs: true")
    return top if value else None


def ollama(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """An answer's (or stream line's) `logprobs` list (an empty top_logprobs left out, as
    Ollama's omitempty does)."""
    return _plain(tokens, empty_top=False)


LOGPROBS_INCLUDE = "message.output_text.logprobs"


def responses_requested(body: dict[str, Any], invalid: Invalid) -> int | None:
    """The Responses API's `include` (only LOGPROBS_INCLUDE is honoured) and `top_logprobs`."""
    include, top = body.get("include"), body.get("top_logprobs")
    if include is not None and (
        not isinstance(include, list) or any(i != LOGPROBS_INCLUDE for i in include)
    ):
        raise invalid(
            "include",
            f"'include' may only hold {LOGPROBS_INCLUDE!r} here (nothing else is kept)",
        )
    wanted = bool(include)
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP:
            raise invalid("top_logprobs", f"'top_logprobs' must be an integer 0 to {MAX_TOP}")
        if top and not wanted:
            raise invalid("top_logprobs", f"'top_logprobs' needs 'include': [{LOGPROBS_INCLUDE!r}]")
    return (top or 0) if wanted else None


def responses(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """An output_text part's (or delta event's) `logprobs` list."""
    return _plain(tokens, empty_top=True)


def _plain(tokens: Sequence[TokenLogprob], *, empty_top: bool) -> list[dict[str, Any]]:
    """{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]} per token (no ids)."""
    out = []
    for t in tokens:
        entry: dict[str, Any] = {"token": t.text, "logprob": t.logprob, "bytes": list(t.raw)}
        if t.top or empty_top:
            entry["top_logprobs"] = [
                {"token": a.text, "logprob": a.logprob, "bytes": list(a.raw)} for a in t.top
            ]
        out.append(entry)
    return out
