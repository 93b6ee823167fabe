"""Options shared between commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model: an alias (smollm2), a path to a .gguf file, owner/repo[:QUANT][@REV] "
        "or hf://owner/repo/file.gguf",
        show_default=False,
    ),
]
PromptArg = Annotated[
    str | None,
    typer.Argument(
        help="The prompt. With text piped on stdin, it becomes PROMPT, a blank line, then stdin "
        "(or put {stdin} where the text should go).",
        show_default=False,
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", "-s", help="System prompt.", show_default=False)
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature", "--temp", help="Sampling temperature; 0 = greedy. [default: 0.8]"
    ),
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling. [default: 0.95]")]
TopKOpt = Annotated[
    int | None, typer.Option("--top-k", help="Top-k sampling; 0 = off. [default: 40]")
]
MinPOpt = Annotated[float | None, typer.Option("--min-p", help="Min-p sampling. [default: 0.05]")]
RepeatPenaltyOpt = Annotated[
    float | None,
    typer.Option("--repeat-penalty", help="Penalty for repeating tokens; 1 = off. [default: 1.0]"),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed (default: random).", show_default=False)
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens", "-n", help="Stop after this many tokens (default: no limit).",
        show_default=False,
    ),
]  # fmt: skip
StopOpt = Annotated[
    list[str] | None,
    typer.Option("--stop", help="Stop when this text appears (repeatable).", show_default=False),
]
CtxSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx-size", "-c", envvar="INFER_CTX_SIZE",
        help="Context window in tokens (default: the model's trained context, capped so the "
        "KV cache stays under 4 GiB).", show_default=False,
    ),
]  # fmt: skip
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", "-t", envvar="INFER_THREADS",
        help="CPU threads (default: physical cores).", show_default=False,
    ),
]  # fmt: skip
GpuLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--gpu-layers", envvar="INFER_GPU_LAYERS",
        help="Layers to offload to the GPU; -1 = all (default: all on GPU builds, 0 on CPU).",
        show_default=False,
    ),
]  # fmt: skip
RawOpt = Annotated[bool, typer.Option("--raw", help="Plain text completion: no chat template.")]
StatsOpt = Annotated[
    bool,
    typer.Option(
        "--stats", help="Print load time, prompt and generation speed, time to first token "
        "(stderr)."
    ),
]  # fmt: skip
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object (text and stats) on stdout.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own logs on stderr.")
]
ContinueOpt = Annotated[
    bool,
    typer.Option(
        "--continue", help="Chat: reopen the last conversation with this model.",
    ),
]  # fmt: skip
MarkdownOpt = Annotated[
    bool, typer.Option("--markdown", help="Chat: render answers as Markdown on a terminal.")
]
NoPromptCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-prompt-cache", help="Neither reuse nor save the prompt's state on disk (prompts "
        "of 256+ tokens are cached by default; see `infer cache`).",
    ),
]  # fmt: skip
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline", help="Never touch the network: a model not in the cache is an error "
        "(also HF_HUB_OFFLINE=1).",
    ),
]  # fmt: skip
DraftOpt = Annotated[
    str | None,
    typer.Option(
        "--draft", help="Speculative decoding: 'lookup' drafts from n-grams of the prompt and "
        "answer (fast when the answer copies the input), or a small MODEL with the same "
        "vocabulary. Output is unchanged: drafts are only verified.", show_default=False,
    ),
]  # fmt: skip
DraftMaxOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-max", help="Most tokens drafted per step (default: 16 for lookup, 6 for a "
        "model).", show_default=False,
    ),
]  # fmt: skip
DraftNgramOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-ngram", help="--draft lookup: longest n-gram matched (default: 3).",
        show_default=False,
    ),
]  # fmt: skip
BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch", help="Answer each prompt of FILE ('-' = stdin), several decoded together: "
        "JSON Lines with a 'prompt' (optional 'id', 'system', 'max_tokens', 'stop', sampling "
        "fields), or one prompt per line. One JSON result per prompt on stdout, in input order.",
        metavar="FILE", show_default=False,
    ),
]  # fmt: skip
ParallelOpt = Annotated[
    int | None,
    typer.Option(
        "--parallel", help="--batch: sequences decoded at a time [default: 4]. --ctx-size is "
        "per sequence.", show_default=False,
    ),
]  # fmt: skip
