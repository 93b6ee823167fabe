"""Running the app under uvicorn: bind the socket first (a port in use is one clear error),
start the backend in the background, announce readiness once the socket accepts AND the models
are loaded, and on SIGTERM/SIGINT/SIGHUP drain the backend while uvicorn stops accepting."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from ..errors import InferError
from .app import HttpSettings, Lifecycle, create_app
from .backend import Backend
from .connections import raise_open_files_limit, uvicorn_options


class ListenError(InferError):
    """The address cannot be listened on (in use, not this machine's, a privileged port)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hint = " (is another server running? choose another with --port)"
        reason = (
            "the address is already in use" + hint
            if e.errno == errno.EADDRINUSE
            else (e.strerror or str(e))
        )
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    name = f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}"


def serve(
    backend: Backend,
    settings: HttpSettings,
    port: int,
    *,
    on_ready: Callable[[str], None],
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. `on_ready(url)` runs once the socket accepts and the models
    are loaded. Raises ListenError, or the backend's start error after shutting down."""
    sock = sock or bind(settings.host, port)
    app = create_app(backend, settings)
    lifecycle: Lifecycle = app.state.lifecycle
    raise_open_files_limit(settings.limits)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
        server_header=False,
        **uvicorn_options(settings.limits),
    )
    server = _Server(config, lifecycle, lambda: on_ready(url_of(sock, settings.host)))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if lifecycle.start_error is not None:
        raise lifecycle.start_error


class _Server(uvicorn.Server):
    """uvicorn's server, which also announces readiness and starts the backend's drain as
    soon as shutdown begins (so running answers finish or are cut within --shutdown-timeout,
    rather than uvicorn waiting on their connections)."""

    def __init__(self, config: Any, lifecycle: Lifecycle, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self.lifecycle, self.announce = lifecycle, announce
        self.watcher: asyncio.Task[None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.watcher = asyncio.create_task(self._when_loaded())

    async def _when_loaded(self) -> None:
        task = self.lifecycle.start_task
        if task is not None:
            await asyncio.wait({task})
        if self.lifecycle.start_error is not None:
            self.should_exit = True
            return
        self.announce()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's (SIGINT, SIGTERM), and SIGHUP too: a closed terminal or a supervisor's
        hang-up drains the server like SIGTERM instead of ending it mid-answer."""
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        previous = signal.signal(hup, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(hup, previous)

    async def shutdown(self, sockets: Any = None) -> None:
        self.lifecycle.begin_drain()
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()
        await super().shutdown(sockets=sockets)
