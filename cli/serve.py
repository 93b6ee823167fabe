"""`infer serve`: an OpenAI-compatible HTTP server over the named models (runtime/server/).
Safe by default: loopback only, a key required before listening anywhere else."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from infer.runtime.errors import UsageError

from . import output
from .options import (
    HARDWARE,
    OUTPUT,
    DeterministicOpt,
    DraftAlwaysOpt,
    DraftMaxOpt,
    DraftOpt,
    GpuLayersOpt,
    LoraOpt,
    NoPromptCacheOpt,
    ThreadsOpt,
    VerboseOpt,
)
from .rpc_server import RpcOpt
from .serve_limits import (
    HeaderTimeoutOpt,
    KeepAliveOpt,
    MaxConnectionsOpt,
    MaxHeaderSizeOpt,
    WriteTimeoutOpt,
    connection_limits,
)

if TYPE_CHECKING:
    from infer.runtime.server.app import HttpSettings
    from infer.runtime.server.backend import Backend, ServerConfig

SERVER = "Server"
SECURITY = "Security"
MAX_BODY = 8 * 1024 * 1024


class LogFormat(str, Enum):
    text = "text"
    json = "json"


ModelsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[MODEL]...",
        help="Models to load at start (aliases, .gguf paths, owner/repo[:QUANT]); a request may "
        "also name any other model in the cache, loaded on demand.",
        show_default=False,
    ),
]
HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        rich_help_panel=SERVER,
        help="Address to listen on. Anything but loopback needs an API key (or --insecure).",
    ),
]
PortOpt = Annotated[int, typer.Option("--port", rich_help_panel=SERVER, help="TCP port.")]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "--parallel",
        rich_help_panel=SERVER,
        help="Sequences decoded together per model (continuous batching); also the most `n` "
        "choices one request may ask for.",
    ),
]
QueueOpt = Annotated[
    int,
    typer.Option(
        "--queue",
        rich_help_panel=SERVER,
        help="Requests that may wait for a free sequence; beyond them: 503 with Retry-After.",
    ),
]
MaxModelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-models",
        rich_help_panel=SERVER,
        help="Models loaded at once; the least recently used one beyond is unloaded "
        "(default: 1 + the models named).",
        show_default=False,
    ),
]
AllowPullOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pull",
        rich_help_panel=SERVER,
        help="Let a request name a model that is not cached yet: the server downloads it. "
        "Off by default: such a request is a 404 naming `infer pull`.",
    ),
]
AnyModelNameOpt = Annotated[
    bool,
    typer.Option(
        "--any-model-name",
        rich_help_panel=SERVER,
        help="Answer a request naming a model this server cannot find with the first model "
        "named at start, as llama-server does. Off by default: such a request is a 404 (a "
        "request naming no model gets the first model either way).",
    ),
]
AllowDeleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-delete",
        rich_help_panel=SERVER,
        help="Let a client remove cached models (Ollama's DELETE /api/delete). Off by "
        "default: such a request is a 403.",
    ),
]
AllowImageUrlsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-image-urls",
        rich_help_panel=SERVER,
        help="Fetch the http(s) image URLs requests send (10 s and 20 MiB each). Off by "
        "default: the server then opens no connection a client asks for, and such a part is "
        "a 400 asking for a data: URI.",
    ),
]
SlotsOpt = Annotated[
    bool,
    typer.Option(
        "--slots/--no-slots",
        rich_help_panel=SERVER,
        help="Answer GET /slots, llama-server's slot monitor (what each sequence slot runs: "
        "token counts and sampling settings, never the text).",
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        rich_help_panel=SERVER,
        help="Never touch the network, not even to resolve names (also HF_HUB_OFFLINE=1).",
    ),
]
ShutdownOpt = Annotated[
    float,
    typer.Option(
        "--shutdown-timeout",
        rich_help_panel=SERVER,
        help="On SIGTERM/Ctrl-C: seconds running answers get to finish before they are cut.",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="INFER_API_KEY",
        rich_help_panel=SECURITY,
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health. Prefer "
        "--api-key-file or INFER_API_KEY: a command line is visible to other users.",
        show_default=False,
    ),
]
ApiKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        rich_help_panel=SECURITY,
        metavar="FILE",
        help="Read the API key from FILE (its first line).",
        show_default=False,
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        rich_help_panel=SECURITY,
        help="Allow a non-loopback --host without an API key: anyone who can reach the "
        "port can use the models.",
    ),
]
CorsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cors-origin",
        rich_help_panel=SECURITY,
        metavar="ORIGIN",
        help="Web pages that may call the server from a browser (repeatable): an ORIGIN "
        "such as https://chat.example.com, 'localhost' (pages on this machine and desktop "
        "apps: the default), '*' (every origin, as llama-server) or 'none' (no CORS headers).",
        show_default=False,
    ),
]
MaxBodyOpt = Annotated[
    int,
    typer.Option(
        "--max-body",
        rich_help_panel=SECURITY,
        metavar="BYTES",
        help="Largest request body accepted; larger: 413.",
    ),
]
CtxSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx-size",
        "-c",
        envvar="INFER_CTX_SIZE",
        rich_help_panel=HARDWARE,
        help="Context window per sequence, in tokens (default: the model's, capped so the "
        "KV cache of all --parallel sequences stays under 4 GiB).",
        show_default=False,
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        rich_help_panel=HARDWARE,
        help="Most tokens per llama.cpp batch (prompt chunks and generation steps together) "
        "[default: 512].",
        show_default=False,
    ),
]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        rich_help_panel=OUTPUT,
        case_sensitive=False,
        help="Access log on stderr: one text line or one JSON object per request.",
    ),
]
ServeStatsOpt = Annotated[
    bool,
    typer.Option(
        "--stats",
        rich_help_panel=OUTPUT,
        help="At start, print the backend, each model's offload split and slots (stderr).",
    ),
]


def serve(
    models: ModelsArg = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    parallel: ParallelOpt = 4,
    queue: QueueOpt = 64,
    max_models: MaxModelsOpt = None,
    allow_pull: AllowPullOpt = False,
    allow_delete: AllowDeleteOpt = False,
    any_model_name: AnyModelNameOpt = False,
    allow_image_urls: AllowImageUrlsOpt = False,
    slots: SlotsOpt = True,
    offline: OfflineOpt = False,
    shutdown_timeout: ShutdownOpt = 10.0,
    draft: DraftOpt = None,
    draft_max: DraftMaxOpt = None,
    draft_always: DraftAlwaysOpt = False,
    deterministic: DeterministicOpt = False,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    insecure: InsecureOpt = False,
    cors_origin: CorsOpt = None,
    max_body: MaxBodyOpt = MAX_BODY,
    max_connections: MaxConnectionsOpt = 1000,
    header_timeout: HeaderTimeoutOpt = 10.0,
    write_timeout: WriteTimeoutOpt = 60.0,
    keep_alive: KeepAliveOpt = 5.0,
    max_header_size: MaxHeaderSizeOpt = 64 * 1024,
    ctx_size: CtxSizeOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
    lora: LoraOpt = None,
    batch_size: BatchSizeOpt = None,
    no_prompt_cache: NoPromptCacheOpt = False,
    log_format: LogFormatOpt = LogFormat.text,
    stats: ServeStatsOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /v1/models, /health, /metrics) and Ollama's (/api/chat, /api/generate, /api/tags, ...), many
    clients decoded together."""
    from infer.runtime.server.app import HttpSettings
    from infer.runtime.server.cors import parse_origins
    from infer.runtime.server.security import is_loopback

    _check_numbers(port, parallel, queue, max_models, max_body, shutdown_timeout)
    key = _api_key(api_key, api_key_file)
    if not is_loopback(host) and key is None:
        if not insecure:
            raise UsageError(
                f"--host {host} is reachable from other machines: set an API key with "
                "--api-key, --api-key-file or INFER_API_KEY, or pass --insecure to serve "
                "without one"
            )
        output.warn(f"serving on {host} without an API key (--insecure)")
    settings = HttpSettings(
        host=host,
        api_key=key,
        cors=parse_origins(cors_origin),
        max_body=max_body,
        log_format=log_format.value,
        shutdown_timeout=shutdown_timeout,
        allow_pull=allow_pull and not offline,
        allow_delete=allow_delete,
        allow_image_urls=allow_image_urls and not offline,
        slots=slots,
        limits=connection_limits(
            max_connections, header_timeout, write_timeout, keep_alive, max_header_size
        ),
    )
    config = _server_config(
        models or [],
        parallel,
        queue,
        max_models,
        allow_pull,
        offline,
        ctx_size,
        threads,
        gpu_layers,
        batch_size,
        no_prompt_cache,
        verbose,
        rpc,
        lora,
    )
    config.any_name = any_model_name
    from infer.runtime.params import GenerateOptions

    GenerateOptions(draft_max=draft_max).validate()  # the one check of --draft-max
    config.draft, config.draft_max, config.draft_adapt = draft, draft_max, not draft_always
    if deterministic:
        config.load = replace(config.load, deterministic=True)
    _run(config, settings, port, stats)


