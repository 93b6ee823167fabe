"""`infer perplexity`: how well a model predicts a text (lower is better), as llama-perplexity
measures it. The value on stdout, progress on stderr."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from infer.runtime.errors import UsageError

from . import output
from .inputs import read_file, read_stdin, stdin_is_terminal
from .models import resolve_or_pull
from .options import GpuLayersOpt, LoraOpt, ModelArg, OfflineOpt, ThreadsOpt, VerboseOpt
from .rpc_server import RpcOpt
from .signals import cancel_on_sigint

FileArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="[FILE]",
        help="UTF-8 text to measure (default: stdin; '-' also means stdin).",
        show_default=False,
    ),
]
PplCtxOpt = Annotated[
    int,
    typer.Option(
        "--ctx-size", "-c", help="Window in tokens; only each window's second half is scored."
    ),
]
ChunksOpt = Annotated[
    int | None,
    typer.Option(
        "--chunks", help="Score at most this many windows (default: all).", show_default=False
    ),
]
PplJsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def perplexity(
    model: ModelArg,
    file: FileArg = None,
    ctx_size: PplCtxOpt = 512,
    chunks: ChunksOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
    lora: LoraOpt = None,
    json_out: PplJsonOpt = False,
    verbose: VerboseOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Compute MODEL's perplexity over the text in FILE (or stdin), in windows of --ctx-size
    tokens as llama.cpp's llama-perplexity does: PPL = 12.3456 +/- 0.1234."""
    from infer.runtime import LoadOptions, load
    from infer.runtime.params import parse_endpoints, parse_lora
    from infer.runtime.tools.perplexity import perplexity as measure

    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks must be >= 1 (got {chunks})")
    text = _read_text(file)
    resolved = resolve_or_pull(model, offline=offline)
    options = LoadOptions(
        ctx_size=ctx_size,
        threads=threads,
        gpu_layers=gpu_layers,
        verbose=verbose,
        rpc=parse_endpoints(rpc),
        lora=parse_lora(lora) or resolved.defaults.lora,
    ).validate()
    with cancel_on_sigint() as cancel, _progress() as progress:
        engine = load(resolved, options)
        try:
            result = measure(
                engine,
                text,
                ctx_size=ctx_size,
                max_chunks=chunks,
                progress=progress,
                cancel=cancel,
            )
        finally:
            engine.close()
    if json_out:
        record = {"model": resolved.name, **result.as_dict()}
        output.write_answer(json.dumps(record) + "\n")
    else:
        output.write_answer(f"PPL = {result.ppl:.4f} +/- {result.ppl_stderr:.4f}\n")


def _read_text(file: Path | None) -> str:
    """The text, strictly UTF-8. One trailing newline is dropped, as llama-perplexity's -f does,
    so that both count the same tokens."""
    if file is None or str(file) == "-":
        if stdin_is_terminal():
            raise UsageError("no text: infer perplexity MODEL FILE (or pipe text on stdin)")
        text = read_stdin() or ""
    else:
        text = read_file(file)
    return text.removesuffix("\n")


@contextmanager
def _progress() -> Iterator[Callable[[int, int, float], None]]:
    """Windows done, the running PPL, elapsed and remaining time on a bar whose spinner starts
    before the model loads; plain lines otherwise: at the start, every few seconds, at the end."""
    with output.Reporter(
        "spinner",
        "perplexity",
        "bar",
        "count",
        "PPL {task.fields[ppl]}",
        "elapsed",
        "remaining",
        transient=True,
    ) as reporter:
        reporter.begin("", total=None, ppl="…")

        def report(done: int, total: int, ppl: float) -> None:
            shown = f"{ppl:.4f}" if math.isfinite(ppl) else "…"
            reporter.update(completed=done, total=total, ppl=shown)
            if done == 0:
                reporter.line(f"perplexity: {total} windows to evaluate", force=True)
            else:
                line = f"perplexity: {done}/{total} windows, PPL so far {ppl:.4f}"
                reporter.line(line, force=done == total)

        yield report
