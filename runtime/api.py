"""The library surface: resolve a model, load it, and generate. Used by the CLI; usable from
Python without Typer:

    from infer.runtime import resolve, load, generate, Message, SamplingParams
    model = load(resolve("smollm2"))
    session = model.new_session()  # one conversation: it keeps what its KV cache holds
    for piece in generate(session, [Message("user", "Hi")], SamplingParams(temperature=0)):
        print(piece, end="")
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import InferWarning, MediaError, TemplateError, UsageError
from .generation.loop import Generation, Stats
from .generation.templates import Message, Segment, segments, tokenize_segments
from .llama.interface import Model, Session
from .llama.offload import describe_split
from .media import MARKER, Media, flatten
from .models.gguf import read_header
from .models.resolve import ResolvedModel, resolve
from .params import DEFAULT_BATCH, GenerateOptions, LoadOptions, SamplingParams

if TYPE_CHECKING:  # tool_calls' ids need `secrets`, ~10 ms of hashlib at every `infer run`
    from .generation.infill import Infill
    from .generation.tool_plan import ToolPlan


def load(
    model: ResolvedModel | str, options: LoadOptions | None = None, *, probe: bool = False
) -> Model:
    """Validate the GGUF header in Python, then load the weights through llama.cpp. The model
    owns no context: `new_session()` for a conversation, `new_context()` for batches.
    `probe`: load it in a child process first (llama/probe.py), so that a file llama.cpp
    aborts on is an EngineError here rather than the end of this process (a server)."""
    from .llama.model import load_model

    resolved = resolve(model) if isinstance(model, str) else model
    options = (options or LoadOptions()).validate()
    header = read_header(resolved.path)
    if header.split_count > 1 and "-00001-of-" not in resolved.path.name:
        raise UsageError(f"{resolved.path.name} is one part of a split model: load the first part")
    cache = None
    if options.prompt_cache:  # first: a bad INFER_PROMPT_CACHE_* is an error before the load
        from .generation.prompt_cache import PromptCache

        cache = PromptCache(resolved)
    if probe:
        from .llama.probe import check_loadable

        check_loadable(resolved.path, options)
    return load_model(resolved.path, header, options, prompt_cache=cache)


def load_draft(
    model: ResolvedModel | str, target: Session, options: LoadOptions | None = None
) -> Session:
    """Load a draft model for speculative decoding (`generate(..., drafter=...)`) and make its
    session: refused with IncompatibleDraftError unless it shares `target`'s vocabulary. Its
    context defaults to the target's, since it must hold the same prompt and answer. Close the
    session's `model` when done with it."""
    from .generation.speculative import check_compatible

    resolved = resolve(model) if isinstance(model, str) else model
    options = options or LoadOptions(ctx_size=target.n_ctx)
    with warnings.catch_warnings():
        # Its context is the target's, not one the user chose for it: no warning that it is
        # longer than the draft model was trained on (the answer is verified by the target).
        warnings.simplefilter("ignore", InferWarning)
        draft = load(resolved, options)
    try:
        check_compatible(target.model, draft, f"draft model '{resolved.name}'")
        return draft.new_session()
    except BaseException:
        draft.close()
        raise


def prompt_tokens(
    model: Model,
    messages: Sequence[Message],
    *,
    raw: bool = False,
    template: str | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    media: Sequence[Media] = (),
) -> list[int]:
    """The prompt as tokens (`media`: the images and audio the messages' MARKERs place, in
    order). Chat: through the (given or GGUF) chat template, user text never
    parsed for control tokens. Raw: the messages' text as a plain completion prompt."""
    if not media and any(isinstance(m.content, list) for m in messages):
        # Media parts in the messages' content (runtime/media.py), as the API doors place them
        messages, media = _split_media(messages)
    if raw:
        text = "\n\n".join(m.text for m in messages)
        if media:
            return _with_media(model, [Segment(text, False)], media)
        return model.with_bos(model.tokenize(text, False))
    template = template or model.chat_template
    if not template:
        raise TemplateError(
            "this model has no chat template: use --raw for plain text completion "
            "(or set chat_template for it in models.toml)"
        )
    _refuse_markup(model, [tools or [], [m.tool_calls for m in messages if m.tool_calls]])
    parts = segments(
        template, messages, bos_token=model.bos_text, eos_token=model.eos_text, tools=tools
    )
    if media:
        return _with_media(model, parts, media)
    return model.with_bos(tokenize_segments(parts, model.tokenize))


