"""llama-server's streaming telemetry, on the doors that stream: `return_progress` (a frame per
step of the prompt's reading, `prompt_progress`: total, cache, processed, time_ms) and
`timings_per_token` (the `timings` object on each frame, not only the last), read from a
request body and shaped here; each door's stream shaper (openai_answers' chunks,
/completion's frames, the Responses events) gets `progress_fields` from its route and adds them
to a frame of its own kind.

What llama-server's clients show with them: a progress bar while a long prompt is read (its web
UI), and live throughput. A progress frame's `timings` are the prompt's so far (tokens decoded,
the cached ones apart, and the time to the end of the last decode that read some), generation
not begun. `verbose` is llama-server's debugging aid: the unstreamed OpenAI answer carries
`__verbose`, the answer as /completion would give it with the prompt as the model read it (the
chat template's text), to see what a template made of the messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .answer import Answer
from .backend import Backend, Choice, Progress
from .llamacpp_protocol import stop_type, timings
from .openai_requests import ParsedRequest
from .request_fields import boolean


@dataclass(frozen=True)
class Telemetry:
    """What a streamed request asked for."""

    progress: bool = False  # return_progress
    per_token: bool = False  # timings_per_token
    verbose: bool = False  # `verbose`: the unstreamed answer carries `__verbose`


def requested(body: dict[str, Any], stream: bool) -> Telemetry:
    """The flags of a request body (progress and per-token timings only on a stream, as in
    llama-server; `verbose` only on an unstreamed answer here); a flag that is not a boolean
    is a 400 naming it."""
    progress, per_token = boolean(body, "return_progress"), boolean(body, "timings_per_token")
    verbose = boolean(body, "verbose")
    return Telemetry(progress and stream, per_token and stream, verbose and not stream)


def progress_fields(progress: Progress, per_token: bool) -> dict[str, Any]:
    """The fields a progress frame adds: `prompt_progress`, and `timings` when asked for."""
    fields: dict[str, Any] = {
        "prompt_progress": {
            "total": progress.total,
            "cache": progress.cache,
            "processed": progress.processed,
            "time_ms": progress.time_ms,
        }
    }
    if per_token:
        read = progress.processed - progress.cache
        ms = progress.read_ms if read else 0.0
        fields["timings"] = {
            "cache_n": progress.cache,
            "prompt_n": read,
            "prompt_ms": ms,
            "prompt_per_token_ms": ms / read if read else 0.0,
            "prompt_per_second": 1000 * read / ms if ms > 0 else 0.0,
            "predicted_n": 0,
            "predicted_ms": 0.0,
            "predicted_per_token_ms": 0.0,
            "predicted_per_second": 0.0,
        }
    return fields


async def verbose(
    backend: Backend, parsed: ParsedRequest, answer: Answer, choices: list[Choice]
) -> dict[str, Any]:
    """`__verbose` of an unstreamed answer: its first choice as /completion gives it, and the
    prompt as the model read it."""
    if parsed.request.messages is not None:
        prompt = await backend.render(answer.model, parsed.request)
    else:
        prompt = parsed.request.prompt or "\n".join(parsed.prompts)
    record, first = answer.record, choices[0]
    word = answer.stops.get(0)
    return {
        "index": 0,
        "content": first.text,
        "prompt": prompt,
        "model": answer.model,
        "stop": True,
        "stop_type": stop_type(first.reason, word),
        "stopping_word": word or "",
        "tokens_predicted": record.completion_tokens,
        "tokens_evaluated": record.prompt_tokens,
        "timings": timings(record),
    }