def _run(config: ServerConfig, settings: HttpSettings, port: int, stats: bool) -> None:
    from infer.runtime.server.runner import bind, serve

    sock = bind(settings.host, port)  # before loading anything: a port in use fails at once
    backend = _backend(config)
    names = ", ".join(config.models) or "the cached models"

    def ready(url: str) -> None:
        if stats or config.load.rpc:  # with RPC servers: where each model's layers went
            for line in backend.describe():
                output.note(line)
        output.note(f"serving {names} on {url} (OpenAI API at {url}/v1)")

    with _graceful_signals():
        serve(backend, settings, port, on_ready=ready, sock=sock)
    output.note("stopped")


def _backend(config: ServerConfig) -> Backend:
    from infer.runtime.server.pool import ModelPool

    backend: Backend = ModelPool(config)
    return backend


@contextmanager
def _graceful_signals() -> Iterator[None]:
    """uvicorn catches SIGINT/SIGTERM (runner's server SIGHUP too) itself (stop accepting,
    drain, exit) and afterwards raises the signal again with the handler it found. The handlers
    found are these no-ops, not terminate_cleanly's (SIGTERM → exit 143) or Python's (Ctrl-C →
    KeyboardInterrupt): a server stopped on purpose exits 0."""

    def stopped(signum: int, frame: object) -> None:
        pass

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    signums = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.signal(s, stopped) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_numbers(
    port: int, parallel: int, queue: int, max_models: int | None, max_body: int, timeout: float
) -> None:
    checks = [
        (0 <= port <= 65535, f"--port must be between 0 and 65535 (got {port})"),
        (1 <= parallel <= 256, f"--parallel must be between 1 and 256 (got {parallel})"),
        (0 <= queue <= 100_000, f"--queue must be between 0 and 100000 (got {queue})"),
        (max_models is None or max_models >= 1, f"--max-models must be >= 1 (got {max_models})"),
        (max_body >= 1024, f"--max-body must be at least 1024 bytes (got {max_body})"),
        (0 <= timeout <= 86400, f"--shutdown-timeout must be 0 to 86400 seconds (got {timeout})"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _api_key(key: str | None, key_file: Path | None) -> str | None:
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise UsageError(f"--api-key-file {key_file}: {reason}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise UsageError(f"--api-key-file {key_file}: the file's first line is empty")
    if key is not None and (not key.strip() or not key.isprintable() or not key.isascii()):
        raise UsageError("the API key must be printable ASCII and not empty")
    return key.strip() if key is not None else None


def _server_config(
    models: list[str],
    parallel: int,
    queue: int,
    max_models: int | None,
    allow_pull: bool,
    offline: bool,
    ctx_size: int | None,
    threads: int | None,
    gpu_layers: int | None,
    batch_size: int | None,
    no_prompt_cache: bool,
    verbose: bool,
    rpc: str | None = None,
    lora: list[str] | None = None,
) -> ServerConfig:
    from infer.runtime.params import DEFAULT_BATCH, LoadOptions, parse_endpoints, parse_lora
    from infer.runtime.server.backend import ServerConfig

    load = LoadOptions(
        ctx_size=ctx_size,
        threads=threads,
        gpu_layers=gpu_layers,
        batch_size=batch_size or DEFAULT_BATCH,
        verbose=verbose,
        prompt_cache=not no_prompt_cache,
        rpc=parse_endpoints(rpc),
        lora=parse_lora(lora),  # the models named at start; others: their models.toml's
    ).validate()
    return ServerConfig(
        models=models,
        load=load,
        parallel=parallel,
        queue=queue,
        max_models=max_models,
        allow_pull=allow_pull,
        offline=offline,
    )
