"""Remote engines: an OpenAI-compatible server (`infer serve`, llama-server, vLLM, Ollama, LM
Studio) answers instead of a local model. Request building, the server-sent-events stream,
bounded retries and the mapping of every failure to one RemoteError line.

The HTTP is httpx's, not the `openai` package's: httpx is a small, well-kept client (the one
`openai` itself is built on) that gives us the pieces we must control — the raw SSE lines, so a
stream that ends without `[DONE]` is seen; the status and `Retry-After` of a 429/503 before a
retry; the underlying OSError of a failed connection (refused, DNS, TLS), so each gets its own
message without parsing strings; and closing the socket on Ctrl-C, which is what makes the
server stop generating. `openai` would wrap all of that in its own retries, exception classes
and pydantic models (+~0.3 s of imports), and speaks only to OpenAI's schema. httpx is imported
when a remote is used, never by `infer --help`.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .answer import Answerer, AnswerRequest, Stats
from .errors import (
    IncompleteAnswerError,
    Interrupted,
    RemoteError,
    RemoteModelNotFoundError,
    UsageError,
)
from .options import BY_NAME, Overrides

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = (429, 503)
RETRIES = 4  # after the first attempt: 5 in all
BACKOFF_S = 0.5  # the first wait without Retry-After; doubled each time
MAX_WAIT_S = 10.0  # one wait, Retry-After included, is never longer
DEFAULT_TIMEOUT_S = 300.0


def body(model: str, request: AnswerRequest) -> dict[str, Any]:
    """The streamed request for `request`: /v1/chat/completions' body, or with `raw`
    /v1/completions'. Only the options the user set are sent (each by its OpenAI name; top_k,
    min_p and the repeat options are llama.cpp's extensions, which infer serve and vLLM take
    too): the server's defaults hold for the rest."""
    if request.grammar:
        raise UsageError("a remote server takes no GBNF grammar: ask for JSON (response_format)")
    fields: dict[str, Any] = {"model": model}
    for name, value in request.overrides.given().items():
        fields[BY_NAME[name].openai or name] = value
    if request.max_tokens is not None:
        fields["max_tokens"] = request.max_tokens
    if request.stop:
        fields["stop"] = list(request.stop)
    if request.response_format is not None:
        fields["response_format"] = request.response_format
    if request.tools:
        fields["tools"] = list(request.tools)
        fields["tool_choice"] = request.tool_choice or "auto"
    if request.logprobs is not None:  # chat: a flag and a count; completions: the count
        if request.raw:
            fields["logprobs"] = request.logprobs
        else:
            fields.update(logprobs=True, top_logprobs=request.logprobs)
    fields.update(request.extra)
    if request.raw:
        fields["prompt"] = request.prompt
    else:
        fields["messages"] = [_wire_message(m) for m in request.messages]
    fields.update(stream=True, stream_options={"include_usage": True})
    return fields


_MIME = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp"}


def _wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as OpenAI's wire has it: media parts (runtime/media.py) become image_url parts
    with a data: URI, and input_audio parts."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    import base64

    from .media import check

    parts = []
    for item in content:
        if isinstance(item, dict) and item.get("type") == "media":
            media = item["media"]
            info = check(media)
            data = base64.b64encode(media.data).decode("ascii")
            if media.kind == "image":
                url = f"data:{_MIME[info.format]};base64,{data}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append(
                    {"type": "input_audio", "input_audio": {"data": data, "format": info.format}}
                )
        else:
            parts.append(item)
    return {**message, "content": parts}


