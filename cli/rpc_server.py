"""`infer rpc-server`: lend this machine's CPU or GPU memory to a model loaded elsewhere, through
llama.cpp's RPC backend (runtime/llama/rpc.py); and `--rpc`, the option that uses such servers."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from infer.runtime.errors import UsageError

from . import output
from .options import HARDWARE, ThreadsOpt

if TYPE_CHECKING:
    import threading

    from infer.runtime.llama.rpc import RpcServer

RPC = "RPC server"
DEFAULT_PORT = 50052

RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        rich_help_panel=HARDWARE,
        metavar="HOST:PORT[,...]",
        help="llama.cpp RPC servers (`infer rpc-server` on other machines) that take the "
        "offloaded layers, split by their free memory.",
        show_default=False,
    ),
]


def rpc_server(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            rich_help_panel=RPC,
            help="IPv4 address to listen on. The protocol has no authentication: anything but "
            "loopback lets every machine that reaches the port use this one's memory and CPU.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", rich_help_panel=RPC, help="TCP port.")
    ] = DEFAULT_PORT,
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            rich_help_panel=RPC,
            metavar="NAME",
            help="A device to lend (CPU, CUDA0…; repeat or comma-separate). Default: every GPU, "
            "or the CPU on a machine without one.",
            show_default=False,
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache",
            rich_help_panel=RPC,
            help="Keep large tensors in a local file cache (infer's cache dir, rpc/), so a model "
            "loaded again is not sent over the network again.",
        ),
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Serve this machine's CPU or GPU memory to `infer run/chat/serve/bench/perplexity --rpc`
    elsewhere (llama.cpp's RPC server). One client at a time; stop with Ctrl-C."""
    from infer.runtime.llama.rpc import RpcServer
    from infer.runtime.params import check_threads, physical_cores

    host = _ipv4(host)
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535 (got {port})")
    n_threads = check_threads(threads) if threads is not None else physical_cores()
    if host != "127.0.0.1":
        output.warn(
            f"listening on {host}: llama.cpp's RPC protocol has no authentication or "
            "encryption, so anyone who can reach this port can use this machine's memory and "
            "CPU and read what runs here. Never expose it to an open network; keep it on a "
            "trusted LAN or behind a firewall."
        )
    names = [n.strip() for d in device or [] for n in d.split(",") if n.strip()]
    server = RpcServer(host, port, n_threads, names)
    cache_dir = _cache_dir() if cache else None
    for d in server.devices:
        output.note(
            f"lending {d.name} ({d.description}, {output.human_size(d.free)} free of "
            f"{output.human_size(d.total)})"
        )
    output.note(
        f"RPC server on {host}:{port}, {n_threads} threads"
        + (f", tensor cache in {cache_dir}" if cache_dir else "")
        + f"; use it with --rpc {host}:{port} (stop with Ctrl-C)"
    )
    # llama.cpp's server prints its own lines ("Accepted client connection") with printf: onto
    # stderr with the rest, as stdout carries nothing but answers.
    sys.stdout.flush()
    os.dup2(2, 1)
    _wait(server, server.start(cache_dir))


def _wait(server: RpcServer, thread: threading.Thread) -> None:
    """Until llama.cpp's server gives up (exit 1) or a signal ends it (130, 143)."""
    from infer.runtime.errors import Terminated

    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        _leave(server, 130, "stopped")
    except Terminated as e:
        _leave(server, e.exit_code, "stopped")
    _leave(server, 1, "error: llama.cpp's RPC server stopped (see its message above)")


def _leave(server: RpcServer, code: int, message: str) -> None:
    output.say(f"\ninfer: {message}" if code == 130 else f"infer: {message}")
    sys.stderr.flush()
    server.leave(code)


def _ipv4(host: str) -> str:
    """llama.cpp's server binds IPv4 addresses only (inet_addr); "localhost" is loopback."""
    import ipaddress

    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise UsageError(
            f"--host {host!r}: llama.cpp's RPC server listens on an IPv4 address "
            "(e.g. 127.0.0.1, 0.0.0.0 or this machine's LAN address)"
        ) from None


def _cache_dir() -> str:
    from infer.runtime.paths import cache_dir

    path = cache_dir() / "rpc"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
