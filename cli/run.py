"""`infer run`: one answer to a prompt (argument and/or stdin), streamed to stdout; with no
prompt on a terminal, the chat. `infer chat`: the chat, with only the flags that apply to it.
The commands collect their flags into a typed RunArgs; cli/answering.py asks the answerer."""

from __future__ import annotations

from typing import Annotated

import typer

from infer.runtime.errors import UsageError
from infer.runtime.options import Overrides

from .answering import LocalFlags, RunArgs, execute
from .options import (
    OUTPUT,
    ApiKeyFileOpt,
    ApiKeyOpt,
    AudioOpt,
    BatchOpt,
    ContinueOpt,
    CtxSizeOpt,
    DeterministicOpt,
    DraftAlwaysOpt,
    DraftMaxOpt,
    DraftNgramOpt,
    DraftOpt,
    FormatOpt,
    FrequencyPenaltyOpt,
    GpuLayersOpt,
    GrammarOpt,
    ImageOpt,
    JsonOpt,
    JsonSchemaOpt,
    LogprobsOpt,
    LoraOpt,
    MarkdownOpt,
    MaxTokensOpt,
    MinPOpt,
    MmprojOpt,
    ModelArg,
    NoPromptCacheOpt,
    OfflineOpt,
    ParallelOpt,
    PresencePenaltyOpt,
    PromptArg,
    RawOpt,
    RemoteOpt,
    RepeatLastNOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    StatsOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TimeoutOpt,
    ToolChoiceOpt,
    ToolOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
)
from .remote import RemoteFlags, on_command_line
from .rpc_server import RpcOpt

SuffixOpt = Annotated[
    str | None,
    typer.Option(
        "--suffix",
        rich_help_panel=OUTPUT,
        show_default=False,
        help="Fill in the middle: PROMPT is the code before the gap, this the code after it "
        "(a model with FIM tokens, such as Qwen2.5-Coder; as llama-server's /infill).",
    ),
]


def run(
    ctx: typer.Context,
    model: ModelArg,
    prompt: PromptArg = None,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    repeat_last_n: RepeatLastNOpt = None,
    frequency_penalty: FrequencyPenaltyOpt = None,
    presence_penalty: PresencePenaltyOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    ctx_size: CtxSizeOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
    lora: LoraOpt = None,
    raw: RawOpt = False,
    stats: StatsOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    continue_: ContinueOpt = False,
    markdown: MarkdownOpt = False,
    offline: OfflineOpt = False,
    draft: DraftOpt = None,
    draft_max: DraftMaxOpt = None,
    draft_ngram: DraftNgramOpt = None,
    draft_always: DraftAlwaysOpt = False,
    no_prompt_cache: NoPromptCacheOpt = False,
    batch: BatchOpt = None,
    parallel: ParallelOpt = None,
    deterministic: DeterministicOpt = False,
    json_schema: JsonSchemaOpt = None,
    grammar: GrammarOpt = None,
    fmt: FormatOpt = None,
    remote: RemoteOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: TimeoutOpt = None,
    tool: ToolOpt = None,
    tool_choice: ToolChoiceOpt = None,
    suffix: SuffixOpt = None,
    image: ImageOpt = None,
    audio: AudioOpt = None,
    mmproj: MmprojOpt = None,
    logprobs: LogprobsOpt = None,
) -> None:
    """Answer PROMPT (and/or text piped on stdin) with MODEL, streaming to stdout. On a terminal
    with no PROMPT, open an interactive chat."""
    flags = Overrides(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        seed=seed,
    )
    local = LocalFlags(
        ctx_size=ctx_size,
        threads=threads,
        gpu_layers=gpu_layers,
        rpc=rpc,
        lora=tuple(lora or ()),
        verbose=verbose,
        offline=offline,
        draft=draft,
        draft_max=draft_max,
        draft_ngram=draft_ngram,
        draft_always=draft_always,
        no_prompt_cache=no_prompt_cache,
        mmproj=mmproj,
        deterministic=deterministic,
    )
    args = RunArgs(
        model=model,
        prompt=prompt,
        system=system,
        overrides=checked(flags),
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        raw=raw,
        stats=stats,
        json_out=json_out,
        continue_=continue_,
        markdown=markdown,
        json_schema=json_schema,
        grammar=grammar,
        fmt=fmt,
        tool=tuple(tool or ()),
        tool_choice=tool_choice,
        images=tuple(image or ()),
        audio=tuple(audio or ()),
        batch=batch,
        parallel=parallel,
        suffix=suffix,
        logprobs=logprobs,
        local=local,
        remote=RemoteFlags(remote, api_key, api_key_file, timeout),
    )
    execute(args, on_command_line(ctx))


def checked(flags: Overrides) -> Overrides:
    """The sampling flags' values checked against the option table, an error naming the flag."""
    from infer.runtime.errors import OptionError
    from infer.runtime.options import BY_NAME

    try:
        return Overrides.of(flags.given())
    except OptionError as e:
        raise UsageError(f"{BY_NAME[e.option].flag or e.option} {e.problem}") from None


def chat(
    ctx: typer.Context,
    model: ModelArg,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    repeat_last_n: RepeatLastNOpt = None,
    frequency_penalty: FrequencyPenaltyOpt = None,
    presence_penalty: PresencePenaltyOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    ctx_size: CtxSizeOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
    lora: LoraOpt = None,
    raw: RawOpt = False,
    stats: StatsOpt = False,
    verbose: VerboseOpt = False,
    continue_: ContinueOpt = False,
    markdown: MarkdownOpt = False,
    offline: OfflineOpt = False,
    draft: DraftOpt = None,
    draft_max: DraftMaxOpt = None,
    draft_ngram: DraftNgramOpt = None,
    draft_always: DraftAlwaysOpt = False,
    no_prompt_cache: NoPromptCacheOpt = False,
    json_schema: JsonSchemaOpt = None,
    grammar: GrammarOpt = None,
    fmt: FormatOpt = None,
    remote: RemoteOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: TimeoutOpt = None,
    image: ImageOpt = None,
    audio: AudioOpt = None,
    mmproj: MmprojOpt = None,
) -> None:
    """Chat with MODEL on a terminal (the same as `infer run MODEL` with no prompt)."""
    # Exactly `infer run MODEL` without a prompt, so off a terminal it also does what run does:
    # piped stdin gets one answer, no input at all is the usage error; it never waits.
    # Every flag above is one of run's, under the same name: click has them all in ctx.params.
    run(ctx, prompt=None, **ctx.params)
