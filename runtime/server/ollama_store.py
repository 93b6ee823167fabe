"""/api/pull and /api/delete over infer's model store: a pull's progress as Ollama's status
objects (`{"status": "pulling <file>", "digest", "total", "completed"}` … `{"status":
"success"}`), and a removal as `infer rm` does it. The routes allow either only when `infer
serve` was started with --allow-pull / --allow-delete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import InferError, NotInCacheError
from .ollama_protocol import OllamaError

REPORT_EVERY_S = 0.5  # progress objects per file at most this often (and at its end)


class _Progress:
    """A PullProgress that hands Ollama's status objects to the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.loop, self.queue = loop, queue
        self.file, self.total, self.done, self.last = "", 0, 0, 0.0

    def put(self, payload: dict[str, Any] | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, payload)

    def note(self, message: str) -> None:
        self.put({"status": message})

    def start(self, filename: str, total: int, done: int) -> None:
        self.file, self.total, self.done, self.last = filename, total, done, 0.0
        self._report()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if time.monotonic() - self.last >= REPORT_EVERY_S:
            self._report()

    def finish(self) -> None:
        self._report()

    def _report(self) -> None:
        self.last = time.monotonic()
        status = f"pulling {self.file}"
        self.put(
            {"status": status, "digest": self.file, "total": self.total, "completed": self.done}
        )


async def pull_lines(ref: str) -> AsyncIterator[dict[str, Any]]:
    """The pull of `ref` (a no-op for a cached model) as Ollama's status objects; a failure
    is the last object, `{"error": ...}`."""
    from ..models.resolve import ensure_local

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    progress = _Progress(loop, queue)
    yield {"status": "pulling manifest"}

    def work() -> None:
        try:
            ensure_local(ref, progress=progress, offline=False)
        except InferError as e:
            progress.put({"error": str(e)})
        finally:
            progress.put(None)

    task = asyncio.create_task(asyncio.to_thread(work))
    failed = False
    while (item := await queue.get()) is not None:
        failed = failed or "error" in item
        yield item
    await task
    if not failed:
        yield {"status": "verifying sha256 digest"}
        yield {"status": "success"}


def remove(ref: str) -> None:
    """Remove a model from the store as `infer rm` does; OllamaError 404 when it is not there."""
    from ..models import hub_cache, quantized_store
    from ..models.resolve import hub_target, quantized_target

    try:
        local = quantized_target(ref)
        if local is not None:
            quantized_store.remove(local)
            return
        hub_ref, _ = hub_target(ref)
        m = hub_cache.find(hub_ref) or hub_cache.find_damaged(hub_ref)
        if m is None:
            raise NotInCacheError(f"'{ref}' is not in the cache (GET /api/tags lists it)")
        hub_cache.remove(m)
    except NotInCacheError as e:
        raise OllamaError(404, str(e)) from None
    except InferError as e:
        raise OllamaError(400, str(e)) from None
