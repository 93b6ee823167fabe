"""`--remote URL` (or INFER_REMOTE): `infer run`, `infer chat`, `infer run --batch` and
`infer list --remote` against an OpenAI-compatible server (runtime/remote.py), printing exactly
what the local commands print. Model names pass through as the remote knows them."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import (
    IncompleteAnswerError,
    InferError,
    Interrupted,
    RemoteError,
    UsageError,
)

from . import output
from .chat import Repl, say
from .inputs import prompt_text, read_file
from .remote_list import connect

if TYPE_CHECKING:
    from infer.runtime.generation.batch_file import BatchItem
    from infer.runtime.remote import Remote, RemoteAnswer, RemoteRequest, RemoteStats

# Flags that tell the local engine how to load or run a model: a remote has its own, so each
# is refused by name rather than dropped. (Given through their environment variables they are
# a local default, and are ignored.)
LOCAL_ONLY = (
    "ctx_size", "threads", "gpu_layers", "rpc", "verbose", "offline", "draft", "draft_max",
    "draft_ngram", "draft_always", "no_prompt_cache", "grammar",
)  # fmt: skip
REMOTE_ONLY = ("api_key", "api_key_file", "timeout")


def remote_url(args: dict[str, Any], local_only: tuple[str, ...]) -> str | None:
    """The remote the command runs against, after the flags that need one or cannot apply to
    one (`local_only`) are checked — as typed on the command line: through their environment
    variables they are a default for the other kind of run, and are ignored. None: run here."""
    url = args.get("remote") or None
    if url is None:
        needing = [_flag(name) for name in REMOTE_ONLY if _given(name)]
        if needing:
            verb = "needs" if len(needing) == 1 else "need"
            raise UsageError(f"{', '.join(needing)} {verb} --remote URL (or INFER_REMOTE)")
        return None
    refused = [_flag(name) for name in local_only if _given(name)]
    if refused:
        raise UsageError(
            f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a "
            f"remote engine (--remote {url}): the server there loads and runs the model"
        )
    return url


def run_remote(args: dict[str, Any]) -> bool:
    """`infer run`/`infer chat` with `args` (their parameters by name) against the remote;
    False when no remote is set, for the local run to go on."""
    url = remote_url(args, LOCAL_ONLY)
    if url is None:
        return False
    request_fields = _fields(args)
    tools = _tools(args, request_fields)
    with connect(url, args) as remote:
        if args.get("batch") is not None or args.get("parallel") is not None:
            _batch(remote, args, request_fields)
        elif (text := prompt_text(args.get("prompt"))) is None:
            if tools:
                raise UsageError('--tool needs a PROMPT: infer run MODEL "PROMPT" --tool ...')
            _chat(remote, args, request_fields)
        else:
            request = _request(args["model"], text, args.get("system"), args, request_fields)
            _answer(remote, request, args["model"], json_out=args["json_out"], stats=args["stats"])
    return True


def _tools(args: dict[str, Any], fields: dict[str, Any]) -> bool:
    """--tool/--tool-choice as the request's tools and tool_choice (checked as a local run
    checks them); whether any are offered."""
    from .tool_calls import check_flags, read_tools

    offered = read_tools(args.get("tool"), args.get("tool_choice"))
    if offered is None:
        return False
    batched = args.get("batch") is not None or args.get("parallel") is not None
    check_flags(
        {
            "--batch/--parallel": batched,
            "--raw (tools go through the chat template)": bool(args.get("raw")),
            "--json-schema or --format": "response_format" in fields and offered.choice != "none",
        }
    )
    fields["tools"] = offered.tools
    fields["tool_choice"] = offered.openai_choice()
    return True


def _given(name: str) -> bool:
    """Whether the user typed this option (not its environment variable or default)."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _flag(name: str) -> str:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    for param in ctx.command.params if ctx else []:
        if param.name == name and param.opts:
            return str(max(param.opts, key=len))
    return "--" + name.rstrip("_").replace("_", "-")


