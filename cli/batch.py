"""`infer run MODEL --batch FILE`: many prompts decoded together (runtime/generation/batch.py),
one JSON result per prompt on stdout in input order, progress on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infer.runtime.errors import Interrupted, TemplateError, UsageError

from . import output
from .inputs import read_file, read_stream
from .signals import cancel_on_sigint

if TYPE_CHECKING:
    import threading

    from infer.runtime.answer import Answerer, AnswerRequest
    from infer.runtime.generation.batch import BatchDecoder, BatchRequest, BatchResult, BatchStats
    from infer.runtime.generation.batch_file import BatchItem
    from infer.runtime.llama.interface import Model
    from infer.runtime.models.resolve import ResolvedModel
    from infer.runtime.params import GenerateOptions, LoadOptions, SamplingParams

DEFAULT_PARALLEL = 4
MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ (runtime.batch.MAX_PARALLEL, without importing it)


def check_flags(
    batch: str | None, parallel: int | None, prompt: str | None, conflicts: dict[str, bool]
) -> None:
    """Usage errors of --batch/--parallel, before anything is read or loaded."""
    if batch is None:
        raise UsageError("--parallel needs --batch FILE")
    if prompt is not None:
        raise UsageError("--batch reads its prompts from FILE: drop the PROMPT argument")
    for flag, given in conflicts.items():
        if given:
            raise UsageError(f"{flag} does not combine with --batch")
    if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel must be between 1 and {MAX_PARALLEL} (got {parallel})")


def read_batch(source: str, sampling: SamplingParams, options: GenerateOptions) -> list[BatchItem]:
    """The prompts of FILE (or stdin for "-"), read by the bounded reader and parsed by the
    runtime (JSON Lines or one prompt per line, told by the suffix, then the first line)."""
    from infer.runtime.generation.batch_file import parse_batch

    name, text = _read_source(source)
    suffix = Path(source).suffix if source != "-" else ""
    return parse_batch(text, sampling, options, name=name, suffix=suffix)


def _read_source(source: str) -> tuple[str, str]:
    if source == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--batch - reads the prompts from stdin: pipe them in")
        return "stdin", read_stream(sys.stdin.buffer, "stdin")
    return source, read_file(source)


def run_batch(
    resolved: ResolvedModel,
    source: str,
    parallel: int | None,
    sampling: SamplingParams,
    options: GenerateOptions,
    load_options: LoadOptions,
    *,
    system: str | None,
    raw: bool,
    template: str | None,
    stats: bool,
    json_out: bool,
) -> None:
    """Read FILE, load MODEL, decode every prompt `parallel` at a time, write JSONL results."""
    from infer.runtime.generation.batch import BatchDecoder

    from .loading import load_model

    items = read_batch(source, sampling, options)
    # The decoder makes the only context; the prompt cache serves `infer run`'s sessions.
    engine = load_model(resolved, replace(load_options, prompt_cache=False), quiet=json_out)
    requests, failed = _tokenize(engine, items, system, raw=raw, template=template)
    parallel = parallel or DEFAULT_PARALLEL
    writer = _Writer(items)
    for result in failed:
        writer.add(result)
    with BatchDecoder.for_requests(engine, requests, parallel, load_options.ctx_size) as decoder:
        _decode(decoder, requests, writer, len(failed), quiet=json_out)
    if stats:
        _print_stats(decoder, len(items), engine.load_s)
    failed_lines = sum(result.error is not None for result in writer.written)
    if failed_lines:
        output.warn(f'{failed_lines} prompt(s) failed: see "error" in their results')
    constrained = sum(
        result.finish_reason in ("length", "context") and bool(items[result.index].sampling.grammar)
        for result in writer.written
    )
    if constrained:
        output.warn(
            f"{constrained} constrained answer(s) cut off before the grammar was complete "
            '(finish_reason "length"/"context": raise --max-tokens or --ctx-size)'
        )
    cut = sum(result.finish_reason == "context" for result in writer.written)
    if cut:
        output.warn(
            f"{cut} answer(s) cut off: the context window ({decoder.n_ctx_seq} tokens per "
            "sequence) is full; raise --ctx-size"
        )


def _tokenize(
    engine: Model,
    items: list[BatchItem],
    system: str | None,
    *,
    raw: bool,
    template: str | None,
) -> tuple[list[BatchRequest], list[BatchResult]]:
    """Prompt tokens per item, as `infer run` makes them. A template that refuses one
    conversation fails that item only; a model with no template at all fails the run."""
    from infer.runtime import prompt_tokens
    from infer.runtime.generation.batch import BatchRequest, BatchResult
    from infer.runtime.generation.templates import build_messages

    requests, failed = [], []
    for index, item in enumerate(items):
        messages = build_messages(item.prompt, system if item.system is None else item.system)
        try:
            tokens = prompt_tokens(engine, messages, raw=raw, template=template)
        except TemplateError as e:
            if not (raw or template or engine.chat_template):
                raise
            failed.append(BatchResult(index, finish_reason="error", error=str(e)))
            continue
        requests.append(BatchRequest(index, tokens, item.sampling, item.options))
    return requests, failed


def _decode(
    decoder: BatchDecoder, requests: list[BatchRequest], writer: _Writer, done: int, *, quiet: bool
) -> None:
    progress = _Progress(len(writer.items), done, enabled=not quiet)
    with cancel_on_sigint() as cancel:
        try:
            for result in decoder.run(requests, cancel, on_step=progress.update):
                writer.add(result)
        except Interrupted:
            writer.flush()  # the finished answers and the partial ones, still in input order
            raise
        finally:
            progress.close(decoder.stats)


def answer_batch(
    answerer: Answerer, source: str, parallel: int | None, base: AnswerRequest
) -> None:
    """--batch against an answerer that takes requests one at a time (a remote): each prompt
    its own request, `parallel` at a time, written by the same writer, in input order. Only
    what a line (or a flag) sets is sent: the answerer's defaults hold for the rest."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    items, requests = _requests(source, base)
    writer, cancel = _Writer(items), threading.Event()
    with ThreadPoolExecutor(max_workers=parallel or DEFAULT_PARALLEL) as pool:
        futures = [pool.submit(_one, answerer, i, r, cancel) for i, r in enumerate(requests)]
        try:
            for future in futures:
                writer.add(future.result())
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is None:
                    writer.add(future.result())
            writer.flush()
            raise
    failed = sum(result.error is not None for result in writer.written)
    if failed:
        output.warn(f'{failed} prompt(s) failed: see "error" in their results')


