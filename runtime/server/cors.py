"""Which web pages may call the server from a browser (CORS), as `--cors-origin` says.

    cors_middleware(parse_origins(values)) -> [Middleware] (none: no CORS headers at all)

The default is Ollama's: pages served from this machine (`http(s)://localhost`, `127.0.0.1`,
`0.0.0.0`, `[::1]`, any port) and desktop-app schemes (`app://`, `file://`, `tauri://`,
`vscode-webview://`, `vscode-file://`) may call it; a page from any other site gets no
`Access-Control-Allow-Origin`, so the browser keeps the answer from it. The values
`--cors-origin` takes, repeatable:

    localhost   that same local set (llama-server's keyword for it)
    *           every origin, reflected with credentials allowed (llama-server's default)
    none        no CORS headers at all (alone)
    ORIGIN      exactly this origin (e.g. https://chat.example.com); with `localhost` too, both

Starlette's CORSMiddleware does the protocol (its allow_origin_regex holds the local set). The
preflight answers as llama-server's does (server-http.cpp): methods "GET, POST, DELETE, OPTIONS",
credentials "true", the origin reflected; the headers allowed are those the preflight asks for,
where llama-server answers "*": a browser never lets "*" cover `Authorization` (Fetch spec), so
a page sending an API key would be refused by llama-server's answer and is let through by this
one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..errors import OptionError

# Ollama's defaults (envconfig: localhost, 127.0.0.1, 0.0.0.0 over http and https, any port,
# and the desktop schemes), and [::1], which llama-server's `localhost` keyword also takes.
LOCAL_ORIGINS = re.compile(
    r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:[0-9]{1,5})?"
    r"|(app|file|tauri|vscode-webview|vscode-file)://[^\s]*"
)
METHODS = ("GET", "POST", "DELETE", "OPTIONS")  # llama-server's list, in its order
LOCAL, ANY, NONE = "localhost", "*", "none"


@dataclass(frozen=True)
class CorsPolicy:
    """The origins a browser may call the server from."""

    local: bool = True  # the LOCAL_ORIGINS set
    any: bool = False  # every origin (reflected)
    origins: tuple[str, ...] = ()  # exact origins besides

    @property
    def enabled(self) -> bool:
        return self.local or self.any or bool(self.origins)


def parse_origins(values: Sequence[str] | None) -> CorsPolicy:
    """`--cors-origin` values (none given: the local set) as a policy; an OptionError naming
    `cors_origin` for `none` beside other values or an origin that is not scheme://host."""
    values = [v.strip() for v in values or []]
    if not values:
        return CorsPolicy()
    if NONE in values:
        if len(values) > 1:
            raise OptionError("cors_origin", f"'{NONE}' turns CORS off: give it alone")
        return CorsPolicy(local=False)
    if ANY in values:
        return CorsPolicy(local=False, any=True)
    exact = []
    for value in values:
        if value == LOCAL:
            continue
        scheme, sep, rest = value.partition("://")
        if not sep or not scheme or not rest or "/" in rest or any(c.isspace() for c in value):
            raise OptionError(
                "cors_origin",
                f"{value!r} is not an origin: give scheme://host[:port] (e.g. "
                f"https://chat.example.com), '{LOCAL}', '{ANY}' or '{NONE}'",
            )
        exact.append(value.rstrip("/"))
    return CorsPolicy(local=LOCAL in values, origins=tuple(dict.fromkeys(exact)))


def cors_middleware(policy: CorsPolicy) -> list[Middleware]:
    """The middleware that answers preflights and adds the CORS headers (none when off)."""
    if not policy.enabled:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=[ANY] if policy.any else list(policy.origins),
            allow_origin_regex=LOCAL_ORIGINS.pattern if policy.local else None,
            allow_methods=list(METHODS),
            allow_headers=["*"],  # what the preflight asks for, reflected (see above)
            allow_credentials=True,  # as llama-server; infer sets no cookies to send
            max_age=600,
        )
    ]
