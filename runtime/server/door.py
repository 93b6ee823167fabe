"""What a generation door does with a request before its protocol's own work, in one place:

    body, parsed = await door.read(request, record, protocol.parse)   # ApiError on a refusal
    job = await door.submit(parsed, record, "input")                  # the backend's, mapped

`read`: the body read within the size limit and parsed as JSON, the door's parser run on it
(in a worker thread when it may fetch image URLs: media_parts.parse), the model recorded for
the access log, and images or audio refused with a 400 naming the part when the model takes
none (no projector, or one without that encoder). `submit`: the backend's refusal (unknown
model, overloaded...) as the ApiError app.py's `backend_error` makes of it, naming the door's
prompt field. Every refusal is an `ApiError`; each door renders it in its own error shape, and
a client gone mid-body (`security.ClientGone`) is left to the door too. The chat door (app.py)
reads completions without media, so it calls `refuse_media` alone; `BackendError` is the type
of the mapping every routes module is handed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

from . import media_parts
from .access_log import LogRecord
from .backend import Backend, Job, TextRequest
from .media_parts import NO_URLS, MediaPolicy
from .request_fields import ApiError, invalid
from .security import parse_json, read_body

# app.backend_error: a backend's exception as the ApiError it deserves (handed in, as app.py
# imports the doors).
BackendError = Callable[[Exception, LogRecord, str], ApiError]


class Parsed(Protocol):
    """What a door's parser returns: the model named and the backend's request."""

    @property
    def model(self) -> str: ...

    @property
    def request(self) -> TextRequest: ...


P = TypeVar("P", bound=Parsed)


def refuse_media(backend: Backend, parsed: Parsed) -> None:
    """Images or audio for a model that takes none: a 400 naming the message part."""
    refused = media_parts.refused(backend, parsed.model, parsed.request.messages)
    if refused:
        raise invalid(*refused)


@dataclass(frozen=True)
class Door:
    """A door's server-wide settings: the backend, the body limit, app.py's mapping of backend
    errors, and what media a request may bring (--allow-image-urls)."""

    backend: Backend
    max_body: int
    backend_error: BackendError
    media: MediaPolicy = NO_URLS

    async def read(
        self, request: Request, record: LogRecord, parse: Callable[[Any, MediaPolicy], P]
    ) -> tuple[Any, P]:
        """The JSON body and what `parse` made of it, its media checked against the model."""
        body = parse_json(await read_body(request.receive, request.headers, self.max_body))
        parsed = await media_parts.parse(parse, body, self.media)
        record.model = parsed.model
        refuse_media(self.backend, parsed)
        return body, parsed

    async def submit(self, parsed: Parsed, record: LogRecord, param: str) -> Job:
        """The request handed to the backend, timed from here in the access log."""
        record.started = time.monotonic()
        try:
            return await self.backend.submit(parsed.model, parsed.request)
        except Exception as e:
            raise self.backend_error(e, record, param) from None