def _split_media(messages: Sequence[Message]) -> tuple[list[Message], list[Media]]:
    """Messages whose content lists text and media parts as the template renders them (each
    media as MARKER), and the media in order."""
    out, media = [], []
    for m in messages:
        text, found = flatten(m.content)
        out.append(replace(m, content=text))
        media.extend(found)
    return out, media


def _with_media(model: Model, parts: Sequence[Segment], media: Sequence[Media]) -> list[int]:
    """The prompt with each MARKER in message text replaced by the next media's chunk (as
    llama-mtmd-cli splits its prompt at the markers)."""
    pieces: list[list[int] | Media] = []
    queue = list(media)
    for part in parts:
        texts = [part.text] if part.special else part.text.split(MARKER)
        for i, text in enumerate(texts):
            if i:
                if not queue:
                    break
                pieces.append(queue.pop(0))
            if text:
                pieces.append(model.tokenize(text, part.special))
    markers = sum(p.text.count(MARKER) for p in parts if not p.special)
    if markers != len(media):
        raise MediaError(f"the prompt places {markers} media but {len(media)} were given")
    if pieces and isinstance(pieces[0], list):
        pieces[0] = model.with_bos(pieces[0])
    else:
        pieces.insert(0, model.with_bos([]))
    return model.media_prompt(pieces)


def _refuse_markup(model: Model, data: Any) -> None:
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
        elif isinstance(item, str) and model.tokenize(item, True) != model.tokenize(item, False):
            raise UsageError(
                f"a tool definition or tool call holds control-token markup: {item[:80]!r}"
            )


def generate(
    session: Session,
    messages: Sequence[Message],
    sampling: SamplingParams | None = None,
    options: GenerateOptions | None = None,
    *,
    raw: bool = False,
    template: str | None = None,
    cancel: threading.Event | None = None,
    drafter: Session | str | None = None,
    tools: Sequence[dict[str, Any]] | ToolPlan | None = None,
    infill: Infill | None = None,
    media: Sequence[Media] = (),
) -> Generation:
    """Stream an answer from `session` (a model's `new_session()`: a follow-up in the same
    session decodes only its new tokens): iterate the result for text pieces; `.stats`
    afterwards. `drafter`
    turns on speculative decoding: "lookup" (drafts from the prompt's n-grams) or a draft model
    from load_draft(); the answer is the one plain decoding gives. `tools`: function
    definitions rendered through the chat template, or a generation.tool_plan.ToolPlan, whose
    tools are rendered and whose grammar holds the answer (its `parse(gen.text)` reads the
    calls back). `infill`: fill in the middle between its prefix and suffix (a FIM model's
    prompt, built as llama-server's /infill builds it; `messages` are not used)."""
    if tools is not None and not isinstance(tools, Sequence):  # a ToolPlan
        sampling = tools.constrain(sampling or SamplingParams())
        tools = tools.rendered
    if media and drafter is not None:
        raise UsageError("speculative decoding (--draft) does not take images or audio yet")
    model = session.model
    if infill is not None:
        from .generation.infill import infill_tokens

        tokens = infill_tokens(model, infill, n_batch=DEFAULT_BATCH, n_ctx=session.n_ctx)
    else:
        tokens = prompt_tokens(
            model, messages, raw=raw, template=template, tools=tools, media=media
        )
    if media and len(tokens) >= session.n_ctx:
        raise MediaError(
            f"the prompt with its {len(media)} media is {len(tokens)} tokens; the context "
            f"holds {session.n_ctx} (raise ctx_size or send fewer)"
        )
    stats = Stats(load_s=model.load_s, split=describe_split(model.split))
    return Generation(
        session,
        tokens,
        (sampling or SamplingParams()).validate(),
        (options or GenerateOptions()).validate(),
        cancel,
        stats,
        drafter,
    )