def _fields(args: dict[str, Any]) -> dict[str, Any]:
    """The request fields of the sampling flags given (the remote's defaults for the rest),
    checked as a local run checks them."""
    from infer.runtime.params import GenerateOptions, SamplingParams
    from infer.runtime.remote import SAMPLING_FIELDS

    given = {k: args[k] for k in SAMPLING_FIELDS if args.get(k) is not None}
    SamplingParams(**given).validate()
    options = GenerateOptions(max_tokens=args.get("max_tokens"), stop=list(args.get("stop") or []))
    options.validate()
    fields: dict[str, Any] = dict(given)
    if options.max_tokens is not None:
        fields["max_tokens"] = options.max_tokens
    if options.stop:
        fields["stop"] = options.stop
    response_format = _response_format(args.get("json_schema"), args.get("fmt"))
    if response_format:
        fields["response_format"] = response_format
    return fields


def _response_format(json_schema: str | None, fmt: str | None) -> dict[str, Any] | None:
    """--json-schema / --format json as OpenAI's response_format (the remote enforces it)."""
    if json_schema is not None and fmt is not None:
        raise UsageError("give one of --json-schema and --format")
    if fmt is not None:
        if fmt != "json":
            raise UsageError(f"--format takes 'json' (got '{fmt}')")
        return {"type": "json_object"}
    if json_schema is None:
        return None
    text = read_file(json_schema[1:]) if json_schema.startswith("@") else json_schema
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--json-schema: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise UsageError("--json-schema: a JSON schema is an object")
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _request(
    model: str, text: str, system: str | None, args: dict[str, Any], fields: dict[str, Any]
) -> RemoteRequest:
    """A chat request, or with --raw the text as it is (/v1/completions)."""
    from infer.runtime.remote import RemoteRequest

    if args.get("raw"):
        prompt = f"{system}\n\n{text}" if system else text
        return RemoteRequest(model, prompt=prompt, fields=fields)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return RemoteRequest(model, messages=messages, fields=fields)


# --- one answer ---------------------------------------------------------------------------
def _answer(
    remote: Remote, request: RemoteRequest, model: str, *, json_out: bool, stats: bool
) -> None:
    answer = remote.answer(request)
    pieces = iter(answer)
    held = "tools" in request.fields  # the answer may turn out to be a call: printed at the end
    try:
        for piece in pieces:
            if not json_out and not held:
                output.write_answer(piece)
    except KeyboardInterrupt:
        pieces.close()  # closes the connection: the server stops generating
        answer.stats.finish_reason = "interrupted"
        _finish(answer, model, json_out=json_out)
        raise Interrupted(answer.text) from None
    except IncompleteAnswerError:
        answer.stats.finish_reason = "incomplete"
        _finish(answer, model, json_out=json_out)
        raise
    finally:
        pieces.close()
    _finish(answer, model, json_out=json_out)
    if stats:
        output.dim(stats_line(answer.stats, remote.url))
    _check_complete(answer)


def _check_complete(answer: RemoteAnswer) -> None:
    """As a local run: a tool call cut off by the length limit is an error, not an answer (a
    required call, or calls the server sent in part)."""
    fields = answer.request.fields
    if "tools" not in fields or answer.stats.finish_reason != "length":
        return
    if fields.get("tool_choice") in (None, "auto", "none") and not answer.tool_calls:
        return
    from .tool_calls import cut_off

    raise cut_off(answer.stats.generated_tokens, "--max-tokens")


def _finish(answer: RemoteAnswer, model: str, *, json_out: bool) -> None:
    """As a local run ends (output.end_answer; with tools offered, tools.print_answer)."""
    stats = answer.stats
    if "tools" in answer.request.fields:
        from .tool_calls import print_answer

        content = answer.text or None
        print_answer(model, content, answer.tool_calls, stats.finish_reason, stats.as_dict(),
                     json_out=json_out)  # fmt: skip
        return
    output.end_answer(model, answer.text, stats.finish_reason, stats.as_dict(), json_out=json_out)


def stats_line(stats: RemoteStats, url: str) -> str:
    return (
        f"remote {url} · prompt {stats.prompt_tokens} tok"
        f" · first token {stats.ttft_s * 1000:.0f} ms"
        f" · generated {stats.generated_tokens} tok, {stats.generate_tps:.1f} tok/s"
    )


