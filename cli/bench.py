"""`infer bench`: llama-bench's measurements (prompt and generation speed, time to first token,
load time) through infer's own engine, with sweeps and a history in the state dir."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infer.runtime.errors import UsageError

from . import output
from .options import ApiKeyFileOpt, ApiKeyOpt, LoraOpt, RemoteOpt, TimeoutOpt, VerboseOpt
from .rpc_server import RpcOpt

if TYPE_CHECKING:
    from infer.runtime.tools.bench import BenchResult, Progress

    Runs = Callable[[Progress], Iterator[BenchResult]]

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
        "--threads",
        "-t",
        envvar="INFER_THREADS",
        show_default=False,
        help=f"CPU threads (default: physical cores). {SWEEP}",
    ),
]
GpuLayersListOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu-layers",
        "-ngl",
        envvar="INFER_GPU_LAYERS",
        show_default=False,
        help="Layers offloaded to the GPU, -1 = all (default: all that fit on GPU builds). "
        f"{SWEEP}",
    ),
]
CtxListOpt = Annotated[
    str | None,
    typer.Option(
        "--ctx-size",
        "-c",
        envvar="INFER_CTX_SIZE",
        show_default=False,
        help=f"Context window (default: as `infer run`). {SWEEP}",
    ),
]
BatchListOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size",
        "-b",
        show_default=False,
        help=f"Prompt tokens per llama_decode call (default: 512). {SWEEP}",
    ),
]
BenchJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the results as a JSON array on stdout.")
]
HistoryOpt = Annotated[
    bool, typer.Option("--history", help="Show the results recorded by earlier runs.")
]


def bench(
    ctx: typer.Context,
    model: BenchModelArg = None,
    n_prompt: NPromptOpt = 512,
    n_gen: NGenOpt = 128,
    reps: RepsOpt = 5,
    threads: ThreadsListOpt = None,
    gpu_layers: GpuLayersListOpt = None,
    ctx_size: CtxListOpt = None,
    batch_size: BatchListOpt = None,
    rpc: RpcOpt = None,
    lora: LoraOpt = None,
    json_out: BenchJsonOpt = False,
    history: HistoryOpt = False,
    verbose: VerboseOpt = False,
    remote: RemoteOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Measure MODEL like llama-bench: load time, prompt tok/s, time to first token and
    generation tok/s (median ± standard deviation over the repetitions). Each result is added
    to the history that --history shows. With --remote URL, the model that server runs: one
    warm-up request, then one streamed request per repetition."""
    if history:
        _show_history(json_out)
        return
    if model is None:
        raise UsageError("missing MODEL: infer bench MODEL (or infer bench --history)")
    args = dict(locals())
    url = None
    if remote or api_key or api_key_file or timeout is not None:
        from .bench_remote import remote_url

        url = remote_url(args)
    runs = _local_runs(args) if url is None else _remote_runs(url, args)
    results = []
    with _status() as progress:
        recording = True
        for i, result in enumerate(runs(progress)):
            results.append(result)
            if not json_out:
                _print_row(result, header=i == 0)
            recording = recording and _record(result)
    if json_out:
        output.write_answer(json.dumps([r.as_dict() for r in results], indent=2) + "\n")


def _local_runs(args: dict[str, Any]) -> Runs:
    """The sweep's measurements, once every value is checked and the model found."""
    from infer.runtime import resolve
    from infer.runtime.params import parse_endpoints, parse_lora
    from infer.runtime.tools import bench as rb

    points = rb.sweep(
        rb.parse_list(args["threads"], "--threads", 1),
        rb.parse_list(args["gpu_layers"], "--gpu-layers", -1),
        rb.parse_list(args["ctx_size"], "--ctx-size", 16),
        rb.parse_list(args["batch_size"], "--batch-size", 1),
    )
    counts = args["n_prompt"], args["n_gen"], args["reps"]
    rb.check_counts(*counts)
    endpoints = parse_endpoints(args["rpc"])
    adapters = parse_lora(args["lora"]) or None  # None: the model's models.toml adapters
    resolved = resolve(args["model"])
    return lambda progress: rb.run_bench(
        resolved,
        points,
        *counts,
        verbose=args["verbose"],
        progress=progress,
        rpc=endpoints,
        lora=adapters,
    )


def _remote_runs(url: str, args: dict[str, Any]) -> Runs:
    from infer.runtime.tools import bench as rb

    from .bench_remote import bench_remote

    rb.check_counts(args["n_prompt"], args["n_gen"], args["reps"])

    def runs(progress: Progress) -> Iterator[BenchResult]:
        yield bench_remote(url, args, progress)

    return runs


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
        pp, tg = (
            _n(result.prompt_tokens, result.n_prompt),
            _n(result.generated_tokens, result.n_gen),
        )
        output.write_answer(
            f"{_title(result)}\n"
            f"| threads | gpu layers | ctx | batch | load s | pp{pp} tok/s | TTFT ms "
            f"| tg{tg} tok/s |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
    output.write_answer(_row(result.as_dict()) + "\n")
    if result.split:  # GPU or RPC devices: which one holds what
        output.dim(f"layers on {result.split}")


def _title(result: BenchResult) -> str:
    if result.remote is not None:  # a remote engine: what it runs on is its own
        return f"model: {result.model} · backend: {result.backend}"
    offload = "yes" if result.gpu_offload_supported else "no (CPU-only build)"
    size = (result.model_size_bytes or 0) / 2**20
    return (
        f"model: {result.model} ({size:.1f} MiB) · backend: {result.backend} · "
        f"GPU offload: {offload}"
    )


def _n(real: list[int] | None, asked: int) -> int:
    """The token count of a column's header: a remote's real one (its median), else -p/-n."""
    if not real:
        return asked
    import statistics

    return round(statistics.median(real))


def _row(r: dict[str, Any]) -> str:
    layers = "-" if r["gpu_layers"] is None else f"{r['gpu_layers']}/{r['layers_total']}"
    cells = [
        _cell(r["threads"]),
        layers,
        _cell(r["ctx_size"]),
        _cell(r["batch_size"]),
        _spread(r["load_s"], "{:.3f}"),
        _spread(r["prompt_tokens_per_s"], "{:.1f}"),
        _spread(r["ttft_s"], "{:.0f}", scale=1000),
        _spread(r["generate_tokens_per_s"], "{:.1f}"),
    ]
    return "| " + " | ".join(cells) + " |"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


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
