"""`infer serve`'s connection limits (docs/serve.md, "Limits"): the flags, their checks, and
the runtime's ConnectionLimits they become. Kept apart from serve.py, which holds the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from infer.runtime.errors import UsageError

if TYPE_CHECKING:
    from infer.runtime.server.connections import ConnectionLimits

SECURITY = "Security"  # the help panel, as serve.py's

MaxConnectionsOpt = Annotated[
    int,
    typer.Option(
        "--max-connections",
        rich_help_panel=SECURITY,
        help="Open connections at once (idle keep-alive ones included); a request on one more "
        "is answered 503 with Retry-After and its connection closed.",
    ),
]
HeaderTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--header-timeout",
        rich_help_panel=SECURITY,
        metavar="SECONDS",
        help="Time a client gets to send a request's headers, and the longest pause in its "
        "body; then the connection is closed (slowloris).",
    ),
]
WriteTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--write-timeout",
        rich_help_panel=SECURITY,
        metavar="SECONDS",
        help="Time a client may read nothing of its answer while the server waits to write; "
        "then it is disconnected and its answer cancelled.",
    ),
]
KeepAliveOpt = Annotated[
    float,
    typer.Option(
        "--keep-alive",
        rich_help_panel=SECURITY,
        metavar="SECONDS",
        help="Time an idle keep-alive connection stays open.",
    ),
]
MaxHeaderSizeOpt = Annotated[
    int,
    typer.Option(
        "--max-header-size",
        rich_help_panel=SECURITY,
        metavar="BYTES",
        help="Largest request line plus headers accepted; larger: 431 and the connection closed.",
    ),
]


def connection_limits(
    connections: int, header_s: float, write_s: float, keep_alive_s: float, header_size: int
) -> ConnectionLimits:
    """The connection flags, checked (a UsageError naming the flag), as the server's limits."""
    from infer.runtime.server.connections import ConnectionLimits

    checks = [
        (
            1 <= connections <= 1_000_000,
            f"--max-connections must be 1 to 1000000 (got {connections})",
        ),
        (0.1 <= header_s <= 3600, f"--header-timeout must be 0.1 to 3600 seconds (got {header_s})"),
        (0.1 <= write_s <= 86400, f"--write-timeout must be 0.1 to 86400 seconds (got {write_s})"),
        (1 <= keep_alive_s <= 3600, f"--keep-alive must be 1 to 3600 seconds (got {keep_alive_s})"),
        (
            4096 <= header_size <= 16 * 1024 * 1024,
            f"--max-header-size must be 4096 to 16777216 bytes (got {header_size})",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return ConnectionLimits(connections, header_s, write_s, keep_alive_s, header_size)
