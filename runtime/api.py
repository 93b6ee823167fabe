"""The library surface: resolve a model, load it, and generate. Used by the CLI; usable from
Python without Typer:

    from infer.runtime import resolve, load, generate, Message, SamplingParams
    engine = load(resolve("smollm2"))
    for piece in generate(engine, [Message("user", "Hi")], SamplingParams(temperature=0)):
        print(piece, end="")
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import InferWarning, TemplateError, UsageError
from .generation.loop import Generation, Stats
from .generation.templates import Message, segments, tokenize_segments
from .llama.engine import Engine
from .llama.offload import describe_split
from .models.gguf import read_header
from .models.resolve import ResolvedModel, resolve
from .params import GenerateOptions, LoadOptions, SamplingParams

if TYPE_CHECKING:  # tool_calls' ids need `secrets`, ~10 ms of hashlib at every `infer run`
    from .generation.tool_plan import ToolPlan


def load(model: ResolvedModel | str, options: LoadOptions | None = None) -> Engine:
    """Validate the GGUF header in Python, then load the weights through llama.cpp."""
    from .llama.engine import LlamaCppEngine

    resolved = resolve(model) if isinstance(model, str) else model
    options = (options or LoadOptions()).validate()
    header = read_header(resolved.path)
    if header.split_count > 1 and "-00001-of-" not in resolved.path.name:
        raise UsageError(f"{resolved.path.name} is one part of a split model: load the first part")
    cache = None
    if options.prompt_cache:  # first: a bad INFER_PROMPT_CACHE_* is an error before the load
        from .generation.prompt_cache import PromptCache

        cache = PromptCache(resolved)
    started = time.perf_counter()
    engine = LlamaCppEngine(resolved.path, header, options)
    engine.load_s = time.perf_counter() - started
    engine.prompt_cache = cache
    return engine


def load_draft(
    model: ResolvedModel | str, target: Engine, options: LoadOptions | None = None
) -> Engine:
    """Load a draft model for speculative decoding (`generate(..., drafter=...)`): refused
    with IncompatibleDraftError unless it shares `target`'s vocabulary. Its context defaults
    to the target's, since it must hold the same prompt and answer."""
    from .generation.speculative import check_compatible

    resolved = resolve(model) if isinstance(model, str) else model
    options = options or LoadOptions(ctx_size=target.n_ctx)
    with warnings.catch_warnings():
        # Its context is the target's, not one the user chose for it: no warning that it is
        # longer than the draft model was trained on (the answer is verified by the target).
        warnings.simplefilter("ignore", InferWarning)
        draft = load(resolved, options)
    try:
        check_compatible(target, draft, f"draft model '{resolved.name}'")
    except BaseException:
        draft.close()
        raise
    return draft


def prompt_tokens(
    engine: Engine,
    messages: Sequence[Message],
    *,
    raw: bool = False,
    template: str | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """The prompt as tokens. Chat: through the (given or GGUF) chat template, user text never
    parsed for control tokens. Raw: the messages' text as a plain completion prompt."""
    if raw:
        text = "\n\n".join(m.content for m in messages)
        return engine.with_bos(engine.tokenize(text, False))
    template = template or engine.chat_template
    if not template:
        raise TemplateError(
            "this model has no chat template: use --raw for plain text completion "
            "(or set chat_template for it in models.toml)"
        )
    _refuse_markup(engine, [tools or [], [m.tool_calls for m in messages if m.tool_calls]])
    parts = segments(
        template, messages, bos_token=engine.bos_text, eos_token=engine.eos_text, tools=tools
    )
    return engine.with_bos(tokenize_segments(parts, engine.tokenize))


def _refuse_markup(engine: Engine, data: Any) -> None:
    """Tool definitions and call arguments are rendered as template text (their JSON cannot be
    split out as plain segments): a string in them that holds control-token markup is refused,
    so that no request text becomes a control token."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str) and engine.tokenize(item, True) != engine.tokenize(item, False):
            raise UsageError(
                f"a tool definition or tool call holds control-token markup: {item[:80]!r}"
            )


def generate(
    engine: Engine,
    messages: Sequence[Message],
    sampling: SamplingParams | None = None,
    options: GenerateOptions | None = None,
    *,
    raw: bool = False,
    template: str | None = None,
    cancel: threading.Event | None = None,
    drafter: Engine | str | None = None,
    tools: Sequence[dict[str, Any]] | ToolPlan | None = None,
) -> Generation:
    """Stream an answer: iterate the result for text pieces; `.stats` afterwards. `drafter`
    turns on speculative decoding: "lookup" (drafts from the prompt's n-grams) or a draft model
    from load_draft(); the answer is the one plain decoding gives. `tools`: function
    definitions rendered through the chat template, or a generation.tool_plan.ToolPlan, whose
    tools are rendered and whose grammar holds the answer (its `parse(gen.text)` reads the
    calls back)."""
    if tools is not None and not isinstance(tools, Sequence):  # a ToolPlan
        sampling = tools.constrain(sampling or SamplingParams())
        tools = tools.rendered
    tokens = prompt_tokens(engine, messages, raw=raw, template=template, tools=tools)
    stats = Stats(
        load_s=getattr(engine, "load_s", 0.0), split=describe_split(getattr(engine, "split", []))
    )
    return Generation(
        engine,
        tokens,
        (sampling or SamplingParams()).validate(),
        (options or GenerateOptions()).validate(),
        cancel,
        stats,
        drafter,
    )
