"""`infer rerank`: documents ordered by how relevant a reranker model finds them to a query,
scored as llama-server's /v1/rerank scores them (runtime/tools/rerank.py). A table on a
terminal, tab-separated lines (score, index, document) in a pipe, or --json; notes on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from infer.runtime.errors import UsageError

from . import output
from .inputs import read_file, read_stdin, stdin_is_terminal
from .models import resolve_or_pull
from .options import HARDWARE, OUTPUT, GpuLayersOpt, ModelArg, OfflineOpt, ThreadsOpt, VerboseOpt
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.tools.embed import Item

QueryArg = Annotated[
    str, typer.Argument(metavar="QUERY", help="What the documents are ranked against.")
]
DocArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[DOC]...",
        help="Documents to rank (default: --file, or stdin, one document per line).",
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
        help="Rank the lines of this UTF-8 file, one document each ('-': stdin).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        rich_help_panel=OUTPUT,
        help='A JSON list [{"index", "relevance_score", "document"}], best first.',
    ),
]
TopNOpt = Annotated[
    int | None,
    typer.Option(
        "--top-n",
        "-n",
        rich_help_panel=OUTPUT,
        show_default=False,
        help="Only the N most relevant documents.",
    ),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx-size",
        "-c",
        rich_help_panel=HARDWARE,
        show_default=False,
        help="Tokens per batch, so the longest query and document together "
        "(default: the model's, at most 4096).",
    ),
]


def rerank(
    model: ModelArg,
    query: QueryArg,
    docs: DocArg = None,
    file: FileOpt = None,
    json_out: JsonOpt = False,
    top_n: TopNOpt = None,
    ctx_size: CtxOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    offline: OfflineOpt = False,
) -> None:
    """Rank DOCs (or the lines of --file or stdin) by relevance to QUERY with a reranker MODEL
    (a GGUF with rank pooling, such as bge-reranker-v2-m3), most relevant first."""
    from infer.runtime.tools.rerank import ranked

    if top_n is not None and top_n < 1:
        raise UsageError(f"--top-n must be >= 1 (got {top_n})")
    if docs and file is not None:
        raise UsageError("give DOC arguments or --file, not both")
    items = _items(docs, file)
    if not items:
        raise UsageError("nothing to rank: every document is blank")
    scores = _scores(model, query, items, ctx_size, threads, gpu_layers, verbose, offline)
    best = [(items[i], score) for i, score in ranked(scores, top_n)]
    if json_out:
        records = [
            {"index": item.index, "relevance_score": score, "document": item.text}
            for item, score in best
        ]
        output.write_answer(json.dumps(records, ensure_ascii=False, indent=2) + "\n")
    elif _stdout_is_terminal():
        rows = [[f"{score:.4f}", str(item.index), item.text] for item, score in best]
        output.write_answer(output.table(["SCORE", "INDEX", "DOCUMENT"], rows))
    else:
        for item, score in best:
            output.write_answer(f"{score:.6f}\t{item.index}\t{item.text}\n")


def _stdout_is_terminal() -> bool:
    import sys

    return sys.stdout.isatty()


def _items(docs: list[str] | None, file: Path | None) -> list[Item]:
    from infer.runtime.tools.embed import Item, split

    if docs:
        return [Item(i, d) for i, d in enumerate(docs) if d.strip()]
    if file is not None and str(file) != "-":
        text = read_file(file)
    elif stdin_is_terminal():
        raise UsageError("nothing to rank: infer rerank MODEL QUERY DOC... (or --file, or a pipe)")
    else:
        text = read_stdin() or ""
    return split(text, "line")[0]


def _scores(
    model: str,
    query: str,
    items: list[Item],
    ctx_size: int | None,
    threads: int | None,
    gpu_layers: int | None,
    verbose: bool,
    offline: bool,
) -> list[float]:
    from infer.runtime import LoadOptions, load
    from infer.runtime.errors import OptionError
    from infer.runtime.llama.embedder import Embedder, default_ctx
    from infer.runtime.tools.rerank import check_reranker, pair_tokens, scores

    resolved = resolve_or_pull(model, offline=offline)
    options = LoadOptions(ctx_size=256, threads=threads, gpu_layers=gpu_layers, verbose=verbose)
    with cancel_on_sigint() as cancel:
        engine = load(resolved, options.validate())
        try:
            try:
                check_reranker(engine, resolved.name)
            except OptionError as e:  # MODEL is an argument, not a flag: its problem alone
                raise UsageError(e.problem) from None
            n_ctx = ctx_size or default_ctx(engine)
            with Embedder(engine, pooling="rank", n_ctx=n_ctx) as embedder:
                docs = [item.text for item in items]
                inputs = pair_tokens(engine, query, docs, embedder.n_batch)
                return scores(embedder, inputs, cancel)
        finally:
            engine.close()
