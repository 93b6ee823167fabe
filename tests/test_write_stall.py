"""The write-stall watch of `infer serve`'s connections (runtime/server/connections.py) on a
transport whose buffer drains only when the test says so: the cases a real socket cannot stage
on demand — bytes held back below the transport's high-water mark with nothing more written, a
reader that stops after the buffer had drained below its low-water mark, a slow reader that
never lets the buffer empty but keeps taking bytes. tests/test_connections.py shows the same
watch on real sockets (an unread 3 MB answer reset). Loop time is real but short: the limits
are fractions of a second and the waits several times them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import uvicorn
from uvicorn.server import ServerState

from infer.runtime.server.connections import ConnectionLimits, uvicorn_options

LIMIT = 0.2  # --write-timeout under test, seconds


class HeldTransport:
    """A transport that keeps every byte written until `drain` (the client reading)."""

    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def drain(self, n: int) -> None:
        self.buffered = max(0, self.buffered - n)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closing = True  # asyncio's close() waits for the buffer to drain

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


def _connection() -> tuple[Any, HeldTransport]:
    limits = ConnectionLimits(write_timeout=LIMIT)
    config = uvicorn.Config(_app, lifespan="off", **uvicorn_options(limits))
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = HeldTransport()
    protocol.connection_made(cast(asyncio.Transport, transport))
    return protocol, transport


def test_bytes_held_below_the_high_water_mark_are_cut() -> None:
    """1 KiB the kernel had no room for, far below the 64 KiB that pauses the writer, then
    nothing more: the old pause_writing timer never started for it."""

    async def scenario() -> bool:
        protocol, transport = _connection()
        protocol.transport.write(b"x" * 1024)
        await asyncio.sleep(LIMIT * 10)
        protocol.connection_lost(None)
        return transport.aborted

    assert asyncio.run(scenario())


def test_a_reader_that_stops_after_the_buffer_went_low_is_cut_even_after_close() -> None:
    """The answer completed and the connection was asked to close (keep-alive ran out), the
    client took most of it and then stopped: the rest is not kept forever."""

    async def scenario() -> bool:
        protocol, transport = _connection()
        protocol.transport.write(b"x" * 3_000_000)
        transport.drain(2_990_000)
        protocol.transport.close()
        await asyncio.sleep(LIMIT * 10)
        protocol.connection_lost(None)
        return transport.aborted

    assert asyncio.run(scenario())


def test_a_slow_reader_that_keeps_taking_bytes_is_not_cut() -> None:
    """A reader slower than the answer: the buffer never empties (the writer keeps it full)
    but bytes leave it all the time, for many times the limit."""

    async def scenario() -> bool:
        protocol, transport = _connection()
        for _ in range(100):  # 100 x 0.02 s = 10 x LIMIT
            protocol.transport.write(b"x" * 2000)
            transport.drain(1000)
            await asyncio.sleep(LIMIT / 10)
        aborted = transport.aborted
        protocol.connection_lost(None)
        return aborted

    assert not asyncio.run(scenario())


def test_a_buffer_that_empties_stops_the_watch() -> None:
    """All taken: nothing to cut, however long the connection then stays (keep-alive's turn);
    a later write that is held back starts the watch again."""

    async def scenario() -> tuple[bool, bool]:
        protocol, transport = _connection()
        protocol.transport.write(b"x" * 5000)
        transport.drain(5000)
        await asyncio.sleep(LIMIT * 10)
        first = transport.aborted
        protocol.transport.write(b"y" * 10)
        await asyncio.sleep(LIMIT * 10)
        protocol.connection_lost(None)
        return first, transport.aborted

    assert asyncio.run(scenario()) == (False, True)
