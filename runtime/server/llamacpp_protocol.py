"""llama.cpp's own protocol (llama-server's routes without /v1): the native `/completion` body
validated into `TextRequest`s, its answers and stream frames, the `timings` object llama-server
adds to every answer, and the bodies of /tokenize, /detokenize and /apply-template. Pure data:
no HTTP, no starlette. Errors are OpenAI-shaped `ApiError`s (400 naming the field), as the
rest of the server's answers.

Where llama-server's fields mean what infer's table means they are read through the one option
table (`options.from_fields(body, "llama_cpp")`); fields it only uses for its slots
(`cache_prompt`, `id_slot`, `samplers`...) are ignored, as the OpenAI door ignores unknown ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import OptionError
from ..generation.logprobs import TokenLogprob
from ..generation.tool_calls import ToolCall
from ..options import from_fields
from ..params import SamplingParams
from . import logit_bias
from .access_log import LogRecord
from .backend import FinishReason, Job, Progress, TextRequest
from .logprobs import native as probs_json
from .logprobs import native_requested
from .lora_fields import parse_lora
from .openai_requests import llama_grammar
from .request_fields import (
    MAX_PROMPTS,
    MAX_TOKENS_LIMIT,
    ApiError,
    boolean,
    invalid,
    kind_of,
    model_name,
    stop_strings,
)

SEED_RANDOM = {-1, 0xFFFFFFFF}  # llama.cpp's LLAMA_DEFAULT_SEED: a new seed per request


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- /completion ----------------------------------------------------------------------------
@dataclass
class NativeRequest:
    """A validated /completion body: one TextRequest per prompt."""

    model: str
    requests: list[TextRequest]
    stream: bool = False
    n_predict: int = -1  # as asked (-1: until end of generation or the context)
    settings: dict[str, Any] = field(default_factory=dict)  # generation_settings echoed back
    several: bool = False  # a list of prompts: the answer is a list of results
    fields: list[str] = field(default_factory=list)  # response_fields: only these, by path
    prompts: list[str] = field(default_factory=list)  # each prompt's text ("" for token ids)
    # logit_bias entries with text, until the route has it tokenized (set_logit_bias)
    bias: logit_bias.Entries = ()

    @property
    def probs(self) -> bool:
        """The request asked for completion_probabilities (n_probs)."""
        return self.requests[0].logprobs is not None


def _prompt_object(prompt: dict[str, Any]) -> str:
    """llama.cpp's {"prompt_string", "multimodal_data"}: the text (no model here takes media
    through /completion: the media door is the chat's content parts)."""
    if prompt.get("multimodal_data") not in (None, []):
        raise invalid("prompt", "'multimodal_data' is not supported on /completion")
    text = prompt.get("prompt_string")
    if not isinstance(text, str):
        raise invalid("prompt", "a prompt object needs 'prompt_string', a string")
    return text


