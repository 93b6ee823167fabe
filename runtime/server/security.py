"""Safe by default: the Host allow-list on loopback (DNS rebinding), the API key, the bounded
request body. Pure ASGI middleware, so streamed answers pass through untouched."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .anthropic_protocol import error_body
from .request_fields import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = {"/health"}  # answered without the API key (load balancers, container probes)


def is_loopback(host: str) -> bool:
    """Whether an address to bind (or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def loopback_host_header(value: str) -> bool:
    """`localhost`, `127.0.0.1`, `[::1]`, each with or without `:port`; nothing else (an empty
    or port-only Host is what slipped past Ollama's check)."""
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
        return bool(name) and ":" in name and is_loopback(name)
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return False
    return bool(name) and is_loopback(name)


async def send_error(
    send: Send, error: ApiError, extra: dict[str, str] | None = None, path: str = ""
) -> None:
    """`error` in the shape of the door `path` belongs to: Anthropic's, Ollama's
    (`{"error": "..."}`) or OpenAI's."""
    if path.startswith("/v1/messages"):
        shaped = error_body(error)
    elif path.startswith("/api/") or path == "/":
        shaped = {"error": error.message}
    else:
        shaped = error.body()
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for k, v in {**error.headers, **(extra or {})}.items():
        headers.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class HostCheck:
    """While the server listens on loopback only, answer only requests whose Host header names
    loopback: a web page on evil.example whose name re-resolves to 127.0.0.1 then gets a 403."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app, self.enabled = app, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http":
            host = _header(scope, b"host")
            if host is None or not loopback_host_header(host.strip()):
                error = ApiError(
                    403,
                    "this server answers only requests addressed to localhost (Host header "
                    f"{host!r}); start it with --host to serve other names",
                    code="host_not_allowed",
                )
                await send_error(send, error, path=scope["path"])
                return
        await self.app(scope, receive, send)


class ApiKeyCheck:
    """`Authorization: Bearer KEY` (or `x-api-key: KEY`, as Anthropic's clients send it),
    compared in constant time; /health stays open."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = (_header(scope, b"authorization") or "").strip().partition(" ")
        given = token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
        given = given or (_header(scope, b"x-api-key") or "").strip().encode("latin-1")
        if not hmac.compare_digest(given, self.key):
            message = (
                "missing API key: send 'Authorization: Bearer KEY'"
                if not given
                else "incorrect API key provided"
            )
            error = ApiError(401, message, code="invalid_api_key", type="invalid_request_error")
            await send_error(send, error, {"www-authenticate": "Bearer"}, scope["path"])
            return
        await self.app(scope, receive, send)


async def read_body(receive: Receive, headers: Any, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes `limit` bytes: a declared
    Content-Length over it is refused before reading, a chunked body once it gets there — never
    buffered whole first."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes (--max-body)",
        code="request_too_large",
        headers={"Connection": "close"},  # the rest of the body is not read
    )


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ApiError(400, f"the request body is not valid JSON: {reason}") from None