# --- the chat -----------------------------------------------------------------------------
class _NoEngine:
    """The REPL resets its engine after a second Ctrl-C; a remote keeps no state of ours."""

    def reset(self) -> None:
        pass


class RemoteRepl(Repl):
    """The chat's REPL (line editing, slash commands, /save and /load), each answer asked of
    the remote with the whole conversation."""

    def __init__(self, remote: Remote, model: str, settings: Any, given: set[str]) -> None:
        from infer.runtime.generation.conversation import Conversation

        conversation = Conversation(model, None)
        super().__init__(_NoEngine(), conversation, settings, Path(remote.url))
        self.remote, self.given = remote, given
        self.response_format: dict[str, Any] | None = None
        self.last: RemoteAnswer | None = None

    def _prepare(self) -> Any:
        from infer.runtime.remote import RemoteRequest

        s = self.settings
        fields = {k: getattr(s.sampling, k) for k in sorted(self.given)}
        if s.options.max_tokens:
            fields["max_tokens"] = s.options.max_tokens
        if s.options.stop:
            fields["stop"] = list(s.options.stop)
        if self.response_format:
            fields["response_format"] = self.response_format
        messages = [{"role": m.role, "content": m.content} for m in self.conversation.messages()]
        self.last = self.remote.answer(
            RemoteRequest(self.conversation.model, messages, None, fields)
        )
        return self.last

    def answer(self) -> None:
        wanted, self.settings.stats = self.settings.stats, False
        self.last = None
        try:
            super().answer()
        finally:
            self.settings.stats = wanted
        if wanted and self.last is not None and self.last.stats.generated_tokens:
            output.dim(stats_line(self.last.stats, self.remote.url))

    def cmd_set(self, arg: str) -> None:
        super().cmd_set(arg)
        key = arg.partition(" ")[0].replace("-", "_").lower()
        if key in {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"}:
            self.given.add(key)

    def cmd_format(self, arg: str) -> None:
        if arg not in ("json", "off"):
            raise UsageError("usage: /format json|off")
        self.response_format = {"type": "json_object"} if arg == "json" else None
        say(f"(format {arg})")

    def cmd_show(self, arg: str) -> None:
        s = self.settings
        settings = {k: getattr(s.sampling, k) for k in sorted(self.given)}
        say(
            f"model: {self.conversation.model} on {self.remote.url}\n"
            f"settings: {settings or 'the remote defaults'}"
            f" · max_tokens {s.options.max_tokens or 'the remote default'}"
            f" · stop {s.options.stop or 'none'}"
            f" · format {'json' if self.response_format else 'free text'}\n"
            f"system: {self.conversation.system or '(none)'}\n"
            f"{len(self.conversation.turns)} messages (the remote keeps the context)"
        )

    def cmd_context(self, arg: str) -> None:
        say(f"{len(self.conversation.turns)} messages, sent whole with each question")


def _chat(remote: Remote, args: dict[str, Any], fields: dict[str, Any]) -> None:
    import typer

    from infer.runtime.generation.conversation import last_path, load
    from infer.runtime.params import GenerateOptions, SamplingParams
    from infer.runtime.remote import SAMPLING_FIELDS

    from .chat import ChatSettings

    if args.get("raw"):
        raise UsageError("--raw does not combine with the chat over --remote: give a PROMPT")
    given = {k for k in SAMPLING_FIELDS if k in fields}
    sampling = SamplingParams(**{k: fields[k] for k in given})
    options = GenerateOptions(max_tokens=fields.get("max_tokens"), stop=fields.get("stop", []))
    settings = ChatSettings(sampling, options, stats=bool(args.get("stats")))
    settings.markdown = bool(args.get("markdown"))
    repl = RemoteRepl(remote, args["model"], settings, given)
    repl.response_format = fields.get("response_format")
    repl.conversation.system = args.get("system")
    if args.get("continue_"):
        try:
            repl.conversation = load(last_path(args["model"]))
            say(f"(continuing the last conversation: {len(repl.conversation.turns)} messages)")
        except InferError:
            say("(no earlier conversation with this model; starting a new one)")
    raise typer.Exit(repl.loop())


# --- --batch ------------------------------------------------------------------------------
def _batch(remote: Remote, args: dict[str, Any], fields: dict[str, Any]) -> None:
    """Each prompt of FILE its own request, `--parallel` at a time; one JSON line per prompt
    in input order, as the local --batch writes them."""
    from .batch import DEFAULT_PARALLEL, check_flags

    conflicts = {"--continue": bool(args.get("continue_")), "--markdown": bool(args["markdown"])}
    check_flags(args.get("batch"), args.get("parallel"), args.get("prompt"), conflicts)
    items, line_fields = _read_items(args["batch"])
    parallel = args.get("parallel") or DEFAULT_PARALLEL
    cancel = threading.Event()
    results: dict[int, dict[str, Any]] = {}
    written = 0

    def one(index: int) -> dict[str, Any]:
        item = items[index]
        system = item.system if item.system is not None else args.get("system")
        request = _request(args["model"], item.prompt, system, args, fields | line_fields[index])
        return _batch_record(remote, request, cancel)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(one, i) for i in range(len(items))]
        try:
            for index, future in enumerate(futures):
                results[index] = future.result()
                written = _write_ready(items, results, written)
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            for index, future in enumerate(futures):
                if future.done() and not future.cancelled() and future.exception() is None:
                    results.setdefault(index, future.result())
            _write_ready(items, results, written, everything=True)
            raise
    failed = sum("error" in r for r in results.values())
    if failed:
        output.warn(f'{failed} prompt(s) failed: see "error" in their results')