def _prompts(prompt: Any) -> list[str | list[int | str]]:
    """llama.cpp's prompt shapes: a string; token ids (maybe mixed with strings); a
    {"prompt_string"} object; or a list of those (several prompts, several results)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, dict):
        return [_prompt_object(prompt)]
    if not isinstance(prompt, list) or not prompt:
        raise invalid("prompt", "'prompt' must be a string, token ids or a list of prompts")
    if any(_is_int(p) for p in prompt):  # one prompt of ids, maybe mixed with text
        if not all(_is_int(p) or isinstance(p, str) for p in prompt):
            raise invalid("prompt", "a prompt of token ids holds only integers and strings")
        return [list(prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise invalid("prompt", f"at most {MAX_PROMPTS} prompts per request")
    out: list[str | list[int | str]] = []
    for p in prompt:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, dict):
            out.append(_prompt_object(p))
        elif isinstance(p, list) and p and all(_is_int(t) or isinstance(t, str) for t in p):
            out.append(list(p))
        else:
            raise invalid("prompt", "each prompt must be a string or an array of token ids")
    return out


def n_predict_of(body: dict[str, Any]) -> int:
    """`n_predict` (llama.cpp's name; -1: no limit) or OpenAI's `max_tokens`; -1 when absent."""
    name = "n_predict" if body.get("n_predict") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return -1
    if not _is_int(value) or not -1 <= value <= MAX_TOKENS_LIMIT:
        raise invalid(name, f"'{name}' must be an integer from -1 to {MAX_TOKENS_LIMIT}")
    return int(value)


def sampling_of(body: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's sampling fields through the one option table (a seed of -1: random)."""
    fields = dict(body)
    if _is_int(fields.get("seed")) and fields["seed"] in SEED_RANDOM:
        del fields["seed"]
    try:
        return dict(from_fields(fields, "llama_cpp"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


def parse_completion(body: Any) -> NativeRequest:
    """A /completion body → the request, or ApiError (400) naming the field."""
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    model = model_name(body)
    if "prompt" not in body:
        raise invalid("prompt", "'prompt' is required")
    prompts = _prompts(body["prompt"])
    try:
        lora = parse_lora(body.get("lora"))  # llama-server's per-request LoRA scales
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None
    sampling = sampling_of(body)
    grammar = llama_grammar(body)
    if grammar:
        sampling["grammar"] = grammar
    n_predict = n_predict_of(body)
    if n_predict == 0:
        raise invalid("n_predict", "'n_predict' must be -1 (no limit) or at least 1")
    stream = boolean(body, "stream")
    base = TextRequest(
        sampling=sampling,
        max_tokens=None if n_predict < 0 else n_predict,
        stop=stop_strings(body, drop_empty=True),
        ignore_eos=boolean(body, "ignore_eos"),
        lora=lora,
    )
    bias = probs_and_bias(body, base)
    requests = []
    for p in prompts:
        if isinstance(p, str):
            requests.append(TextRequest(**{**base.__dict__, "prompt": p}))
        else:
            requests.append(TextRequest(**{**base.__dict__, "prompt_tokens": p}))
    settings = generation_settings(base, n_predict, stream)
    fields = body.get("response_fields") or []
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise invalid("response_fields", "'response_fields' must be an array of strings")
    texts = [p if isinstance(p, str) else "" for p in prompts]
    parsed = NativeRequest(
        model, requests, stream, n_predict, settings, len(prompts) > 1, fields, texts
    )
    with_bias(parsed, bias)
    return parsed


def probs_and_bias(body: dict[str, Any], request: TextRequest) -> logit_bias.Entries:
    """llama-server's n_probs and post_sampling_probs, set on `request` (as generation_settings
    reads them), and its logit_bias entries (texts not yet tokenized: `with_bias`)."""
    request.logprobs = native_requested(body, invalid)
    request.post_sampling_probs = boolean(body, "post_sampling_probs")
    try:
        return logit_bias.parse_native(body.get("logit_bias"))
    except OptionError as e:
        raise invalid(e.option, f"'{e.option}' {e.problem}") from None


def with_bias(parsed: NativeRequest, entries: logit_bias.Entries) -> None:
    """The request's logit_bias entries: set now when they are token ids, else kept for the
    route to tokenize (`parsed.bias`, then set_logit_bias)."""
    parsed.bias = entries
    if not logit_bias.has_text(entries):  # token ids only: no tokenizer needed
        set_logit_bias(parsed, tuple((int(t), b) for t, b in entries))


def set_logit_bias(parsed: NativeRequest, pairs: logit_bias.Pairs) -> None:
    """The request's logit_bias, its texts tokenized (logit_bias.resolve): in every prompt's
    sampling, and in generation_settings as llama-server shows it."""
    parsed.bias = ()
    parsed.settings["logit_bias"] = logit_bias.shown(pairs)
    if pairs:
        for request in parsed.requests:
            request.sampling = {**request.sampling, "logit_bias": pairs}


def generation_settings(request: TextRequest, n_predict: int, stream: bool) -> dict[str, Any]:
    """llama-server's `generation_settings` for a request: what it samples with."""
    sampling, defaults = request.sampling, SamplingParams()
    return {
        "n_predict": n_predict,
        "seed": sampling.get("seed", -1 if defaults.seed is None else defaults.seed),
        "temperature": sampling.get("temperature", defaults.temperature),
        "top_k": sampling.get("top_k", defaults.top_k),
        "top_p": sampling.get("top_p", defaults.top_p),
        "min_p": sampling.get("min_p", defaults.min_p),
        "repeat_penalty": sampling.get("repeat_penalty", defaults.repeat_penalty),
        "presence_penalty": sampling.get("presence_penalty", defaults.presence_penalty),
        "frequency_penalty": sampling.get("frequency_penalty", defaults.frequency_penalty),
        "stop": request.stop,
        "ignore_eos": request.ignore_eos,
        "stream": stream,
        "n_probs": request.logprobs or 0,
        "post_sampling_probs": request.post_sampling_probs,
        # the request's, set by set_logit_bias (ignore_eos's bans on the end-of-generation
        # tokens are the pool's, which knows the vocabulary: not listed here)
        "logit_bias": [],
        "grammar": sampling.get("grammar", ""),
    }


def only_fields(result: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """llama-server's `response_fields`: each path ("generation_settings/n_predict") that
    exists in the result, under that path as its key."""
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = result
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[path] = value
    return out


# --- answers --------------------------------------------------------------------------------
def timings(record: LogRecord, prompt_n: int | None = None) -> dict[str, float | int]:
    """llama-server's `timings`: prompt reading up to the first token, then generation. Taken
    from the request's own clock (submit to first token, first token to last), so the prompt's
    time includes any wait for a slot; the generation's rates are over the tokens after the
    first."""
    prompt_n = record.prompt_tokens if prompt_n is None else prompt_n
    prompt_ms = 1000 * (record.ttft_s or 0.0)
    predicted_ms = 1000 * (record.generation_s or 0.0)
    predicted_n = record.completion_tokens

    def rates(n: int, ms: float) -> tuple[float, float]:
        return (ms / n if n else 0.0), (1000 * n / ms if ms > 0 else 0.0)

    prompt_per_token, prompt_per_second = rates(prompt_n, prompt_ms)
    # The first token comes with the prompt's last decode: the rate is over the steps after it
    # (llama-server's n_gen_steps), so a one-token answer has none.
    predicted_per_token, predicted_per_second = rates(max(0, predicted_n - 1), predicted_ms)
    return {
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_per_token,
        "prompt_per_second": prompt_per_second,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_per_token,
        "predicted_per_second": predicted_per_second,
    }


def live_timings(record: LogRecord, jobs: Sequence[Job]) -> dict[str, float | int]:
    """`timings` mid-stream (timings_per_token): the tokens generated so far, and the time
    since the first."""
    started = None if record.ttft_s is None else record.started + record.ttft_s
    now = replace(
        record,
        completion_tokens=sum(job.completion_tokens for job in jobs),
        generation_s=None if started is None else max(0.0, time.monotonic() - started),
    )
    return timings(now)


def stop_type(reason: FinishReason, word: str | None) -> str:
    """llama-server's stop_type: "eos", "word" (a stop string), "limit" (n_predict or the
    context), "none" (cut short)."""
    if reason is FinishReason.LENGTH:
        return "limit"
    if reason is FinishReason.CANCELLED:
        return "none"
    return "word" if word else "eos"


def result(
    parsed: NativeRequest,
    index: int,
    text: str,
    reason: FinishReason,
    word: str | None,
    model: str,
    record: LogRecord,
    counts: tuple[int, int],
    probs: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    """One prompt's whole answer (or a stream's last frame, with `text` ""); `probs`: its
    tokens' probabilities when the request asked (n_probs)."""
    prompt_n, predicted_n = counts
    answer = {
        "index": index,
        "content": text,
        "tokens": [],
        "id_slot": -1,
        "stop": True,
        "model": model,
        "tokens_predicted": predicted_n,
        "tokens_evaluated": prompt_n,
        "generation_settings": parsed.settings,
        "prompt": parsed.prompts[index] if index < len(parsed.prompts) else "",
        "has_new_line": "\n" in text,
        "truncated": False,
        "stop_type": stop_type(reason, word),
        "stopping_word": word or "",
        "tokens_cached": prompt_n + predicted_n,
        "timings": timings(record),
    }
    if probs is not None and parsed.probs:
        post = parsed.requests[0].post_sampling_probs
        answer["completion_probabilities"] = probs_json(probs, post)
    return answer


class NativeStream:
    """/completion's stream: a `data: {...}` frame per piece ({content, stop: false, ...}),
    then one final frame per prompt with `stop: true`, the counts and the timings."""

    media_type = "text/event-stream"

    def __init__(
        self,
        parsed: NativeRequest,
        model: str,
        record: LogRecord,
        stops: dict[int, str],
        failed: Callable[[Exception], ApiError],
    ) -> None:
        self.parsed, self.model, self.record, self.stops, self.failed = (
            parsed,
            model,
            record,
            stops,
            failed,
        )
        self.reasons: dict[int, FinishReason] = {}
        self.generated: dict[int, int] = {}
        # llama-server's telemetry, set by the route when asked for (telemetry.py): a progress
        # frame's fields, and the timings every text frame carries (timings_per_token)
        self.telemetry: Callable[[Progress], dict[str, Any]] = lambda p: {}
        self.per_token: Callable[[], dict[str, Any]] | None = None

    @staticmethod
    def _frame(data: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    def opening(self, choices: int) -> list[bytes]:
        return []

    def text(self, index: int, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        self.generated[index] = self.generated.get(index, 0) + 1
        frame = self._partial(index, text, self.generated[index])
        if self.per_token is not None:
            frame["timings"] = self.per_token()
        if logprobs and self.parsed.probs:  # this frame's own tokens'
            post = self.parsed.requests[0].post_sampling_probs
            frame["completion_probabilities"] = probs_json(logprobs, post)
        return self._frame(frame)

    def progress(self, progress: Progress) -> bytes:
        """A frame with no text and the prompt's progress, as llama-server sends."""
        return self._frame(self._partial(0, "", 0) | self.telemetry(progress))

    def _partial(self, index: int, text: str, predicted: int) -> dict[str, Any]:
        return {
            "index": index,
            "content": text,
            "tokens": [],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": predicted,
            "tokens_evaluated": self.record.prompt_tokens,
        }

    def call(self, index: int, k: int, call: ToolCall) -> bytes:
        return b""  # /completion offers no tools

    def end(self, index: int, reason: FinishReason) -> bytes:
        self.reasons[index] = reason
        return b""

    def error(self, error: Exception) -> bytes:
        e = self.failed(error)
        return self._frame({"error": {"code": e.status, "message": e.message, "type": e.type}})

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[bytes]:
        frames = []
        for index in sorted(self.reasons):
            body = result(
                self.parsed,
                index,
                "",
                self.reasons[index],
                self.stops.get(index),
                self.model,
                self.record,
                (prompt_tokens, completion_tokens),
            )
            frames.append(self._frame(body))
        return frames


# --- /tokenize, /detokenize -----------------------------------------------------------------
@dataclass(frozen=True)
class TokenizeRequest:
    model: str
    content: str
    add_special: bool
    parse_special: bool
    with_pieces: bool


def parse_tokenize(body: Any) -> TokenizeRequest:
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    content = body.get("content", "")
    if not isinstance(content, str):
        raise invalid("content", f"'content' must be a string (got {kind_of(content)})")
    return TokenizeRequest(
        model_name(body),
        content,
        boolean(body, "add_special"),
        boolean(body, "parse_special", default=True),
        boolean(body, "with_pieces"),
    )


def tokens_answer(tokens: list[int], pieces: list[bytes] | None) -> dict[str, Any]:
    """{"tokens": ids}, or with pieces [{id, piece}]: the piece as text where it is whole
    UTF-8, else its bytes as a list of numbers (as llama-server writes a partial character)."""
    if pieces is None:
        return {"tokens": tokens}
    out: list[dict[str, Any]] = []
    for token, piece in zip(tokens, pieces, strict=True):
        try:
            out.append({"id": token, "piece": piece.decode("utf-8")})
        except UnicodeDecodeError:
            out.append({"id": token, "piece": list(piece)})
    return {"tokens": out}


def parse_detokenize(body: Any) -> tuple[str, list[int]]:
    if not isinstance(body, dict):
        raise invalid("", "the request body must be a JSON object")
    tokens = body.get("tokens", [])
    if not isinstance(tokens, list) or not all(_is_int(t) for t in tokens):
        raise invalid("tokens", "'tokens' must be an array of token ids")
    return model_name(body), list(tokens)
