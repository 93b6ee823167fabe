"""Asking an Answerer (runtime/answer.py) what `infer run` and `infer chat` ask: one answer
streamed to stdout, a --batch, a tool run or the chat — of the local model (loaded here) or of
a remote, driven the same way. The flags arrive typed (RunArgs) from cli/run.py."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import typer

from infer.runtime.answer import AnswerRequest
from infer.runtime.errors import IncompleteAnswerError, Interrupted, UsageError
from infer.runtime.options import Overrides

from . import output
from .inputs import prompt_text, stdin_is_terminal
from .loading import constraint, generate_options, load_drafter, load_options, load_session
from .media import projector, read_all, with_media
from .models import resolve_or_pull
from .remote import Given, RemoteFlags
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    from infer.runtime.answer import Answer, Answerer
    from infer.runtime.media import Media
    from infer.runtime.models.registry import ModelDefaults
    from infer.runtime.params import GenerateOptions, LoadOptions

    from .tool_calls import Offered

NEEDS_PROMPT = '--tool needs a PROMPT: infer run MODEL "PROMPT" --tool ...'


@dataclass(frozen=True)
class LocalFlags:
    """How the local engine loads and runs the model (a remote refuses each by name)."""

    ctx_size: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    rpc: str | None = None
    lora: tuple[str, ...] = ()
    verbose: bool = False
    offline: bool = False
    draft: str | None = None
    draft_max: int | None = None
    draft_ngram: int | None = None
    draft_always: bool = False
    no_prompt_cache: bool = False
    mmproj: str | None = None  # the projector for images and audio (cli/media.py)
    deterministic: bool = False  # --batch's answers independent of the batch (docs/determinism.md)


@dataclass(frozen=True)
class RunArgs:
    """`infer run`'s and `infer chat`'s flags, by what they are for."""

    model: str
    prompt: str | None = None
    system: str | None = None
    overrides: Overrides = field(default_factory=Overrides)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    raw: bool = False
    stats: bool = False
    json_out: bool = False
    continue_: bool = False
    markdown: bool = False
    json_schema: str | None = None
    grammar: str | None = None
    fmt: str | None = None
    tool: tuple[str, ...] = ()
    tool_choice: str | None = None
    images: tuple[str, ...] = ()  # --image files ('-': stdin), placed before the prompt
    audio: tuple[str, ...] = ()
    batch: str | None = None
    parallel: int | None = None
    suffix: str | None = None  # fill-in-the-middle: PROMPT is the code before the gap
    logprobs: int | None = None  # --logprobs N: into the JSON output
    local: LocalFlags = field(default_factory=LocalFlags)
    remote: RemoteFlags = field(default_factory=RemoteFlags)

    @property
    def batched(self) -> bool:
        return self.batch is not None or self.parallel is not None


def execute(args: RunArgs, given: Given) -> None:
    """run and chat: one answer, a --batch, a tool run or the chat, asked of the local model
    or of a remote (`given` tells which flags were typed, for the remote's checks)."""
    from .remote import LOCAL_ONLY, remote_url

    url = remote_url(args.remote.url, LOCAL_ONLY, given) if args.remote.any() else None
    if args.suffix is not None:
        _check_suffix(args, remote=url is not None)
    if url is None:
        _execute_local(args)
    else:
        _execute_remote(args, url)


def _execute_local(args: RunArgs) -> None:
    from infer.runtime.options import sampling

    conflicts = {"--continue": args.continue_, "--markdown": args.markdown}
    batched = _check_batch(args, conflicts | {"--draft": bool(args.local.draft)})
    if args.local.deterministic and not batched:  # one answer is decoded alone already
        raise UsageError("--deterministic is for --batch FILE (and infer serve)")
    _check_logprobs(args, batched)
    grammar = constraint(args.json_schema, args.grammar, args.fmt)
    offered = _tools(args, constrained=bool(grammar), what="--json-schema, --grammar or --format")
    media = _media_flags(args, batched or offered is not None)
    text = None if batched else _prompt(args, media)
    resolved = resolve_or_pull(args.model, offline=args.local.offline)
    d, local, quiet = resolved.defaults, args.local, args.json_out
    engine_options, options = _options(args, d)
    mmproj = projector(local.mmproj, resolved.path, needed=bool(media))
    engine_options = replace(engine_options, mmproj=mmproj)
    system = None if args.suffix is not None else args.system or d.system
    params = replace(sampling(args.overrides, d.sampling), grammar=grammar)
    if batched:
        from .batch import run_batch

        return run_batch(
            resolved,
            args.batch or "-",
            args.parallel,
            params,
            options,
            engine_options,
            system=system,
            raw=args.raw,
            template=d.chat_template,
            stats=args.stats,
            json_out=quiet,
        )
    session = load_session(resolved, engine_options, quiet=quiet)
    drafter = load_drafter(local.draft, session, engine_options, offline=local.offline, quiet=quiet)
    if offered is not None:
        from .tool_calls import answer

        if text is None:
            raise UsageError(NEEDS_PROMPT)
        return answer(
            session,
            resolved,
            text,
            system,
            params,
            options,
            offered,
            drafter=drafter,
            json_out=quiet,
            stats=args.stats,
        )
    from infer.runtime.local import LocalAnswerer

    answerer = LocalAnswerer(
        session,
        resolved.name,
        str(resolved.path),
        defaults=d.sampling,
        template=d.chat_template,
        drafter=drafter,
        options=options,
    )
    base = replace(_request(args), grammar=grammar)
    _answer_or_chat(answerer, args, text, system, base=base, media=media)


def _media_flags(args: RunArgs, excluded: bool) -> tuple[Media, ...]:
    """--image and --audio read and checked before the model loads."""
    if not (args.images or args.audio):
        return ()
    if excluded:
        raise UsageError("--image and --audio do not combine with --batch, --parallel or --tool")
    if args.local.draft:
        raise UsageError("--image and --audio do not combine with --draft yet")
    return read_all(list(args.images), list(args.audio))


def _prompt(args: RunArgs, media: tuple[Media, ...]) -> str | None:
    """The prompt; with a medium read from stdin, only the PROMPT argument (stdin is taken)."""
    if "-" in args.images or "-" in args.audio:
        if args.prompt is None:
            raise UsageError(
                'with --image - (stdin) give the question as PROMPT: infer run MODEL "PROMPT"'
            )
        return args.prompt
    return prompt_text(args.prompt)


def _check_suffix(args: RunArgs, *, remote: bool) -> None:
    """--suffix fills in the middle of one PROMPT on the local engine: what cannot go with it."""
    conflicts = {
        "--remote": remote,
        "--batch/--parallel": args.batched,
        "--system": args.system is not None,
        "--tool": bool(args.tool),
        "--continue": args.continue_,
    }
    given = [flag for flag, on in conflicts.items() if on]
    if given:
        raise UsageError(f"--suffix does not combine with {', '.join(given)}")
    if args.prompt is None and stdin_is_terminal():
        raise UsageError("--suffix needs a PROMPT: the code before the gap")


def _options(args: RunArgs, defaults: ModelDefaults) -> tuple[LoadOptions, GenerateOptions]:
    """How the model loads and how it generates, from the flags over its models.toml entry."""
    local = args.local
    engine_options = load_options(
        defaults,
        ctx_size=local.ctx_size,
        threads=local.threads,
        gpu_layers=local.gpu_layers,
        verbose=local.verbose,
        no_prompt_cache=local.no_prompt_cache,
        rpc=local.rpc,
        lora=local.lora,
        deterministic=local.deterministic,
    )
    options = generate_options(
        max_tokens=args.max_tokens,
        stop=list(args.stop),
        draft_max=local.draft_max,
        draft_ngram=local.draft_ngram,
        draft_always=local.draft_always,
    )
    return engine_options, replace(options, logprobs=args.logprobs)


def _execute_remote(args: RunArgs, url: str) -> None:
    from .remote import connect, response_format

    _check_batch(args, {"--continue": args.continue_, "--markdown": args.markdown})
    _check_logprobs(args, False)
    if args.logprobs is not None and args.batched:  # its lines carry no logprobs (yet)
        raise UsageError("--logprobs with --remote answers one prompt: not with --batch")
    if args.json_schema is not None and args.fmt is not None:
        raise UsageError("give one of --json-schema and --format")
    fmt = response_format(args.json_schema, args.fmt)
    offered = _tools(args, constrained=fmt is not None, what="--json-schema or --format")
    with connect(url, args.remote) as remote:
        answerer = remote.answerer(args.model)
        if args.batched:
            from .batch import answer_batch

            base = replace(_request(args, fmt), messages=_system(args.system))
            return answer_batch(answerer, args.batch or "-", args.parallel, base)
        media = _media_flags(args, offered is not None)
        if media and args.raw:
            raise UsageError("--raw does not take --image or --audio over --remote")
        text = _prompt(args, media)
        if text is None and offered is not None:
            raise UsageError(NEEDS_PROMPT)
        if text is None and args.raw:
            raise UsageError("--raw does not combine with the chat over --remote: give a PROMPT")
        request = _request(args, fmt, offered)
        _answer_or_chat(
            answerer, args, text, args.system, base=request, offered=offered, media=media
        )


def _system(system: str | None) -> tuple[dict[str, Any], ...]:
    return ({"role": "system", "content": system},) if system else ()


def _request(
    args: RunArgs,
    response_format: dict[str, object] | None = None,
    offered: Offered | None = None,
) -> AnswerRequest:
    """The request's settings from the flags (messages are added per question)."""
    tools = tuple(offered.tools) if offered is not None else ()
    return AnswerRequest(
        (),
        raw=args.raw,
        overrides=args.overrides,
        max_tokens=args.max_tokens,
        stop=args.stop,
        logprobs=args.logprobs,
        response_format=response_format,
        tools=tools,
        tool_choice=offered.openai_choice() if offered is not None else None,
        suffix=args.suffix,
    )


def _answer_or_chat(
    answerer: Answerer,
    args: RunArgs,
    text: str | None,
    system: str | None,
    *,
    base: AnswerRequest,
    offered: Offered | None = None,
    media: tuple[Media, ...] = (),
) -> None:
    """One answer to `text` (after `media`) with `base`'s settings, or the chat when there is
    none (the media then go with its first message)."""
    if text is None:
        from .chat import ChatSettings, start

        settings = ChatSettings.of(base, stats=args.stats, markdown=args.markdown)
        raise typer.Exit(start(answerer, settings, system, args.continue_, media))
    request = replace(base, messages=with_media(AnswerRequest.of(text, system).messages, media))
    if offered is not None:
        from .remote import answer_with_tools

        return answer_with_tools(
            answerer, request, offered, json_out=args.json_out, stats=args.stats
        )
    answer = _stream(answerer, request, json_out=args.json_out)
    if args.stats:
        output.print_stats(answer.stats, remote=_remote_of(answerer))
    if request.grammar and answer.stats.finish_reason in ("length", "context"):
        _cut_off(
            answer, "JSON" if args.json_schema is not None or args.fmt == "json" else "grammar"
        )


def _remote_of(answerer: Answerer) -> str | None:
    """The URL a remote answerer's stats line names; None for the local engine."""
    return answerer.where if answerer.window() is None else None


def _cut_off(answer: Answer, what: str) -> None:
    """A constrained answer stopped by a limit is incomplete (JSON that does not parse)."""
    from infer.runtime.errors import InferError

    limit = "--max-tokens" if answer.stats.finish_reason == "length" else "--ctx-size"
    raise InferError(
        f"the answer was cut off at {answer.stats.generated_tokens} tokens before the {what} "
        f"was complete ({limit})"
    )


def _tools(args: RunArgs, *, constrained: bool, what: str) -> Offered | None:
    """--tool and --tool-choice, checked before the model loads; None without --tool."""
    if not args.tool and args.tool_choice is None:
        return None
    from .tool_calls import check_flags, read_tools

    offered = read_tools(list(args.tool), args.tool_choice)
    if offered is not None:
        flags = {"--batch/--parallel": args.batched}
        flags["--raw (tools go through the chat template)"] = args.raw
        flags[what] = constrained and offered.choice != "none"
        check_flags(flags)
    return offered


def _check_logprobs(args: RunArgs, batched: bool) -> None:
    """--logprobs: values for the JSON output, from plain decoding."""
    if args.logprobs is None:
        return
    if not (args.json_out or batched):
        raise UsageError("--logprobs goes into the JSON output: add --json (or use --batch)")
    for flag, given in (("--draft", bool(args.local.draft)), ("--tool", bool(args.tool))):
        if given:
            raise UsageError(f"--logprobs cannot be combined with {flag}")


def _check_batch(args: RunArgs, conflicts: dict[str, bool]) -> bool:
    """Whether this is a --batch/--parallel run (its flags checked first)."""
    if not args.batched:
        return False
    from .batch import check_flags

    check_flags(args.batch, args.parallel, args.prompt, conflicts)
    return True


def _stream(answerer: Answerer, request: AnswerRequest, *, json_out: bool) -> Answer:
    """The answer to `request`, written to stdout as it comes (a first Ctrl-C stops it and
    keeps what was said; a second one, or one while a remote has not answered yet, closes the
    connection at once)."""
    with cancel_on_sigint() as cancel:
        answer = answerer.answer(request, cancel)
        pieces = iter(answer)
        try:
            for piece in pieces:
                if not json_out:
                    output.write_answer(piece)
        except Interrupted:
            _finish(answerer, answer, json_out=json_out, reason="interrupted")
            raise
        except KeyboardInterrupt:
            _close(pieces)
            _finish(answerer, answer, json_out=json_out, reason="interrupted")
            raise Interrupted(answer.text) from None
        except IncompleteAnswerError:
            _finish(answerer, answer, json_out=json_out, reason="incomplete")
            raise
    _finish(answerer, answer, json_out=json_out)
    window = answerer.window()
    if answer.stats.finish_reason == "context" and window is not None:
        output.warn(
            f"the answer was cut off: the context window ({window.size} tokens) is full; "
            "raise --ctx-size"
        )
    return answer


def _close(pieces: object) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()  # a remote's stream: closing the connection stops the server generating


def _finish(answerer: Answerer, answer: Answer, *, json_out: bool, reason: str = "") -> None:
    stats = answer.stats
    if reason:
        stats.finish_reason = reason
    output.end_answer(
        answerer.model,
        answer.text,
        stats.finish_reason,
        stats.as_dict(),
        json_out=json_out,
        logprobs=answer.logprobs,
    )
