"""`infer bench MODEL --remote URL` (or INFER_REMOTE): the server's speed measured over its
OpenAI API (runtime/tools/bench_remote.py), with the client and flags of `infer run --remote`.
cli/bench.py prints and records the result as it does a local one."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import Interrupted

from .remote import on_command_line
from .remote import remote_url as checked_url
from .remote_list import RemoteFlags, connect

if TYPE_CHECKING:
    from infer.runtime.answer import Stats
    from infer.runtime.remote import RemoteModel
    from infer.runtime.tools.bench import BenchResult, Progress

# What the local bench sweeps or loads with: the server there chose those for itself.
LOCAL_ONLY = ("threads", "gpu_layers", "ctx_size", "batch_size", "rpc", "lora", "verbose")


def remote_url(args: dict[str, Any]) -> str | None:
    """The remote to measure (flags checked as `infer run --remote` checks them); None for a
    local bench."""
    return checked_url(args.get("remote"), LOCAL_ONLY, on_command_line(args["ctx"]))


def bench_remote(url: str, args: dict[str, Any], progress: Progress) -> BenchResult:
    """One warm-up request, then `-r` timed ones."""
    from infer.runtime.tools import bench_remote as rbr

    model: str = args["model"]
    flags = RemoteFlags(url, args.get("api_key"), args.get("api_key_file"), args.get("timeout"))
    with connect(url, flags) as remote:
        answerer = remote.answerer(model)
        return rbr.run_remote_bench(
            lambda prompt, max_tokens: _ask(answerer, prompt, max_tokens),
            url,
            model,
            args["n_prompt"],
            args["n_gen"],
            args["reps"],
            progress=progress,
        )


def _ask(answerer: RemoteModel, prompt: str, max_tokens: int) -> Stats:
    """One streamed completion, read to its end; Ctrl-C closes the connection (the server
    stops generating)."""
    from infer.runtime.tools.bench_remote import request

    answer = answerer.answer(request(prompt, max_tokens))
    pieces = iter(answer)
    try:
        for _ in pieces:
            pass
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        if isinstance(pieces, Generator):  # RemoteAnswer's is: closing it closes the stream
            pieces.close()
    return answer.stats
