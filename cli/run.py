"""`infer run`: one answer to a prompt (argument and/or stdin), streamed to stdout."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer

from infer.runtime.errors import Interrupted, ModelNotFoundError, UnknownDraftError, UsageError

from . import output
from .inputs import compose_prompt, read_stdin, stdin_is_terminal
from .models import resolve_or_pull
from .options import (
    BatchOpt,
    ContinueOpt,
    CtxSizeOpt,
    DraftAlwaysOpt,
    DraftMaxOpt,
    DraftNgramOpt,
    DraftOpt,
    GpuLayersOpt,
    JsonOpt,
    MarkdownOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelArg,
    NoPromptCacheOpt,
    OfflineOpt,
    ParallelOpt,
    PromptArg,
    RawOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    StatsOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
)  # fmt: skip
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.engine import Engine
    from infer.runtime.generation import Generation
    from infer.runtime.params import LoadOptions
    from infer.runtime.registry import ModelDefaults
    from infer.runtime.store import ResolvedModel


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
) -> None:
    """Answer PROMPT (and/or text piped on stdin) with MODEL, streaming to stdout. On a terminal
    with no PROMPT, open an interactive chat."""
    from infer.runtime import GenerateOptions, LoadOptions, SamplingParams

    batched = batch is not None or parallel is not None
    if batched:
        from .batch import check_flags

        conflicts = {"--continue": continue_, "--markdown": markdown, "--draft": bool(draft)}
        check_flags(batch, parallel, prompt, conflicts)
    interactive = not batched and prompt is None and stdin_is_terminal() and sys.stdout.isatty()
    if not batched and prompt is None and stdin_is_terminal() and not interactive:
        raise UsageError('no prompt given: infer run MODEL "PROMPT" (or pipe text on stdin)')
    text = None if interactive or batched else compose_prompt(prompt, read_stdin())
    resolved = resolve_or_pull(model, offline=offline)
    d = resolved.defaults
    sampling = SamplingParams(
        **_pick(d, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                repeat_penalty=repeat_penalty),
        seed=seed,
    ).validate()  # fmt: skip
    options = GenerateOptions(
        max_tokens=max_tokens, stop=list(stop or []), draft_max=draft_max, draft_ngram=draft_ngram,
        draft_adapt=not draft_always,
    ).validate()  # fmt: skip
    load_options = LoadOptions(
        ctx_size=ctx_size or d.ctx_size, threads=threads, gpu_layers=gpu_layers, verbose=verbose,
        prompt_cache=not no_prompt_cache,
    ).validate()  # fmt: skip
    if batch is not None:
        from .batch import run_batch

        return run_batch(
            resolved, batch, parallel, sampling, options, load_options, system=system or d.system,
            raw=raw, template=d.chat_template, stats=stats, json_out=json_out,
        )  # fmt: skip
    engine = _load(resolved, load_options, quiet=json_out)
    if draft:
        options.draft = _draft(draft, engine, load_options, offline=offline, quiet=json_out)
    system = system or d.system
    if text is None:
        from .chat import ChatSettings, start

        settings = ChatSettings(sampling, options, raw, d.chat_template, stats, markdown)
        raise typer.Exit(start(engine, resolved.name, resolved.path, settings, system, continue_))
    from infer.runtime import Message, generate

    messages = [Message("system", system)] if system else []
    messages.append(Message("user", text))
    gen = generate(engine, messages, sampling, options, raw=raw, template=d.chat_template)
    _stream(gen, resolved.name, json_out=json_out)
    if stats:
        output.print_stats(gen.stats)


def _pick(defaults: ModelDefaults, **flags: float | int | None) -> dict[str, float | int]:
    """Flags win over models.toml defaults; unset both → the dataclass default."""
    picked = {}
    for name, value in flags.items():
        chosen = value if value is not None else getattr(defaults, name)
        if chosen is not None:
            picked[name] = chosen
    return picked


def _load(resolved: ResolvedModel, options: LoadOptions, *, quiet: bool) -> Engine:
    from infer.runtime import load

    if quiet or not output.use_color(sys.stderr):
        return load(resolved, options)
    from rich.console import Console

    with Console(stderr=True).status("Loading model…", spinner="dots"):
        return load(resolved, options)


def _draft(
    draft: str, engine: Engine, options: LoadOptions, *, offline: bool, quiet: bool
) -> str | Engine:
    """--draft: "lookup" as is, anything else a model reference resolved like MODEL and loaded
    with the same settings and context size (its vocabulary is checked against the model's)."""
    from dataclasses import replace

    from infer.runtime.api import load_draft
    from infer.runtime.speculative import LOOKUP

    if draft == LOOKUP:
        return draft
    try:
        resolved = resolve_or_pull(draft, offline=offline)
    except ModelNotFoundError as e:
        import difflib

        close = difflib.get_close_matches(draft.lower(), [LOOKUP], n=1, cutoff=0.6) + e.close
        raise UnknownDraftError(e.name, e.known, close) from None
    draft_options = replace(options, ctx_size=engine.n_ctx, prompt_cache=False)
    if quiet or not output.use_color(sys.stderr):
        return load_draft(resolved, engine, draft_options)
    from rich.console import Console

    with Console(stderr=True).status("Loading draft model…", spinner="dots"):
        return load_draft(resolved, engine, draft_options)


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
            f"the answer was cut off: the context window ({gen.engine.n_ctx} tokens) is full; "
            "raise --ctx-size"
        )


def _finish(gen: Generation, model_name: str, *, json_out: bool) -> None:
    if json_out:
        record = {
            "model": model_name,
            "text": gen.text,
            "finish_reason": gen.stats.finish_reason,
            "stats": gen.stats.as_dict(),
        }
        output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
    elif gen.text and not gen.text.endswith("\n"):
        output.write_answer("\n")
