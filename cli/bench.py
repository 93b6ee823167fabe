"""`infer bench`: llama-bench's measurements (prompt and generation speed, time to first token,
load time) through infer's own engine, with sweeps and a history in the state dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infer.runtime.errors import UsageError

from . import output
from .options import VerboseOpt
from .rpc_server import RpcOpt

if TYPE_CHECKING:
    from infer.runtime.tools.bench import BenchResult, Progress

SWEEP = "A comma list runs one benchmark per value."
BenchModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Model to measure: an alias (smollm2), a .gguf path or a cached Hub reference.",
        metavar="MODEL",
        show_default=False,
    ),
]
NPromptOpt = Annotated[
    int, typer.Option("-p", "--n-prompt", help="Prompt tokens per repetition; 0 = skip.")
]
NGenOpt = Annotated[
    int, typer.Option("-n", "--n-gen", help="Generated tokens per repetition; 0 = skip.")
]
RepsOpt = Annotated[int, typer.Option("-r", "--repetitions", help="Repetitions per benchmark.")]
ThreadsListOpt = Annotated[
    str | None,
    typer.Option(
        "--threads", "-t", envvar="INFER_THREADS", show_default=False,
        help=f"CPU threads (default: physical cores). {SWEEP}",
    ),
]  # fmt: skip
GpuLayersListOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu-layers", "-ngl", envvar="INFER_GPU_LAYERS", show_default=False,
        help="Layers offloaded to the GPU, -1 = all (default: all that fit on GPU builds). "
        f"{SWEEP}",
    ),
]  # fmt: skip
CtxListOpt = Annotated[
    str | None,
    typer.Option(
        "--ctx-size", "-c", envvar="INFER_CTX_SIZE", show_default=False,
        help=f"Context window (default: as `infer run`). {SWEEP}",
    ),
]  # fmt: skip
BatchListOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size", "-b", show_default=False,
        help=f"Prompt tokens per llama_decode call (default: 512). {SWEEP}",
    ),
]  # fmt: skip
BenchJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the results as a JSON array on stdout.")
]
HistoryOpt = Annotated[
    bool, typer.Option("--history", help="Show the results recorded by earlier runs.")
]


def bench(
    model: BenchModelArg = None,
    n_prompt: NPromptOpt = 512,
    n_gen: NGenOpt = 128,
    reps: RepsOpt = 5,
    threads: ThreadsListOpt = None,
    gpu_layers: GpuLayersListOpt = None,
    ctx_size: CtxListOpt = None,
    batch_size: BatchListOpt = None,
    rpc: RpcOpt = None,
    json_out: BenchJsonOpt = False,
    history: HistoryOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure MODEL like llama-bench: load time, prompt tok/s, time to first token and
    generation tok/s (median ± standard deviation over the repetitions). Each result is added
    to the history that --history shows."""
    from infer.runtime.tools import bench as rb

    if history:
        _show_history(json_out)
        return
    if model is None:
        raise UsageError("missing MODEL: infer bench MODEL (or infer bench --history)")
    points = rb.sweep(
        rb.parse_list(threads, "--threads", 1),
        rb.parse_list(gpu_layers, "--gpu-layers", -1),
        rb.parse_list(ctx_size, "--ctx-size", 16),
        rb.parse_list(batch_size, "--batch-size", 1),
    )
    rb.check_counts(n_prompt, n_gen, reps)
    from infer.runtime.params import parse_endpoints

    endpoints = parse_endpoints(rpc)
    from infer.runtime import resolve

    resolved = resolve(model)
    results = []
    with _status() as progress:
        runs = rb.run_bench(resolved, points, n_prompt, n_gen, reps, verbose=verbose,
                            progress=progress, rpc=endpoints)  # fmt: skip
        recording = True
        for i, result in enumerate(runs):
            results.append(result)
            if not json_out:
                _print_row(result, header=i == 0)
            recording = recording and _record(result)
    if json_out:
        output.write_answer(json.dumps([r.as_dict() for r in results], indent=2) + "\n")


def _record(result: BenchResult) -> bool:
    """Add a result to the history, best-effort: the figures are already on stdout, and a
    full disk must not lose them. False (after one warning) when the history cannot be written."""
    from infer.runtime.tools import bench as rb

    try:
        rb.append_history(result)
    except OSError as e:
        output.warn(f"results not added to the history {rb.history_path()}: {e.strerror or e}")
        return False
    return True


@contextmanager
def _status() -> Iterator[Progress]:
    """A spinner on stderr naming the current step, on a terminal only."""
    with output.status("benchmarking…") as update:
        yield lambda message: update(f"benchmarking: {message}")


def _print_row(result: BenchResult, *, header: bool) -> None:
    if header:
        offload = "yes" if result.gpu_offload_supported else "no (CPU-only build)"
        output.write_answer(
            f"model: {result.model} ({result.model_size_bytes / 2**20:.1f} MiB) · backend: "
            f"{result.backend} · GPU offload: {offload}\n"
            f"| threads | gpu layers | ctx | batch | load s | pp{result.n_prompt} tok/s "
            f"| TTFT ms | tg{result.n_gen} tok/s |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
    output.write_answer(_row(result.as_dict()) + "\n")
    if result.split:  # GPU or RPC devices: which one holds what
        output.dim(f"layers on {result.split}")


def _row(r: dict[str, Any]) -> str:
    cells = [
        str(r["threads"]),
        f"{r['gpu_layers']}/{r['layers_total']}",
        str(r["ctx_size"]),
        str(r["batch_size"]),
        _spread(r["load_s"], "{:.3f}"),
        _spread(r["prompt_tokens_per_s"], "{:.1f}"),
        _spread(r["ttft_s"], "{:.0f}", scale=1000),
        _spread(r["generate_tokens_per_s"], "{:.1f}"),
    ]
    return "| " + " | ".join(cells) + " |"


def _spread(s: dict[str, Any] | None, fmt: str, scale: float = 1.0) -> str:
    if not s:
        return "-"
    return f"{fmt.format(s['median'] * scale)} ± {fmt.format(s['stdev'] * scale)}"


def _show_history(json_out: bool) -> None:
    from infer.runtime.tools import bench as rb

    records, bad = rb.read_history()
    if bad:
        output.warn(f"{bad} unreadable line(s) in {rb.history_path()} skipped")
    if json_out:
        output.write_answer(json.dumps(records, indent=2) + "\n")
        return
    if not records:
        output.say("no benchmark results yet: `infer bench MODEL` records one")
        return
    output.write_answer(
        "| date (UTC) | model | backend | -p/-n | threads | gpu layers | ctx | batch | load s "
        "| pp tok/s | TTFT ms | tg tok/s |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in records:
        try:
            line = (
                f"| {r['timestamp'][:16].replace('T', ' ')} | {r['model']} | {r['backend']} "
                f"| {r['n_prompt']}/{r['n_gen']} "
            )
            output.write_answer(line + _row(r) + "\n")
        except (KeyError, TypeError, AttributeError, ValueError):
            output.warn("a history record with missing fields skipped")