class Remote:
    """A client of one OpenAI-compatible server at `url` (with or without the /v1 suffix).
    Use as a context manager; `answer()` streams, `models()` lists."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        retries: int = RETRIES,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.base = self.url if self.url.endswith("/v1") else self.url + "/v1"
        self.api_key, self.retries = api_key, retries
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout))

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def models(self) -> list[dict[str, Any]]:
        """The remote's /v1/models entries (each has at least an "id")."""
        with self.errors():
            response = self.send("GET", "/models", None)
            try:
                if response.status_code >= 400:
                    raise self.status_error(response, None)
                data = json.loads(response.read())
            except ValueError:
                raise RemoteError(self.url, "/v1/models did not answer JSON") from None
            finally:
                response.close()
        listing = data.get("data") if isinstance(data, dict) else None
        if not isinstance(listing, list):
            raise RemoteError(self.url, "/v1/models did not answer an OpenAI model list")
        return [m for m in listing if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def answerer(self, model: str) -> RemoteModel:
        """`model` on this server, as an Answerer."""
        return RemoteModel(self, model)

    # --- HTTP -----------------------------------------------------------------------------
    def send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        """The response (streamed, headers read), after up to `retries` retries of a 429/503
        that wait as its Retry-After says (bounded), else 0.5 s, 1 s, 2 s, ..."""
        waited = 0.0
        for attempt in range(self.retries + 1):
            request = self.client.build_request(method, self.base + path, json=body)
            response = self.client.send(request, stream=True)
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                if response.status_code in RETRY_STATUSES:
                    response.read()
                    response.close()
                    raise self.status_error(response, None, attempts=attempt + 1, waited=waited)
                return response
            wait = _retry_after(response) or BACKOFF_S * 2**attempt
            wait = min(wait, MAX_WAIT_S)
            response.close()
            time.sleep(wait)
            waited += wait
        raise AssertionError("unreachable")  # pragma: no cover

    def status_error(
        self,
        response: httpx.Response,
        model: str | None,
        *,
        attempts: int = 1,
        waited: float = 0.0,
    ) -> RemoteError:
        status = response.status_code
        said = _server_message(response)
        head = f"{status} {response.reason_phrase}".strip()
        if status in (401, 403):
            why = (
                "the API key was refused (wrong, expired or without access)"
                if self.api_key
                else "it needs an API key: give --api-key-file FILE, --api-key KEY or set "
                "INFER_API_KEY"
            )
            return RemoteError(self.url, f"{head}: {why}", status)
        if status == 404 and model is not None:
            try:
                available = [m["id"] for m in self.models()]
            except RemoteError:
                return RemoteError(
                    self.url, f"{head} for {response.request.url.path}: {said}", status
                )
            if model not in available:
                return RemoteModelNotFoundError(self.url, model, available)
        if status in RETRY_STATUSES:
            return RemoteError(
                self.url,
                f"{head} after {attempts} attempts over {waited:.1f} s: {said}; try again later",
                status,
            )
        if status >= 500:
            return RemoteError(self.url, f"the server failed: {head}: {said}", status)
        return RemoteError(self.url, f"the request was refused: {head}: {said}", status)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """httpx's exceptions as one-line RemoteErrors."""
        import httpx

        try:
            yield
        except httpx.TimeoutException:
            raise RemoteError(
                self.url, f"no response within {self.timeout:g} s (raise --timeout)"
            ) from None
        except httpx.ConnectError as e:
            raise RemoteError(self.url, _connect_failure(e, self.url)) from None
        except httpx.UnsupportedProtocol:
            raise RemoteError(self.url, "not an http:// or https:// URL") from None
        except httpx.InvalidURL as e:
            raise RemoteError(self.url, f"not a valid URL ({e})") from None
        except httpx.TransportError as e:
            raise RemoteError(self.url, f"the connection failed: {_cause(e)}") from None


class RemoteModel:
    """One model of a remote server, as an Answerer (runtime/answer.py): the server keeps the
    context window and the defaults, so window() is None and settings() only what was given."""

    def __init__(self, remote: Remote, model: str) -> None:
        self.remote, self.model, self.where = remote, model, remote.url

    def answer(self, request: AnswerRequest, cancel: threading.Event | None = None) -> RemoteAnswer:
        """The answer to `request`, streamed: iterate it for the pieces."""
        return RemoteAnswer(self.remote, self.model, request, cancel or threading.Event())

    def settings(self, overrides: Overrides) -> dict[str, Any]:
        return overrides.given()

    def window(self) -> None:
        return None

    def count(self, request: AnswerRequest) -> int:
        raise NotImplementedError("a remote counts its own tokens")

    def reset(self) -> None:
        """Nothing of ours is cached: the closed connection ended the answer."""


class RemoteAnswer:
    """Iterate for the answer's text pieces as they arrive; afterwards `.text` and `.stats`
    (a local answer's keys: the prompt's time is the wait for the first piece, which a remote
    does not split further; nothing loads here). Raises IncompleteAnswerError when the stream
    stops before `[DONE]`, Interrupted when `cancel` is set (the connection is closed either
    way: the server stops generating)."""

    def __init__(
        self, remote: Remote, model: str, request: AnswerRequest, cancel: threading.Event
    ) -> None:
        self.remote, self.model, self.request, self.cancel = remote, model, request, cancel
        self.text = ""
        self.stats = Stats()
        # OpenAI tool_calls, assembled from the stream's delta.tool_calls fragments
        self.tool_calls: list[dict[str, Any]] = []
        # each token's, as the stream's chunks carry them (when the request asked)
        self.logprobs: list[dict[str, Any]] | None = None if request.logprobs is None else []

    def __iter__(self) -> Iterator[str]:
        remote, chat = self.remote, not self.request.raw
        path = "/chat/completions" if chat else "/completions"
        start = time.monotonic()
        first = last = 0.0
        pieces, done = 0, False
        with remote.errors():
            response = remote.send("POST", path, body(self.model, self.request))
            try:
                if response.status_code >= 400:
                    response.read()
                    raise remote.status_error(response, self.model)
                for event in _events(response):
                    if event is None:
                        done = True
                        break
                    self._usage(event)
                    if chat:
                        _tool_fragments(event, self.tool_calls)
                    if self.logprobs is not None:
                        self.logprobs += _logprobs(event, chat)
                    piece = _piece(event, chat)
                    if piece:
                        last = time.monotonic()
                        first = first or last
                        pieces += 1
                        self.text += piece
                        yield piece
                    if self.cancel.is_set():
                        self.stats.finish_reason = "interrupted"
                        raise Interrupted(self.text)
            except Exception as e:
                if not _cut_short(e):  # a timeout, too, is said as one
                    raise
                raise IncompleteAnswerError(remote.url, self.text, _cause(e)) from None
            finally:
                response.close()
                self._times(start, first, last, pieces)
        if not done:
            raise IncompleteAnswerError(remote.url, self.text, "the connection closed")

    def _usage(self, event: dict[str, Any]) -> None:
        choices = event.get("choices") or []
        reason = (
            choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        )
        if isinstance(reason, str):
            self.stats.finish_reason = reason
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.stats.generated_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            self.stats.prompt_eval_tokens = self.stats.prompt_tokens - cached

    def _times(self, start: float, first: float, last: float, pieces: int) -> None:
        if first:
            self.stats.ttft_s = self.stats.prompt_s = first - start
            self.stats.generate_s = last - first
        if not self.stats.generated_tokens:  # no usage sent: one piece is about one token
            self.stats.generated_tokens = pieces


def _events(response: httpx.Response) -> Iterator[dict[str, Any] | None]:
    """The JSON payloads of a server-sent-events stream; None for `data: [DONE]`. An `error`
    payload (llama-server sends one when generation fails mid-stream) raises RemoteError."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, ": comments", event: and id: lines
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise RemoteError(
                str(response.url), "the stream sent an event that is not JSON"
            ) from None
        if not isinstance(event, dict):
            continue
        if "error" in event:
            raise RemoteError(str(response.url), f"the server failed mid-answer: {_said(event)}")
        yield event


def _logprobs(event: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    """A chunk's tokens in the chat shape ({token, logprob, bytes, top_logprobs}): a chat
    chunk's `logprobs.content`; a completion chunk's llama-server `content` list, else the
    entries built from OpenAI's `tokens`/`token_logprobs`/`top_logprobs` (no bytes there)."""
    choices = event.get("choices") or []
    lp = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    if not isinstance(lp, dict):
        return []
    content = lp.get("content")
    if isinstance(content, list):
        return [e for e in content if isinstance(e, dict)]
    if chat or not isinstance(lp.get("tokens"), list):
        return []
    tops = lp.get("top_logprobs") or []
    out = []
    values = lp.get("token_logprobs") or []
    # strict=False: another server's lists of unequal length give the tokens both have
    for i, (token, value) in enumerate(zip(lp["tokens"], values, strict=False)):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        alternatives = [{"token": t, "logprob": v, "bytes": None} for t, v in top.items()]
        out.append({"token": token, "logprob": value, "bytes": None, "top_logprobs": alternatives})
    return out


def _piece(event: dict[str, Any], chat: bool) -> str:
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    if chat:
        delta = choices[0].get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choices[0].get("text")
    return content if isinstance(content, str) else ""


def _tool_fragments(event: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    """A chunk's `delta.tool_calls` added to `calls`: a fragment with a new index starts a
    call (id, type, name); the others append to its arguments."""
    choices = event.get("choices") or []
    delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
    parts = delta.get("tool_calls") if isinstance(delta, dict) else None
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        index = part.get("index", len(calls))
        if not isinstance(index, int) or not 0 <= index <= len(calls):
            continue
        if index == len(calls):
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call, fn = calls[index], part.get("function") or {}
        if isinstance(part.get("id"), str):
            call["id"] += part["id"]
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                if isinstance(fn.get(key), str):
                    call["function"][key] += fn[key]


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form too), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _server_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        text = response.text.strip()
        return " ".join(text.split())[:200] or "(no message)"
    return _said(body) if isinstance(body, dict) else str(body)[:200]


def _said(body: dict[str, Any]) -> str:
    """The message of an OpenAI error body {"error": {"message": ...}} (or a bare string)."""
    error = body.get("error", body.get("detail", body))
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message).split())[:300]


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connect_failure(e: BaseException, url: str) -> str:
    """Why a connection failed, from the OSError under httpx's ConnectError."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or url
    for cause in _chain(e):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS failed: the certificate is not trusted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name '{host}' (DNS): is it spelt right?"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: is the server running and listening on that port?"
    return f"cannot connect: {_cause(e)}"


def _cause(e: BaseException) -> str:
    innermost = list(_chain(e))[-1]
    return str(innermost) or type(innermost).__name__


def _cut_short(e: BaseException) -> bool:
    """Whether `e` is the connection breaking off mid-stream (not a timeout)."""
    import httpx

    return isinstance(e, httpx.TransportError) and not isinstance(e, httpx.TimeoutException)


if TYPE_CHECKING:  # mypy checks here that a RemoteModel is an Answerer
    _ANSWERER: type[Answerer] = RemoteModel
