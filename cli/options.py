"""Options shared between commands, declared once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from infer.runtime.options import BY_NAME, OPTIONS

# Sections of --help (cli/help.py), in the order they first appear.
OUTPUT = "Input and output"
SAMPLING = "Sampling"
HARDWARE = "Context and hardware"
CHAT = "Chat"
SPEED = "Speed-ups"

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Model: an alias (smollm2), a path to a .gguf file, owner/repo[:QUANT][@REV] "
        "or hf://owner/repo/file.gguf",
        show_default=False,
    ),
]
PromptArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[PROMPT]",
        help="The prompt. With text piped on stdin, the model gets stdin, a blank line, then "
        "PROMPT (or put {stdin} where the text should go).",
        show_default=False,
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option(
        "--system", "-s", rich_help_panel=OUTPUT, help="System prompt.", show_default=False
    ),
]


def flag_of(option: str) -> str:
    """The flag that sets a runtime option (`ctx_size` → `--ctx-size`): the runtime's errors
    name options as the runtime does, and the CLI words them with its flags (cli/app.py). The
    table's flag for a generation option; else the option's name spelled as a flag, which is
    how every other flag here is named after the field it sets."""
    return _TABLE_FLAGS.get(option) or "--" + option.replace("_", "-")


_TABLE_FLAGS = {o.name: o.flag for o in OPTIONS if o.flag}


def _sampling_option(name: str, *aliases: str) -> Any:
    """The flag of a generation option, its help and default from the one table
    (runtime/options.py): a flag never states a default the runtime does not use."""
    option = BY_NAME[name]
    default = "" if option.default is None else f" [default: {option.default:g}]"
    assert option.flag is not None
    return typer.Option(
        option.flag,
        *aliases,
        rich_help_panel=SAMPLING,
        help=option.help + default,
        show_default=False,
    )


TemperatureOpt = Annotated[float | None, _sampling_option("temperature", "--temp")]
TopPOpt = Annotated[float | None, _sampling_option("top_p")]
TopKOpt = Annotated[int | None, _sampling_option("top_k")]
MinPOpt = Annotated[float | None, _sampling_option("min_p")]
RepeatPenaltyOpt = Annotated[float | None, _sampling_option("repeat_penalty")]
RepeatLastNOpt = Annotated[int | None, _sampling_option("repeat_last_n")]
FrequencyPenaltyOpt = Annotated[float | None, _sampling_option("frequency_penalty")]
PresencePenaltyOpt = Annotated[float | None, _sampling_option("presence_penalty")]
SeedOpt = Annotated[int | None, _sampling_option("seed")]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        "-n",
        rich_help_panel=SAMPLING,
        help="Stop after this many tokens (default: no limit).",
        show_default=False,
    ),
]
StopOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--stop",
        rich_help_panel=SAMPLING,
        help="Stop when this text appears (repeatable).",
        show_default=False,
    ),
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        rich_help_panel=HARDWARE,
        metavar="FILE[:SCALE]",
        help="Apply a LoRA adapter (GGUF, as llama.cpp's convert_lora_to_gguf.py writes) at "
        "SCALE (default 1.0); repeatable. Replaces the model's models.toml `lora`.",
        show_default=False,
    ),
]
CtxSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx-size",
        "-c",
        envvar="INFER_CTX_SIZE",
        rich_help_panel=HARDWARE,
        help="Context window in tokens (default: the model's trained context, capped so the "
        "KV cache stays under 4 GiB).",
        show_default=False,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        "-t",
        envvar="INFER_THREADS",
        rich_help_panel=HARDWARE,
        help="CPU threads (default: physical cores).",
        show_default=False,
    ),
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--gpu-layers",
        envvar="INFER_GPU_LAYERS",
        rich_help_panel=HARDWARE,
        help="Layers to offload to the GPU; -1 = all (default: all that fit in free GPU "
        "memory on GPU builds, 0 on CPU).",
        show_default=False,
    ),
]
RawOpt = Annotated[
    bool,
    typer.Option("--raw", rich_help_panel=OUTPUT, help="Plain text completion: no chat template."),
]
ImageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--image",
        metavar="FILE",
        rich_help_panel=OUTPUT,
        help="An image for a vision model (PNG, JPEG, GIF, BMP; '-' reads stdin); repeatable. "
        "Placed before the prompt unless the prompt holds <__media__> markers.",
    ),
]
AudioOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--audio",
        metavar="FILE",
        rich_help_panel=OUTPUT,
        help="An audio clip (WAV, MP3, FLAC) for a model whose projector hears; repeatable.",
    ),
]
MmprojOpt = Annotated[
    str | None,
    typer.Option(
        "--mmproj",
        metavar="FILE",
        rich_help_panel=HARDWARE,
        help="The model's projector GGUF (mmproj), for --image and --audio (default: the one "
        "stored with the model).",
    ),
]
StatsOpt = Annotated[
    bool,
    typer.Option(
        "--stats",
        rich_help_panel=OUTPUT,
        help="Print load time, prompt and generation speed, time to first token (stderr).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", rich_help_panel=OUTPUT, help="Print one JSON object (text and stats) on stdout."
    ),
]
LogprobsOpt = Annotated[
    int | None,
    typer.Option(
        "--logprobs",
        metavar="N",
        min=0,
        max=20,
        rich_help_panel=OUTPUT,
        help="With --json (or --batch): each generated token's log-probability and its N most "
        "likely alternatives, as llama-server computes them (before sampling).",
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", rich_help_panel=OUTPUT, help="Show llama.cpp's own logs on stderr."
    ),
]
ContinueOpt = Annotated[
    bool,
    typer.Option(
        "--continue",
        rich_help_panel=CHAT,
        help="Chat: reopen the last conversation with this model.",
    ),
]
MarkdownOpt = Annotated[
    bool,
    typer.Option(
        "--markdown", rich_help_panel=CHAT, help="Chat: render answers as Markdown on a terminal."
    ),
]
NoPromptCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-prompt-cache",
        rich_help_panel=SPEED,
        help="Neither reuse nor save the prompt's state on disk (prompts "
        "of 256+ tokens are cached by default; see `infer cache`).",
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--offline",
        rich_help_panel=OUTPUT,
        help="Never touch the network: a model not in the cache is an error "
        "(also HF_HUB_OFFLINE=1).",
    ),
]
DeterministicOpt = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        envvar="INFER_DETERMINISTIC",
        rich_help_panel=HARDWARE,
        help="Answers that do not depend on what else is decoded: a temperature-0 (or seeded) "
        "answer is the same alone, under load and with --draft. The cells are kept as 8-bit "
        "(Q8_0) values, read by flash attention's one-row kernel. See docs/determinism.md.",
    ),
]
DraftOpt = Annotated[
    str | None,
    typer.Option(
        "--draft",
        rich_help_panel=SPEED,
        help="Speculative decoding: 'lookup' drafts from n-grams of the prompt and "
        "answer (fast when the answer copies the input), or a small MODEL with the same "
        "vocabulary. Output is unchanged: drafts are only verified.",
        show_default=False,
    ),
]
DraftMaxOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-max",
        rich_help_panel=SPEED,
        help="Most tokens drafted per step (default: 16 for lookup, 6 for a model).",
        show_default=False,
    ),
]
DraftNgramOpt = Annotated[
    int | None,
    typer.Option(
        "--draft-ngram",
        rich_help_panel=SPEED,
        help="--draft lookup: longest n-gram matched (default: 3).",
        show_default=False,
    ),
]
DraftAlwaysOpt = Annotated[
    bool,
    typer.Option(
        "--draft-always",
        rich_help_panel=SPEED,
        help="Verify every drafted token. By default infer times its decodes and cuts or skips "
        "drafts that would make generation slower than plain decoding on this machine.",
    ),
]
BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch",
        rich_help_panel=SPEED,
        help="Answer each prompt of FILE ('-' = stdin), several decoded together: "
        "JSON Lines with a 'prompt' (optional 'id', 'system', 'max_tokens', 'stop', sampling "
        "fields), or one prompt per line. One JSON result per prompt on stdout, in input order.",
        metavar="FILE",
        show_default=False,
    ),
]
ParallelOpt = Annotated[
    int | None,
    typer.Option(
        "--parallel",
        rich_help_panel=SPEED,
        help="--batch: sequences decoded at a time [default: 4]. --ctx-size is per sequence.",
        show_default=False,
    ),
]
JsonSchemaOpt = Annotated[
    str | None,
    typer.Option(
        "--json-schema",
        rich_help_panel=OUTPUT,
        metavar="SCHEMA|@FILE",
        help="Constrain the answer to JSON that validates against this JSON schema (text, or "
        "@FILE). Supported: type, properties, required, additionalProperties, items, "
        "minItems/maxItems, enum, const, anyOf, $ref/$defs, pattern, minLength/maxLength, "
        "format date/time/date-time/uuid; other keywords are refused.",
        show_default=False,
    ),
]
GrammarOpt = Annotated[
    str | None,
    typer.Option(
        "--grammar",
        rich_help_panel=OUTPUT,
        metavar="GBNF|@FILE",
        help="Constrain the answer to a llama.cpp GBNF grammar (text, or @FILE); its start "
        "rule is 'root'.",
        show_default=False,
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        rich_help_panel=OUTPUT,
        metavar="json",
        help="--format json: constrain the answer to a JSON object (llama.cpp's json.gbnf).",
        show_default=False,
    ),
]

ToolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tool",
        rich_help_panel=OUTPUT,
        metavar="JSON|@FILE",
        help="Offer the model a function (repeatable): JSON text or @FILE holding one definition "
        '({"name", "description", "parameters"} or OpenAI\'s {"type": "function", "function": '
        "{...}}) or a list of them. Its calls are printed as JSON on stdout "
        '({"tool_calls": [...], "finish_reason": "tool_calls"}); nothing is executed.',
        show_default=False,
    ),
]
ToolChoiceOpt = Annotated[
    str | None,
    typer.Option(
        "--tool-choice",
        rich_help_panel=OUTPUT,
        metavar="auto|required|none|NAME",
        help="--tool: auto (the model decides; a call it starts is kept to the tool's schema), "
        "required (a call, to any tool), NAME (a call to that tool) or none. [default: auto]",
        show_default=False,
    ),
]

# --- remote engines (cli/remote.py) ---------------------------------------------------------
REMOTE = "Remote engine"
RemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--remote",
        envvar="INFER_REMOTE",
        rich_help_panel=REMOTE,
        metavar="URL",
        help="Ask an OpenAI-compatible server (infer serve, llama-server, vLLM, Ollama...) "
        "instead of running the model here; MODEL is passed as the remote names it.",
        show_default=False,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="INFER_API_KEY",
        rich_help_panel=REMOTE,
        metavar="KEY",
        help="--remote: the API key (sent as a Bearer token). Prefer --api-key-file or "
        "INFER_API_KEY: other users can see command lines.",
        show_default=False,
    ),
]
ApiKeyFileOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key-file",
        rich_help_panel=REMOTE,
        metavar="FILE",
        help="--remote: read the API key from FILE.",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        envvar="INFER_TIMEOUT",
        rich_help_panel=REMOTE,
        metavar="SECONDS",
        help="--remote: give up when the server sends nothing for this long (connecting, or "
        "between pieces of the answer). [default: 300]",
        show_default=False,
    ),
]
