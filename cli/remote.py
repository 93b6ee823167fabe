"""`--remote URL` (or INFER_REMOTE): what `infer run`/`infer chat`/`infer bench` check before
they ask a remote server (runtime/remote.py) instead of a local model — the flags a remote
cannot honour, refused by name — and what only a remote run prints (tool calls the server
parsed). The answering itself is the local run's: both are an Answerer to cli/answering.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import IncompleteAnswerError, Interrupted, UsageError

from . import output
from .inputs import read_file
from .remote_list import RemoteFlags, connect

if TYPE_CHECKING:
    import typer

    from infer.runtime.answer import Answer, Answerer, AnswerRequest

    from .tool_calls import Offered

__all__ = ["LOCAL_ONLY", "RemoteFlags", "connect", "on_command_line", "remote_url"]

# Flags that tell the local engine how to load or run a model: a remote has its own, so each
# is refused by name rather than dropped. (Given through their environment variables they are
# a local default, and are ignored.)
LOCAL_ONLY = (
    "ctx_size",
    "threads",
    "gpu_layers",
    "rpc",
    "lora",
    "verbose",
    "offline",
    "draft",
    "draft_max",
    "draft_ngram",
    "draft_always",
    "no_prompt_cache",
    "deterministic",
    "grammar",
    "mmproj",
)
REMOTE_ONLY = ("api_key", "api_key_file", "timeout")
Given = Callable[[str], bool]  # whether the user typed the option of this parameter name


def on_command_line(ctx: typer.Context) -> Given:
    """Whether an option was typed (not taken from its environment variable or default), told
    by click's public Context.get_parameter_source."""

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return given


def flag(name: str) -> str:
    """The long flag of a parameter name (every option checked here is spelt so)."""
    return "--" + name.rstrip("_").replace("_", "-")


def remote_url(url: str | None, local_only: tuple[str, ...], given: Given) -> str | None:
    """The remote the command runs against, after the flags that need one or cannot apply to
    one (`local_only`) are checked — as typed on the command line: through their environment
    variables they are a default for the other kind of run, and are ignored. None: run here."""
    if not url:
        needing = [flag(name) for name in REMOTE_ONLY if given(name)]
        if needing:
            verb = "needs" if len(needing) == 1 else "need"
            raise UsageError(f"{', '.join(needing)} {verb} --remote URL (or INFER_REMOTE)")
        return None
    refused = [flag(name) for name in local_only if given(name)]
    if refused:
        raise UsageError(
            f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a "
            f"remote engine (--remote {url}): the server there loads and runs the model"
        )
    return url


def response_format(json_schema: str | None, fmt: str | None) -> dict[str, Any] | None:
    """--json-schema / --format json as OpenAI's response_format (the remote enforces it)."""
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


def answer_with_tools(
    answerer: Answerer, request: AnswerRequest, offered: Offered, *, json_out: bool, stats: bool
) -> None:
    """A remote answer with tools offered: held to its end (it may turn out to be a call, which
    the server parses), then printed as a local tool run prints it."""
    answer = answerer.answer(request, None)
    pieces = iter(answer)
    try:
        for _ in pieces:
            pass
    except KeyboardInterrupt:
        _close(pieces)  # closes the connection: the server stops generating
        _print(answerer.model, answer, "interrupted", json_out=json_out)
        raise Interrupted(answer.text) from None
    except IncompleteAnswerError:
        _print(answerer.model, answer, "incomplete", json_out=json_out)
        raise
    finally:
        _close(pieces)
    _print(answerer.model, answer, "", json_out=json_out)
    if stats:
        output.print_stats(answer.stats, remote=answerer.where)
    _check_complete(
        answer.stats.finish_reason, answer.stats.generated_tokens, answer.tool_calls, offered
    )


def _close(pieces: object) -> None:
    getattr(pieces, "close", lambda: None)()


def _print(model: str, answer: Answer, reason: str, *, json_out: bool) -> None:
    from .tool_calls import print_answer

    stats = answer.stats
    stats.finish_reason = reason or stats.finish_reason
    print_answer(
        model,
        answer.text or None,
        answer.tool_calls,
        stats.finish_reason,
        stats.as_dict(),
        json_out=json_out,
    )


def _check_complete(
    reason: str, tokens: int, calls: list[dict[str, Any]], offered: Offered
) -> None:
    """As a local run: a tool call cut off by the length limit is an error, not an answer (a
    required call, or calls the server sent in part)."""
    if reason != "length":
        return
    if offered.choice in ("auto", "none") and offered.only is None and not calls:
        return
    from .tool_calls import cut_off

    raise cut_off(tokens, "--max-tokens")
