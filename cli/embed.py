"""`infer embed`: vectors for texts, as llama.cpp's llama-embedding computes them. Vectors on
stdout (a JSON array for one text, JSON Lines for many, or raw float32); notes and progress on
stderr."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infer.runtime.errors import UsageError

from . import output
from .inputs import read_file, read_stdin, stdin_is_terminal
from .models import resolve_or_pull
from .options import HARDWARE, OUTPUT, GpuLayersOpt, ModelArg, OfflineOpt, ThreadsOpt, VerboseOpt
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.tools.embed import Item

TextArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[TEXT]...",
        help="Texts to embed, one vector each (default: --file, or stdin split by --split).",
        show_default=False,
    ),
]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        rich_help_panel=OUTPUT,
        show_default=False,
        help="Embed the items of this UTF-8 file ('-': stdin), split by --split.",
    ),
]
SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        rich_help_panel=OUTPUT,
        help="Items of a file or stdin: line | paragraph (blank-line separated) | none.",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        rich_help_panel=OUTPUT,
        help='JSON Lines even for one text: {"index", "text", "embedding"}.',
    ),
]
NoTextOpt = Annotated[
    bool, typer.Option("--no-text", rich_help_panel=OUTPUT, help="Leave 'text' out of JSON Lines.")
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        rich_help_panel=OUTPUT,
        help="json, or binary: little-endian float32, vector after vector (numpy.fromfile).",
    ),
]
PoolingOpt = Annotated[
    str | None,
    typer.Option(
        "--pooling",
        rich_help_panel=HARDWARE,
        show_default=False,
        help="mean | cls | last | none (a vector per token) | rank (default: the model's, "
        "else mean).",
    ),
]
NoNormalizeOpt = Annotated[
    bool,
    typer.Option(
        "--no-normalize", rich_help_panel=OUTPUT, help="Raw vectors, not scaled to length 1."
    ),
]
TruncateOpt = Annotated[
    bool,
    typer.Option(
        "--truncate",
        rich_help_panel=OUTPUT,
        help="Cut a text longer than the context (said on stderr) instead of failing.",
    ),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx-size",
        "-c",
        "--batch-size",
        "-b",
        rich_help_panel=HARDWARE,
        show_default=False,
        help="Tokens per batch, so the longest text (default: the model's, at most 4096).",
    ),
]
SimilarOpt = Annotated[
    str | None,
    typer.Option(
        "--similar",
        rich_help_panel=OUTPUT,
        show_default=False,
        help="Print the items most similar to this query (cosine), best first.",
    ),
]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "--parallel",
        "-np",
        rich_help_panel=HARDWARE,
        help="Texts decoded together in one batch (llama-embedding's -np; at most 256).",
    ),
]
TopOpt = Annotated[
    int, typer.Option("-k", "--top", rich_help_panel=OUTPUT, help="With --similar: how many.")
]


def embed(
    model: ModelArg,
    texts: TextArg = None,
    file: FileOpt = None,
    split: SplitOpt = "line",
    json_out: JsonOpt = False,
    no_text: NoTextOpt = False,
    fmt: FormatOpt = "json",
    pooling: PoolingOpt = None,
    no_normalize: NoNormalizeOpt = False,
    truncate: TruncateOpt = False,
    ctx_size: CtxOpt = None,
    parallel: ParallelOpt = 256,
    similar: SimilarOpt = None,
    top: TopOpt = 5,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Embed TEXTs (or the lines of --file or stdin) with MODEL: one JSON array for one text,
    JSON Lines {"index", "text", "embedding"} for several."""
    from infer.runtime.llama.embedder import POOLING
    from infer.runtime.tools.embed import split as split_items

    if pooling is not None and pooling not in POOLING:
        raise UsageError(f"--pooling must be one of {', '.join(POOLING)} (got {pooling!r})")
    if fmt not in ("json", "binary"):
        raise UsageError(f"--format must be json or binary (got {fmt!r})")
    if fmt == "binary" and sys.stdout.isatty():
        raise UsageError("--format binary writes raw float32: redirect stdout to a file")
    if top < 1:
        raise UsageError(f"-k must be >= 1 (got {top})")
    if texts and file is not None:
        raise UsageError("give TEXT arguments or --file, not both")
    items, skipped = _items(texts, file, split, split_items)
    if not items:
        raise UsageError("nothing to embed: every item is blank")
    if skipped:
        output.note(f"skipped {skipped} blank {'item' if skipped == 1 else 'items'}")
    vectors, query = _compute(
        model,
        items,
        similar,
        pooling,
        not no_normalize,
        truncate,
        ctx_size,
        parallel,
        threads,
        gpu_layers,
        verbose,
        offline,
    )
    if similar is not None:
        _print_similar(items, vectors, query, top, json_out)
    elif fmt == "binary":
        _write_binary(vectors)
    elif len(items) == 1 and not json_out:
        output.write_answer(json.dumps(vectors[0]) + "\n")
    else:
        for item, vector in zip(items, vectors, strict=True):
            record: dict[str, Any] = {"index": item.index}
            if not no_text:
                record["text"] = item.text
            record["embedding"] = vector
            output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")


