"""One access-log line per request (text or JSON), the request id, and the last line of
defence: an exception that escapes everything below becomes a 500 naming the request id, one
log line, and a server that keeps running."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .backend import REQUEST_ID
from .metrics import Metrics
from .request_fields import ApiError
from .security import ASGIApp, Message, Receive, Scope, Send, send_error

SCOPE_KEY = "infer.log"


@dataclass
class LogRecord:
    """What the endpoints learn about a request, for its log line and the metrics."""

    request_id: str
    method: str
    path: str
    client: str
    started: float  # time.monotonic()
    status: int = 0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    generation_s: float | None = None  # first token to last
    error: str | None = None  # a bug's one-line description
    disconnected: bool = False

    def fields(self) -> dict[str, Any]:
        total_ms = (time.monotonic() - self.started) * 1000
        ttft_ms = None if self.ttft_s is None else round(self.ttft_s * 1000, 1)
        out: dict[str, Any] = {
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.completion_tokens,
            "ttft_ms": ttft_ms,
            "total_ms": round(total_ms, 1),
        }
        if self.disconnected:
            out["disconnected"] = True
        if self.error:
            out["error"] = self.error
        return out

    def text(self) -> str:
        f = self.fields()
        path = f["path"].encode("unicode_escape").decode("ascii").replace('"', "%22")
        parts = [f["time"], f["client"], f'"{f["method"]} {path}"', str(f["status"])]
        if self.model is not None:
            model = json.dumps(self.model, ensure_ascii=True)
            parts += [
                f"model={model}",
                f"prompt={self.prompt_tokens}",
                f"generated={self.completion_tokens}",
                f"ttft_ms={f['ttft_ms'] if f['ttft_ms'] is not None else '-'}",
            ]
        parts += [f"total_ms={f['total_ms']}", f"id={self.request_id}"]
        if self.disconnected:
            parts.append("client-disconnected")
        if self.error:
            parts.append("error=" + json.dumps(self.error, ensure_ascii=True))
        return " ".join(parts)


def canonical(name: bytes) -> bytes:
    """A header name as HTTP/1.1 servers send it (llama-server, nginx, Go's net/http):
    `access-control-allow-origin` → `Access-Control-Allow-Origin`. Names are case-insensitive,
    but clients that keep headers in a plain dict (llama.cpp's own server tests do) read them
    case-sensitively, in this form; starlette writes them lowercased."""
    return b"-".join(part[:1].upper() + part[1:] for part in bytes(name).split(b"-"))


def record_of(scope: Scope) -> LogRecord:
    record = scope.get(SCOPE_KEY)
    assert isinstance(record, LogRecord), "AccessLog must wrap the app"
    return record


class AccessLog:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, log: Callable[[str], None], fmt: str = "text"
    ) -> None:
        self.app, self.metrics, self.log, self.json = app, metrics, log, fmt == "json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = LogRecord(
            request_id="req_" + secrets.token_hex(8),
            method=scope.get("method", ""),
            path=scope.get("path", ""),
            client=client[0] if client else "-",
            started=time.monotonic(),
        )
        scope[SCOPE_KEY] = record
        REQUEST_ID.set(record.request_id)
        request_id_header = (b"X-Request-Id", record.request_id.encode())

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                named = [(canonical(k), v) for k, v in message.get("headers", [])]
                message = {**message, "headers": [*named, request_id_header]}
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except Exception as e:  # a bug below: the client gets a 500, the server keeps going
            record.error = record.error or f"{type(e).__name__}: {e}"
            if record.status == 0:
                error = ApiError(
                    500, f"internal server error (request id {record.request_id}; see the log)"
                )
                with contextlib.suppress(OSError):
                    await send_error(logged_send, error)
        finally:
            self._finish(record)

    def _finish(self, record: LogRecord) -> None:
        self.metrics.record(
            record.status,
            record.prompt_tokens,
            record.completion_tokens,
            record.ttft_s,
            record.generation_s,
        )
        with contextlib.suppress(OSError, ValueError):  # stderr gone: the answer still counts
            self.log(json.dumps(record.fields()) if self.json else record.text())
