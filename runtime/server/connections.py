"""What one TCP connection may cost the server: the limits a server reachable by others needs,
enforced where uvicorn meets the socket (its h11 protocol), before any request reaches the app.

uvicorn alone holds a connection as long as the client wants: a client may send its headers a
byte at a time (slowloris), stop sending a body half-way, or never read the answer it asked for,
and each such connection keeps a task, buffers and (for an answer) a decoding slot. uvicorn's own
`limit_concurrency` counts idle keep-alive connections and answers a plain-text 503 without
Retry-After, so it is not used; this protocol keeps four limits instead:

- connections: beyond `max_connections` open at once, a new connection's request is answered
  503 with Retry-After in its door's error shape (the app's `Admission` check, so the access log
  and /metrics count it) and the connection closed;
- reading a request: its headers must arrive within `header_timeout` seconds of the first byte
  (or of the connection), and its body may pause no longer than that between reads; otherwise
  the connection is closed. The header size itself is h11's `max_incomplete_event_size`;
- writing an answer: a client that takes none of the bytes waiting for it for `write_timeout`
  seconds is disconnected (a reset, which frees the kernel's buffers at once), which cancels
  its answer (answer.EventStream) and frees its slot. "Waiting" is the transport's write buffer,
  which holds what the kernel's send buffer has no room for; the stall is measured on it
  whatever filled it — a stream that outran its reader, or a whole answer (megabytes of embeddings)
  written in one piece, before or after the response completed and the connection was asked
  to close (asyncio's close() would otherwise wait for that buffer to drain, forever). Until
  then what waits is bounded: a stream's sends await below the transport's 64 KiB high-water
  mark, a whole answer is the size it already has in memory;
  (Linux lets the kernel's send buffer of one connection grow to 4 MiB; it is set to
  SEND_BUFFER instead, so that a thousand stalled readers cannot pin gigabytes of it.)
- idle keep-alive connections close after `keep_alive` seconds (uvicorn's timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import struct
from dataclasses import dataclass
from typing import Any, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .request_fields import ApiError
from .security import ASGIApp, Receive, Scope, Send, send_error

# The kernel's send buffer per connection. Ample for streamed text (256 KiB in flight covers a
# 100 ms round trip at 2.5 MB/s), and what a client that stops reading can make the kernel hold.
SEND_BUFFER = 256 * 1024

# The scope key that marks a request over the connection limit; security.Admission answers it.
OVER_LIMIT = "infer.over_connection_limit"


@dataclass(frozen=True)
class ConnectionLimits:
    """`infer serve`'s connection flags (docs/serve.md, "Limits")."""

    max_connections: int = 1000  # open at once; beyond: 503 + Retry-After, then closed
    header_timeout: float = 10.0  # seconds for a request's headers; longest pause in a body
    write_timeout: float = 60.0  # seconds a client may read nothing of its answer
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    max_header_size: int = 64 * 1024  # bytes of request line + headers; larger: 400


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol bound to `limits` (uvicorn.Config(http=...) takes a class)."""
    return type("GuardedH11Protocol", (_Guarded,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """The uvicorn.Config arguments that carry `limits`."""
    return {
        "http": protocol_class(limits),
        "timeout_keep_alive": max(1, round(limits.keep_alive)),
        "h11_max_incomplete_event_size": limits.max_header_size,
    }


def raise_open_files_limit(limits: ConnectionLimits, spare: int = 256) -> None:
    """Lift the soft open-files limit towards the hard one so that `max_connections` sockets
    (plus model files, logs, the listening socket: `spare`) fit; a shell's default soft limit
    of 1024 would otherwise turn the 1001st connection into accept() errors."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = limits.max_connections + spare
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class _Guarded(H11Protocol):
    limits: ConnectionLimits  # set by protocol_class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._written = 0  # bytes handed to the transport
        self._drained = 0  # of those, how many had left its buffer at the last progress seen
        self._progress_at = 0.0  # loop time of that progress

    # -- the connection limit ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn writes to the transport directly: a counting wrapper is where every write,
        # whole answer or stream piece, can start the stall watch.
        super().connection_made(cast(asyncio.Transport, _CountingTransport(transport, self)))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if len(self.connections) > self.limits.max_connections:
            # Answered once its request line is read, in its door's shape, then closed.
            self.app = _mark_over_limit(self.app)
        self._arm_read(fresh=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read()
        self._cancel_write()
        super().connection_lost(exc)

    # -- reading a request -------------------------------------------------------------------
    def handle_events(self) -> None:
        super().handle_events()
        self._arm_read(fresh=False)

    def _arm_read(self, *, fresh: bool) -> None:
        """Headers: one deadline from the first byte (a trickle does not extend it). Body: a
        deadline per pause. While the app answers, or the connection idles between requests
        (uvicorn's keep-alive timer's turn), none."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._cancel_read()
            self._read_timer = self.loop.call_later(self.limits.header_timeout, self._read_late)
        elif state is h11.IDLE and (fresh or self._between_requests_with_data()):
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(self.limits.header_timeout, self._read_late)
        else:
            self._cancel_read()

    def _between_requests_with_data(self) -> bool:
        """A request has begun arriving (bytes are buffered in h11) on a kept-alive connection."""
        buffered = self.conn.trailing_data[0]
        return bool(buffered) and (self.cycle is None or self.cycle.response_complete)

    def _read_late(self) -> None:
        self._read_timer = None
        if self.flow.read_paused:  # the app is slow to take the body: not the client's fault
            self._read_timer = self.loop.call_later(self.limits.header_timeout, self._read_late)
            return
        if self.cycle is not None and self.cycle.response_started:
            return
        self.transport.close()

    def _cancel_read(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request. Headers over --max-header-size are told apart (431, naming
        the flag, in JSON) from other malformed requests (uvicorn's plain 400)."""
        if len(self.conn.trailing_data[0]) <= self.limits.max_header_size:
            super().send_400_response(msg)
            return
        limit = self.limits.max_header_size
        error = ApiError(
            431,
            f"the request's headers are larger than this server's limit of {limit} bytes "
            "(--max-header-size)",
            code="request_header_fields_too_large",
        )
        body = json.dumps(error.body()).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    # -- writing an answer -------------------------------------------------------------------
    def wrote(self, size: int) -> None:
        """The transport took `size` bytes; what the kernel had no room for waits in its buffer,
        and from then on the watch runs until that buffer is empty."""
        self._written += size
        if self._write_timer is not None:
            return
        buffered = self.transport.get_write_buffer_size()
        if buffered:
            self._drained = self._written - buffered
            self._progress_at = self.loop.time()
            self._write_timer = self.loop.call_later(self._write_tick(), self._check_write)

    def _write_tick(self) -> float:
        # a quarter of the limit: a stall is cut between 1 and 1.25 times --write-timeout
        return self.limits.write_timeout / 4

    def _check_write(self) -> None:
        """Progress is bytes leaving the buffer (for the kernel, as the client reads), counted
        from what was written minus what is still buffered — the buffer's size alone can
        stay level while a client reads as fast as the answer is written."""
        self._write_timer = None
        buffered = self.transport.get_write_buffer_size()
        if not buffered:
            return  # all handed to the kernel: the next write that is held back re-arms
        drained = self._written - buffered
        now = self.loop.time()
        if drained > self._drained:
            self._drained, self._progress_at = drained, now
        elif now - self._progress_at >= self.limits.write_timeout:
            self._write_late()
            return
        self._write_timer = self.loop.call_later(self._write_tick(), self._check_write)

    def _write_late(self) -> None:
        """The client took nothing for write_timeout: reset the connection. SO_LINGER 0 makes
        the close a reset, so the kernel drops what it still holds for this client instead of
        keeping an orphaned socket to deliver it; connection_lost then tells the app the client
        is gone, which cancels the answer."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _cancel_write(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None


class _CountingTransport:
    """The connection's transport as uvicorn sees it: every call passes through, and each write
    is reported to the protocol's stall watch."""

    def __init__(self, transport: asyncio.Transport, protocol: _Guarded) -> None:
        self._transport, self._protocol = transport, protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)
        self._protocol.wrote(len(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _mark_over_limit(app: Any) -> Any:
    async def over_limit(scope: Any, receive: Any, send: Any) -> None:
        scope[OVER_LIMIT] = True
        await app(scope, receive, send)

    return over_limit


class Admission:
    """ASGI middleware (inside the access log, so the refusal is logged and counted): a request
    that came on a connection over the limit is answered 503 with Retry-After, in the error
    shape of the door it asked (OpenAI's, Anthropic's, Ollama's), and its connection closed."""

    def __init__(self, app: ASGIApp, retry_after_s: int = 1) -> None:
        self.app, self.retry_after_s = app, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get(OVER_LIMIT):
            await self.app(scope, receive, send)
            return
        error = ApiError(
            503,
            "the server has too many open connections (--max-connections); retry shortly",
            code="overloaded",
            type="server_error",
            headers={"Retry-After": str(self.retry_after_s), "Connection": "close"},
        )
        await send_error(send, error, path=scope["path"])