def _items(
    texts: list[str] | None, file: Path | None, split: str, split_items: Callable[..., Any]
) -> tuple[list[Item], int]:
    from infer.runtime.tools.embed import Item

    if texts:
        items = [Item(i, t) for i, t in enumerate(texts) if t.strip()]
        return items, len(texts) - len(items)
    if file is not None and str(file) != "-":
        text = read_file(file)
    elif stdin_is_terminal():
        raise UsageError("nothing to embed: infer embed MODEL TEXT (or --file, or pipe text)")
    else:
        text = read_stdin() or ""
    result: tuple[list[Item], int] = split_items(text, split)
    return result


def _compute(
    model: str,
    items: list[Item],
    similar: str | None,
    pooling: str | None,
    normalize: bool,
    truncate: bool,
    ctx_size: int | None,
    parallel: int,
    threads: int | None,
    gpu_layers: int | None,
    verbose: bool,
    offline: bool,
) -> tuple[list[Any], Any]:
    from infer.runtime import LoadOptions, load
    from infer.runtime.llama.embedder import Embedder, default_ctx
    from infer.runtime.tools.embed import Item, embed_all, tokenize

    resolved = resolve_or_pull(model, offline=offline)
    options = LoadOptions(ctx_size=256, threads=threads, gpu_layers=gpu_layers, verbose=verbose)
    with cancel_on_sigint() as cancel, _progress(len(items)) as progress:
        engine = load(resolved, options.validate())
        try:
            n_ctx = ctx_size or default_ctx(engine)
            with Embedder(engine, pooling=pooling, n_ctx=n_ctx, n_seq_max=parallel) as embedder:
                wanted = [*items, Item(-1, similar)] if similar is not None else items
                inputs, cut = tokenize(engine, wanted, embedder.n_batch, truncate)
                if cut:
                    output.warn(f"cut {cut} text(s) to {embedder.n_batch} tokens (--truncate)")
                if similar is not None and embedder.pooling == "none":
                    raise UsageError("--similar needs one vector per text: not --pooling none")
                vectors = embed_all(
                    embedder, inputs, normalize=normalize, progress=progress, cancel=cancel
                )
        finally:
            engine.close()
    if similar is not None:
        return vectors[:-1], vectors[-1]
    return vectors, None


def _print_similar(
    items: list[Item], vectors: list[Any], query: Any, top: int, json_out: bool
) -> None:
    from infer.runtime.tools.embed import most_similar

    for position, score in most_similar(query, vectors, top):
        item = items[position]
        if json_out:
            record = {"index": item.index, "text": item.text, "score": round(score, 6)}
            output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            output.write_answer(f"{score:.4f}\t{item.text}\n")


def _write_binary(vectors: list[Any]) -> None:
    flat: list[float] = []
    for vector in vectors:
        if vector and isinstance(vector[0], list):  # --pooling none: a row per token
            for row in vector:
                flat.extend(row)
        else:
            flat.extend(vector)
    data = struct.pack(f"<{len(flat)}f", *flat)
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise output.OutputClosed() from None


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A bar for many items (a spinner while the model loads); plain lines otherwise."""
    if total < 64:
        yield None
        return
    with output.Reporter(
        "spinner", "embedding", "bar", "count", "elapsed", "remaining", transient=True
    ) as reporter:
        reporter.begin("", total=total)

        def report(done: int, total: int) -> None:
            reporter.update(completed=done, total=total)
            reporter.line(f"embedded {done}/{total}", force=done == total)

        yield report