def _requests(source: str, base: AnswerRequest) -> tuple[list[BatchItem], list[AnswerRequest]]:
    """FILE's items and each one's request: the line's own settings over the flags'."""
    from infer.runtime.generation.batch_file import parse_batch
    from infer.runtime.params import GenerateOptions, SamplingParams

    name, text = _read_source(source)  # once: stdin cannot be read twice
    suffix = Path(source).suffix if source != "-" else ""
    items = parse_batch(text, SamplingParams(), GenerateOptions(), name=name, suffix=suffix)
    requests = [
        replace(
            base,
            messages=_messages(item, base),
            overrides=item.own.over(base.overrides),
            max_tokens=base.max_tokens if item.own_max_tokens is None else item.own_max_tokens,
            stop=base.stop if item.own_stop is None else item.own_stop,
        )
        for item in items
    ]
    return items, requests


def _messages(item: BatchItem, base: AnswerRequest) -> tuple[dict[str, Any], ...]:
    from infer.runtime.answer import AnswerRequest

    system = item.system
    if system is None:
        system = next((m["content"] for m in base.messages if m["role"] == "system"), None)
    return AnswerRequest.of(item.prompt, system).messages


def _one(
    answerer: Answerer, index: int, request: AnswerRequest, cancel: threading.Event
) -> BatchResult:
    """One prompt's result; a request the remote refuses (400) fails that prompt only."""
    from infer.runtime.errors import RemoteError
    from infer.runtime.generation.batch import BatchResult

    answer = answerer.answer(request, cancel)
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
    s = answer.stats
    return BatchResult(
        index, answer.text, s.finish_reason, s.prompt_tokens, s.generated_tokens, error
    )


class _Writer:
    """Writes each result as one JSON line, in input order: a result waits for earlier ones."""

    def __init__(self, items: list[BatchItem]) -> None:
        self.items = items
        self.written: list[BatchResult] = []
        self._next = 0
        self._waiting: dict[int, BatchResult] = {}

    def add(self, result: BatchResult) -> None:
        self._waiting[result.index] = result
        while self._next in self._waiting:
            self._write(self._waiting.pop(self._next))
            self._next += 1

    def flush(self) -> None:
        for index in sorted(self._waiting):
            self._write(self._waiting.pop(index))

    def _write(self, result: BatchResult) -> None:
        item = self.items[result.index]
        record: dict[str, Any] = {"index": result.index}
        if item.id is not None:
            record["id"] = item.id
        record.update(
            prompt=item.prompt,
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            generated_tokens=result.generated_tokens,
        )
        if result.error is not None:
            record["error"] = result.error
        if result.logprobs is not None:  # --logprobs
            from infer.runtime.generation.logprobs import as_json

            record["logprobs"] = as_json(result.logprobs)
        output.write_answer(json.dumps(record, ensure_ascii=False) + "\n")
        self.written.append(result)


class _Progress:
    """Done/total, tokens and tok/s on a bar on a terminal; a plain line every few seconds
    otherwise (none for a short run, and then no closing line); nothing with --json."""

    def __init__(self, total: int, done: int, *, enabled: bool) -> None:
        self.total, self.done, self.plain_lines = total, done, 0
        self.reporter = output.Reporter(
            "batch",
            "bar",
            "count",
            "{task.fields[tokens]} tok · {task.fields[tps]:.1f} tok/s",
            "elapsed",
            quiet=not enabled,
        )
        self.reporter.begin("batch", total=total, completed=done, tokens=0, tps=0.0)

    def update(self, stats: BatchStats) -> None:
        done = self.done + stats.finished
        self.reporter.update(completed=done, tokens=stats.generated_tokens, tps=stats.generate_tps)
        if self.reporter.line(f"batch {done}/{self.total} · {_rate(stats)}"):
            self.plain_lines += 1

    def close(self, stats: BatchStats) -> None:
        if self.reporter.mode == "bar":
            self.update(stats)
        elif self.plain_lines:
            self.reporter.line(f"batch {self.done + stats.finished}/{self.total} done", force=True)
        self.reporter.close()


def _rate(stats: BatchStats) -> str:
    return f"{stats.generated_tokens} tok generated, {stats.generate_tps:.1f} tok/s"


def _print_stats(decoder: BatchDecoder, prompts: int, load_s: float) -> None:
    s = decoder.stats
    line = (
        f"load {load_s:.2f} s · {prompts} prompts, {decoder.parallel} at a time · prompt "
        f"{s.prompt_tokens} tok · generated {s.generated_tokens} tok in {s.elapsed_s:.2f} s, "
        f"{s.generate_tps:.1f} tok/s (generation steps {s.decode_tps:.1f} tok/s)"
    )
    output.dim(line)
