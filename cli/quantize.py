"""`infer quantize`: make MODEL:TYPE with llama.cpp's quantizer. The result line on stdout,
progress on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from . import output
from .models import resolve_or_pull
from .options import ModelArg, OfflineOpt, ThreadsOpt
from .output import human_size

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


class _QuantizeReport:
    """A spinner, the tensor count and the elapsed time (llama.cpp reports no more) on a
    terminal; otherwise a line at the start, then one every few seconds."""

    def __init__(self, reporter: output.Reporter, title: str) -> None:
        self.reporter, self.t0 = reporter, reporter.clock()
        reporter.begin(title, total=None)
        reporter.line(title, force=True)

    def tensor(self, index: int, total: int, name: str) -> None:
        self.reporter.update(completed=index - 1, total=total)
        elapsed = self.reporter.clock() - self.t0
        self.reporter.line(f"quantize: tensor {index}/{total}, {elapsed:.0f} s")


@contextmanager
def _progress(title: str) -> Iterator[_QuantizeReport]:
    with output.Reporter(
        "spinner", "{task.description}", "bar", "count", "elapsed", transient=True
    ) as reporter:
        yield _QuantizeReport(reporter, title)