def _read_items(source: str) -> tuple[list[BatchItem], list[dict[str, Any]]]:
    """The prompts of FILE, parsed as the local --batch parses them, and each JSON line's own
    request fields (only those it sets: the remote's defaults stay for the rest)."""
    from infer.runtime.generation.batch_file import parse_batch
    from infer.runtime.params import GenerateOptions, SamplingParams
    from infer.runtime.remote import SAMPLING_FIELDS

    from .batch import _read_source

    name, text = _read_source(source)
    suffix = Path(source).suffix if source != "-" else ""
    items = parse_batch(text, SamplingParams(), GenerateOptions(), name=name, suffix=suffix)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    own = []
    for item in items:
        try:
            raw = json.loads(lines[item.line - 1])
        except ValueError:
            raw = None
        keys = set(raw) if isinstance(raw, dict) else set()
        mine: dict[str, Any] = {k: getattr(item.sampling, k) for k in SAMPLING_FIELDS if k in keys}
        if "max_tokens" in keys and item.options.max_tokens is not None:
            mine["max_tokens"] = item.options.max_tokens
        if "stop" in keys and item.options.stop:
            mine["stop"] = item.options.stop
        own.append(mine)
    return items, own


def _batch_record(
    remote: Remote, request: RemoteRequest, cancel: threading.Event
) -> dict[str, Any]:
    """One prompt's result; a request the remote refuses (400) fails that prompt only."""
    answer = remote.answer(request, cancel)
    error = None
    try:
        for _ in answer:
            pass
    except RemoteError as e:
        if e.status not in (400, 413, 422):
            raise
        error, answer.stats.finish_reason = str(e), "error"
    except Interrupted:
        answer.stats.finish_reason = "interrupted"
    record: dict[str, Any] = {
        "text": answer.text,
        "finish_reason": answer.stats.finish_reason,
        "prompt_tokens": answer.stats.prompt_tokens,
        "generated_tokens": answer.stats.generated_tokens,
    }
    if error is not None:
        record["error"] = error
    return record


def _write_ready(
    items: list[BatchItem], results: dict[int, dict[str, Any]], written: int,
    *, everything: bool = False,
) -> int:  # fmt: skip
    """Write the results that are next in input order (all of them with `everything`)."""
    order = sorted(i for i in results if i >= written) if everything else []
    while not everything and written in results:
        order.append(written)
        written += 1
    for index in order:
        item = items[index]
        record: dict[str, Any] = {"index": index}
        if item.id is not None:
            record["id"] = item.id
        record.update(prompt=item.prompt, **results[index])
        output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
    return written
