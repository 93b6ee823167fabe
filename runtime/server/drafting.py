"""`infer serve --draft lookup|MODEL`: the drafter of a served model's scheduler
(generation/batch_draft.py), for the models named at start.

A draft model is resolved as a request's model would be, loaded with the server's settings
(without LoRA adapters: they are the target's) for the same slots and window, refused unless it
shares the target's vocabulary (speculative.check_compatible), and decoded on the target's
decode thread, between the target's decodes.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import replace

from ..api import load
from ..errors import InferWarning, ModelNotFoundError, UnknownDraftError, UsageError
from ..generation.batch_draft import BatchDrafter, BatchLookup, BatchModelDrafter
from ..generation.speculative import LOOKUP, check_compatible
from ..llama.interface import Context, Model
from ..models.resolve import ResolvedModel, ensure_local, resolve
from .backend import ServerConfig


def make_drafter(
    config: ServerConfig, target: ResolvedModel, engine: Model, context: Context
) -> BatchDrafter | None:
    """The drafter `config.draft` asks for, for `engine` decoding in `context` (None
    without --draft). A draft model's context has the same slots, window and batch size, and
    takes the target context's share of the cores (it decodes on the same thread)."""
    if not config.draft:
        return None
    if engine.is_recurrent:
        raise UsageError(f"--draft needs a transformer: {target.name} is recurrent")
    if config.draft == LOOKUP:
        return BatchLookup(config.parallel, config.draft_max)
    ctx_seq, n_batch = context.n_ctx_seq, context.n_batch
    resolved = _resolve(config)
    options = replace(config.load, ctx_size=ctx_seq, prompt_cache=False, lora=())
    with warnings.catch_warnings():  # its window is the target's, not one the user chose
        warnings.simplefilter("ignore", InferWarning)
        draft = load(resolved, options)
    try:
        check_compatible(engine, draft, f"draft model '{resolved.name}'")
        draft_context = draft.new_context(config.parallel, ctx_seq, n_batch)
    except BaseException:
        draft.close()
        raise
    context.sharing_cores().lead(draft_context.sharing_cores())
    return BatchModelDrafter(draft, draft_context, resolved.name, config.draft_max)


def _resolve(config: ServerConfig) -> ResolvedModel:
    name = config.draft or ""
    try:
        if config.allow_pull and not config.offline:
            return ensure_local(name, offline=False)
        return resolve(name)
    except ModelNotFoundError as e:
        close = difflib.get_close_matches(name.lower(), [LOOKUP], n=1, cutoff=0.6) + e.close
        raise UnknownDraftError(e.name, e.known, close) from None
