"""`infer quantize`: make MODEL:TYPE with llama.cpp's quantizer. The result line on stdout,
progress on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from . import output
from .models import human_size, resolve_or_pull
from .options import ModelArg, OfflineOpt, ThreadsOpt

TypeArg = Annotated[
    str,
    typer.Argument(
        metavar="TYPE",
        help="Quantization type, e.g. Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, F16 "
        "(case-insensitive).",
        show_default=False,
    ),
]
AllowRequantizeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-requantize",
        help="Quantize a model that is already quantized below 8 bits (quality suffers twice).",
    ),
]


def quantize(
    model: ModelArg,
    type_name: TypeArg,
    allow: AllowRequantizeOpt = False,
    threads: ThreadsOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Quantize MODEL to TYPE with llama.cpp, as a new cached model MODEL:TYPE that run, list,
    show and rm know (e.g. infer quantize owner/repo:F16 Q4_K_M → owner/repo:Q4_K_M)."""
    from infer.runtime.models.quantized_store import parse_type
    from infer.runtime.params import check_threads
    from infer.runtime.tools.quantize import plan, run

    type_name = parse_type(type_name)  # a usage error before anything is loaded or pulled
    if threads is not None:
        check_threads(threads)  # as `infer run`: llama.cpp starts one OS thread per thread
    checked = plan(resolve_or_pull(model, offline=offline), type_name, allow_requantize=allow)
    title = (
        f"quantizing {checked.source.name} ({checked.source_quantization}, "
        f"{human_size(checked.source_size)}) to {checked.name}"
    )
    with _progress(title) as progress:
        result = run(checked, threads=threads, progress=progress)
    m = result.model
    if result.fallbacks:
        output.warn(
            f"{result.fallbacks} tensors have rows that are not a whole number of {m.type} "
            "blocks: llama.cpp used a nearby type for them"
        )
    verb = "replaced" if result.replaced else "quantized"
    output.write_answer(
        f"{verb} {m.name} ({human_size(result.source_size)} → {human_size(m.size)}, "
        f"{result.seconds:.1f} s)\n"
    )


class _Lines:
    """Without a terminal: a line at the start, then one every few seconds; no escape codes."""

    EVERY = 5.0

    def __init__(self, title: str) -> None:
        self.t0 = self.last = time.monotonic()
        self.note(title)

    def note(self, message: str) -> None:
        sys.stderr.write(f"infer: {message}\n")
        sys.stderr.flush()

    def tensor(self, index: int, total: int, name: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.EVERY:
            self.last = now
            self.note(f"quantize: tensor {index}/{total}, {now - self.t0:.0f} s")


class _Spinner:
    """rich: a spinner, the tensor count and the elapsed time (llama.cpp reports no more)."""

    def __init__(self, title: str) -> None:
        from rich import progress as rp
        from rich.console import Console

        self.progress = rp.Progress(
            rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
            rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task(title, total=None)
        self.progress.start()

    def tensor(self, index: int, total: int, name: str) -> None:
        self.progress.update(self.task, completed=index - 1, total=total)

    def close(self) -> None:
        self.progress.stop()


@contextmanager
def _progress(title: str) -> Iterator[_Lines | _Spinner]:
    if not output.use_color(sys.stderr):
        yield _Lines(title)
        return
    spinner = _Spinner(title)
    try:
        yield spinner
    finally:
        spinner.close()
