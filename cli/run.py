"""`infer run`: one answer to a prompt (argument and/or stdin), streamed to stdout; with no
prompt on a terminal, the chat. `infer chat`: the chat, with only the flags that apply to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from infer.runtime.errors import Interrupted, UsageError

from . import output
from .inputs import prompt_text
from .loading import (
    constraint,
    generate_options,
    load_drafter,
    load_options,
    load_session,
    sampling_params,
)
from .models import resolve_or_pull
from .options import (
    ApiKeyFileOpt,
    ApiKeyOpt,
    BatchOpt,
    ContinueOpt,
    CtxSizeOpt,
    DraftAlwaysOpt,
    DraftMaxOpt,
    DraftNgramOpt,
    DraftOpt,
    FormatOpt,
    GpuLayersOpt,
    GrammarOpt,
    JsonOpt,
    JsonSchemaOpt,
    MarkdownOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelArg,
    NoPromptCacheOpt,
    OfflineOpt,
    ParallelOpt,
    PromptArg,
    RawOpt,
    RemoteOpt,
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
)  # fmt: skip
from .rpc_server import RpcOpt
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.generation.loop import Generation
    from infer.runtime.llama.interface import Session
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.params import GenerateOptions, SamplingParams

    from .tool_calls import Offered


def run(
    model: ModelArg,
    prompt: PromptArg = None,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    ctx_size: CtxSizeOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
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
    json_schema: JsonSchemaOpt = None,
    grammar: GrammarOpt = None,
    fmt: FormatOpt = None,
    remote: RemoteOpt = None,
    api_key: ApiKeyOpt = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: TimeoutOpt = None,
    tool: ToolOpt = None,
    tool_choice: ToolChoiceOpt = None,
) -> None:
    """Answer PROMPT (and/or text piped on stdin) with MODEL, streaming to stdout. On a terminal
    with no PROMPT, open an interactive chat."""
    if remote or api_key or api_key_file or timeout is not None:
        from .remote import run_remote

        if run_remote(dict(locals())):
            return
    conflicts = {"--continue": continue_, "--markdown": markdown, "--draft": bool(draft)}
    batched = _check_batch(batch, parallel, prompt, conflicts)
    constrained = constraint(json_schema, grammar, fmt)
    offered = _tools(tool, tool_choice, batched=batched, raw=raw, constrained=bool(constrained))
    text = None if batched else prompt_text(prompt)
    resolved = resolve_or_pull(model, offline=offline)
    d = resolved.defaults
    sampling = sampling_params(
        d, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=seed, grammar=constrained,
    )  # fmt: skip
    options = generate_options(
        max_tokens=max_tokens, stop=stop, draft_max=draft_max, draft_ngram=draft_ngram,
        draft_always=draft_always,
    )  # fmt: skip
    engine_options = load_options(
        d, ctx_size=ctx_size, threads=threads, gpu_layers=gpu_layers, verbose=verbose,
        no_prompt_cache=no_prompt_cache, rpc=rpc,
    )  # fmt: skip
    system = system or d.system
    if batch is not None:
        from .batch import run_batch

        return run_batch(
            resolved, batch, parallel, sampling, options, engine_options, system=system, raw=raw,
            template=d.chat_template, stats=stats, json_out=json_out,
        )  # fmt: skip
    engine = load_session(resolved, engine_options, quiet=json_out)
    drafter = load_drafter(draft, engine, engine_options, offline=offline, quiet=json_out)
    if offered is not None:
        from .tool_calls import answer

        if text is None:
            raise UsageError('--tool needs a PROMPT: infer run MODEL "PROMPT" --tool ...')
        return answer(
            engine, resolved, text, system, sampling, options, offered, drafter=drafter,
            json_out=json_out, stats=stats,
        )  # fmt: skip
    if text is None:
        from .chat import ChatSettings, start

        settings = ChatSettings(sampling, options, raw, d.chat_template, stats, markdown)
        raise typer.Exit(
            start(engine, resolved.name, resolved.path, settings, system, continue_, drafter)
        )
    gen = _generate(engine, resolved, text, system, sampling, options, raw=raw, drafter=drafter)
    _stream(gen, resolved.name, json_out=json_out)
    if stats:
        output.print_stats(gen.stats)
    if constrained and gen.stats.finish_reason in ("length", "context"):
        _cut_off(gen, "JSON" if json_schema is not None or fmt == "json" else "grammar")


def _cut_off(gen: Generation, what: str) -> None:
    """A constrained answer stopped by a limit is incomplete (JSON that does not parse)."""
    from infer.runtime.errors import InferError

    limit = "--max-tokens" if gen.stats.finish_reason == "length" else "--ctx-size"
    raise InferError(
        f"the answer was cut off at {gen.stats.generated_tokens} tokens before the {what} "
        f"was complete ({limit})"
    )


def _tools(
    tool: list[str] | None, choice: str | None, *, batched: bool, raw: bool, constrained: bool
) -> Offered | None:
    """--tool and --tool-choice, checked before the model loads; None without --tool."""
    if not tool and choice is None:
        return None
    from .tool_calls import check_flags, read_tools

    offered = read_tools(tool, choice)
    if offered is not None:
        flags = {"--batch/--parallel": batched, "--raw (tools go through the chat template)": raw}
        flags["--json-schema, --grammar or --format"] = constrained and offered.choice != "none"
        check_flags(flags)
    return offered


def _check_batch(
    batch: str | None, parallel: int | None, prompt: str | None, conflicts: dict[str, bool]
) -> bool:
    """Whether this is a --batch/--parallel run (its flags checked first)."""
    if batch is None and parallel is None:
        return False
    from .batch import check_flags

    check_flags(batch, parallel, prompt, conflicts)
    return True


def _generate(
    engine: Session, resolved: ResolvedModel, text: str, system: str | None,
    sampling: SamplingParams, options: GenerateOptions, *, raw: bool, drafter: Session | str | None,
) -> Generation:  # fmt: skip
    from infer.runtime import Message, generate

    messages = [Message("system", system)] if system else []
    messages.append(Message("user", text))
    template = resolved.defaults.chat_template
    return generate(
        engine, messages, sampling, options, raw=raw, template=template, drafter=drafter
    )


def chat(
    model: ModelArg,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    ctx_size: CtxSizeOpt = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    rpc: RpcOpt = None,
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
) -> None:
    """Chat with MODEL on a terminal (the same as `infer run MODEL` with no prompt)."""
    # Exactly `infer run MODEL` without a prompt, so off a terminal it also does what run does:
    # piped stdin gets one answer, no input at all is the usage error; it never waits.
    run(
        model,
        None,
        system=system,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
        max_tokens=max_tokens,
        stop=stop,
        ctx_size=ctx_size,
        threads=threads,
        gpu_layers=gpu_layers,
        rpc=rpc,
        raw=raw,
        stats=stats,
        verbose=verbose,
        continue_=continue_,
        markdown=markdown,
        offline=offline,
        draft=draft,
        draft_max=draft_max,
        draft_ngram=draft_ngram,
        draft_always=draft_always,
        no_prompt_cache=no_prompt_cache,
        json_schema=json_schema,
        grammar=grammar,
        fmt=fmt,
        remote=remote,
        api_key=api_key,
        api_key_file=api_key_file,
        timeout=timeout,
    )


def _stream(gen: Generation, model_name: str, *, json_out: bool) -> None:
    with cancel_on_sigint() as cancel:
        gen.cancel = cancel
        try:
            for piece in gen:
                if not json_out:
                    output.write_answer(piece)
        except Interrupted:
            _finish(gen, model_name, json_out=json_out)
            raise
    _finish(gen, model_name, json_out=json_out)
    if gen.stats.finish_reason == "context":
        output.warn(
            f"the answer was cut off: the context window ({gen.session.n_ctx} tokens) is full; "
            "raise --ctx-size"
        )


def _finish(gen: Generation, model_name: str, *, json_out: bool) -> None:
    stats = gen.stats
    output.end_answer(model_name, gen.text, stats.finish_reason, stats.as_dict(), json_out=json_out)
